//! The store's tables, as migrations applied in order: one SQL text for SQLite and PostgreSQL
//! (integers are BIGINT, times are RFC 3339 text in UTC, so both sort and compare alike).
//! A migration, once released, never changes: a change is a new one at the end.

/// (version, SQL). Version numbers start at 1 and have no holes.
pub const MIGRATIONS: &[(i64, &str)] = &[(1, V1)];

const V1: &str = "
-- One row a box: the key its chain is trusted under, and where the verifier stands.
CREATE TABLE boxes (
    device TEXT PRIMARY KEY,
    -- the key that signs the box's next record: pinned at first contact or from the keys file,
    -- then moved on by the box's own key_rotated records
    public_key TEXT,
    key_source TEXT NOT NULL,
    pinned_at TEXT NOT NULL,
    -- a chain accepted afresh (a new key from the keys file) starts a new epoch: its records never
    -- mix with the old chain's
    epoch BIGINT NOT NULL,
    -- the last record taken into the chain (its JSON as it travels) and the key that signed it:
    -- the verifier starts again from it after a restart of `watch`
    resume_record TEXT,
    resume_key TEXT,
    last_seq BIGINT,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    state TEXT,
    status TEXT
);

-- Every event message once: (event_id, revision) names a message.
CREATE TABLE events (
    device TEXT NOT NULL,
    event_id TEXT NOT NULL,
    revision BIGINT NOT NULL,
    state TEXT NOT NULL,
    kind TEXT NOT NULL,
    camera TEXT NOT NULL,
    time TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    -- its record in the box's chain, NULL when the box sends no chain (evidence off)
    chain_seq BIGINT,
    -- the message as received, for fields added later (a plate) and for evidence
    message TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (device, event_id, revision)
);
CREATE INDEX events_by_time ON events (time);

-- Every verified chain record once, in its epoch.
CREATE TABLE chain_records (
    device TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    prev_sha256 TEXT NOT NULL,
    record_kind TEXT NOT NULL,
    time TEXT NOT NULL,
    signature TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (device, epoch, seq)
);

-- Records the platform never received, pruned_by_policy names the box's retention record when
-- one covers the gap.
CREATE TABLE gaps (
    device TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    pruned_by_policy TEXT,
    found_at TEXT NOT NULL,
    PRIMARY KEY (device, epoch, first_seq)
);

-- Messages kept apart because they did not verify: never merged into events or chain_records.
CREATE TABLE rejected (
    device TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    topic TEXT NOT NULL,
    seq BIGINT,
    problem TEXT NOT NULL,
    detail TEXT NOT NULL,
    payload TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (device, payload_sha256)
);

-- What a person must look at: a key change without a rotation record, a broken link, a box
-- outside the keys file.
CREATE TABLE alarms (
    device TEXT NOT NULL,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    seq BIGINT,
    detail TEXT NOT NULL,
    PRIMARY KEY (device, time, kind)
);

-- The box's status changes (online, stopped, moved, offline), for offline time.
CREATE TABLE presence (
    device TEXT NOT NULL,
    time TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (device, time, state)
);

CREATE TABLE telemetry (
    device TEXT NOT NULL,
    time TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (device, time)
);

CREATE TABLE camera_health (
    device TEXT NOT NULL,
    camera TEXT NOT NULL,
    time TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (device, camera, time)
);

-- Evidence pictures received: their hash, and whether an event message named it.
CREATE TABLE snapshots (
    device TEXT NOT NULL,
    id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    checked TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (device, id, sha256)
);

-- Command acks, as the boxes sent them.
CREATE TABLE acks (
    device TEXT NOT NULL,
    command TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    time TEXT NOT NULL,
    ok BIGINT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (device, correlation_id, time)
);
";
