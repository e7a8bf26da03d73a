//! Where `watch` keeps what it verified and `report` reads it: SQLite (`sqlite://PATH`, one file)
//! or PostgreSQL (`postgres://…`), with one schema and one set of migrations ([`schema`]). What is
//! written is decided here, as [`Write`]s turned into SQL with `?` parameters; each backend only
//! runs statements in a transaction and reads rows.

pub mod postgres;
pub mod schema;
pub mod sqlite;

use anyhow::{bail, Result};

/// A value going into or coming out of the store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Val {
    Null,
    Int(i64),
    Text(String),
}

impl Val {
    pub fn int(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn text(&self) -> Option<&str> {
        match self {
            Val::Text(t) => Some(t),
            _ => None,
        }
    }
}

impl From<&str> for Val {
    fn from(text: &str) -> Self {
        Val::Text(text.to_string())
    }
}

impl From<String> for Val {
    fn from(text: String) -> Self {
        Val::Text(text)
    }
}

impl From<i64> for Val {
    fn from(n: i64) -> Self {
        Val::Int(n)
    }
}

impl From<u64> for Val {
    fn from(n: u64) -> Self {
        Val::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(value: Option<T>) -> Self {
        value.map(Into::into).unwrap_or(Val::Null)
    }
}

/// A box's row: its key and where its chain stands.
#[derive(Debug, Clone, PartialEq)]
pub struct BoxRow {
    pub device: String,
    pub public_key: Option<String>,
    pub key_source: String,
    pub pinned_at: String,
    pub epoch: i64,
    pub resume_record: Option<String>,
    pub resume_key: Option<String>,
    pub last_seq: Option<u64>,
    pub first_seen: String,
    pub last_seen: String,
    pub state: Option<String>,
    pub status: Option<String>,
}

/// One thing to write; a batch of them is one transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Box(BoxRow),
    Event {
        device: String,
        event_id: String,
        revision: i64,
        state: String,
        kind: String,
        camera: String,
        time: String,
        epoch: i64,
        chain_seq: Option<u64>,
        message: String,
    },
    Record {
        device: String,
        epoch: i64,
        seq: u64,
        sha256: String,
        prev_sha256: String,
        record_kind: String,
        time: String,
        signature: String,
        body: String,
    },
    Gap {
        device: String,
        epoch: i64,
        first_seq: u64,
        last_seq: u64,
    },
    /// Record `seq` of the gap `first_seq..=last_seq` arrived late: the gap shrinks or splits
    /// around it, or goes.
    GapFilled {
        device: String,
        epoch: i64,
        first_seq: u64,
        last_seq: u64,
        seq: u64,
    },
    /// A retention record of the box covers these records: the gaps within are by policy.
    PrunedByPolicy {
        device: String,
        epoch: i64,
        first_seq: u64,
        last_seq: u64,
        why: String,
    },
    Rejected {
        device: String,
        topic: String,
        seq: Option<u64>,
        problem: String,
        detail: String,
        payload_sha256: String,
        payload: String,
    },
    Alarm {
        device: String,
        time: String,
        kind: String,
        seq: Option<u64>,
        detail: String,
    },
    Presence {
        device: String,
        time: String,
        state: String,
    },
    Telemetry {
        device: String,
        time: String,
        message: String,
    },
    Health {
        device: String,
        camera: String,
        time: String,
        state: String,
        message: String,
    },
    Snapshot {
        device: String,
        id: String,
        sha256: String,
        bytes: u64,
        checked: String,
    },
    /// A picture that came before the event message naming it: that message has come.
    SnapshotConfirmed {
        device: String,
        id: String,
        sha256: String,
    },
    /// A picture held while records were missing that its event's messages do not name: it goes
    /// to `rejected`.
    SnapshotWithdrawn {
        device: String,
        id: String,
        sha256: String,
    },
    Ack {
        device: String,
        command: String,
        correlation_id: String,
        time: String,
        ok: bool,
        message: String,
    },
}

impl Write {
    /// The statements and their parameters; `received_at` is when `watch` took the message.
    pub fn statements(&self, received_at: &str) -> Vec<(&'static str, Vec<Val>)> {
        let t = |s: &str| Val::from(s);
        let one = match self {
            Write::GapFilled { device, epoch, first_seq, last_seq, seq } => {
                return gap_filled(device, *epoch, *first_seq, *last_seq, *seq)
            }
            Write::Box(b) => (
                "INSERT INTO boxes (device, public_key, key_source, pinned_at, epoch, resume_record, resume_key, \
                 last_seq, first_seen, last_seen, state, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (device) DO UPDATE SET public_key = excluded.public_key, key_source = excluded.key_source, \
                 pinned_at = excluded.pinned_at, epoch = excluded.epoch, resume_record = excluded.resume_record, \
                 resume_key = excluded.resume_key, last_seq = excluded.last_seq, last_seen = excluded.last_seen, \
                 state = excluded.state, status = excluded.status",
                vec![
                    t(&b.device),
                    b.public_key.clone().into(),
                    t(&b.key_source),
                    t(&b.pinned_at),
                    b.epoch.into(),
                    b.resume_record.clone().into(),
                    b.resume_key.clone().into(),
                    b.last_seq.into(),
                    t(&b.first_seen),
                    t(&b.last_seen),
                    b.state.clone().into(),
                    b.status.clone().into(),
                ],
            ),
            Write::Event { device, event_id, revision, state, kind, camera, time, epoch, chain_seq, message } => (
                "INSERT INTO events (device, event_id, revision, state, kind, camera, time, epoch, chain_seq, message, \
                 received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                vec![
                    t(device),
                    t(event_id),
                    (*revision).into(),
                    t(state),
                    t(kind),
                    t(camera),
                    t(time),
                    (*epoch).into(),
                    (*chain_seq).into(),
                    t(message),
                    t(received_at),
                ],
            ),
            Write::Record { device, epoch, seq, sha256, prev_sha256, record_kind, time, signature, body } => (
                "INSERT INTO chain_records (device, epoch, seq, sha256, prev_sha256, record_kind, time, signature, \
                 body, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                vec![
                    t(device),
                    (*epoch).into(),
                    (*seq).into(),
                    t(sha256),
                    t(prev_sha256),
                    t(record_kind),
                    t(time),
                    t(signature),
                    t(body),
                    t(received_at),
                ],
            ),
            Write::Gap { device, epoch, first_seq, last_seq } => (
                "INSERT INTO gaps (device, epoch, first_seq, last_seq, pruned_by_policy, found_at) \
                 VALUES (?, ?, ?, ?, NULL, ?) ON CONFLICT DO NOTHING",
                vec![t(device), (*epoch).into(), (*first_seq).into(), (*last_seq).into(), t(received_at)],
            ),
            Write::PrunedByPolicy { device, epoch, first_seq, last_seq, why } => (
                "UPDATE gaps SET pruned_by_policy = ? WHERE device = ? AND epoch = ? AND first_seq >= ? \
                 AND last_seq <= ? AND pruned_by_policy IS NULL",
                vec![t(why), t(device), (*epoch).into(), (*first_seq).into(), (*last_seq).into()],
            ),
            Write::Rejected { device, topic, seq, problem, detail, payload_sha256, payload } => (
                "INSERT INTO rejected (device, payload_sha256, topic, seq, problem, detail, payload, received_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                vec![
                    t(device),
                    t(payload_sha256),
                    t(topic),
                    (*seq).into(),
                    t(problem),
                    t(detail),
                    t(payload),
                    t(received_at),
                ],
            ),
            Write::Alarm { device, time, kind, seq, detail } => (
                "INSERT INTO alarms (device, time, kind, seq, detail) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                vec![t(device), t(time), t(kind), (*seq).into(), t(detail)],
            ),
            Write::Presence { device, time, state } => (
                "INSERT INTO presence (device, time, state) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                vec![t(device), t(time), t(state)],
            ),
            Write::Telemetry { device, time, message } => (
                "INSERT INTO telemetry (device, time, message) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                vec![t(device), t(time), t(message)],
            ),
            Write::Health { device, camera, time, state, message } => (
                "INSERT INTO camera_health (device, camera, time, state, message) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT DO NOTHING",
                vec![t(device), t(camera), t(time), t(state), t(message)],
            ),
            Write::Snapshot { device, id, sha256, bytes, checked } => (
                "INSERT INTO snapshots (device, id, sha256, bytes, checked, received_at) VALUES (?, ?, ?, ?, ?, ?) \
                 ON CONFLICT DO NOTHING",
                vec![t(device), t(id), t(sha256), (*bytes).into(), t(checked), t(received_at)],
            ),
            Write::SnapshotConfirmed { device, id, sha256 } => (
                "UPDATE snapshots SET checked = 'matches its event' WHERE device = ? AND id = ? AND sha256 = ?",
                vec![t(device), t(id), t(sha256)],
            ),
            Write::SnapshotWithdrawn { device, id, sha256 } => (
                "DELETE FROM snapshots WHERE device = ? AND id = ? AND sha256 = ?",
                vec![t(device), t(id), t(sha256)],
            ),
            Write::Ack { device, command, correlation_id, time, ok, message } => (
                "INSERT INTO acks (device, command, correlation_id, time, ok, message) VALUES (?, ?, ?, ?, ?, ?) \
                 ON CONFLICT DO NOTHING",
                vec![t(device), t(command), t(correlation_id), t(time), i64::from(*ok).into(), t(message)],
            ),
        };
        vec![one]
    }
}

/// Record `seq` of the gap `first_seq..=last_seq` has come: the part after it becomes a gap of its
/// own (found when the whole was), the part before keeps the row, or the row goes.
fn gap_filled(device: &str, epoch: i64, first_seq: u64, last_seq: u64, seq: u64) -> Vec<(&'static str, Vec<Val>)> {
    let row = || vec![Val::from(device), epoch.into(), first_seq.into()];
    let mut statements = Vec::new();
    if seq < last_seq {
        let mut params = vec![(seq + 1).into()];
        params.extend(row());
        statements.push((
            "INSERT INTO gaps (device, epoch, first_seq, last_seq, pruned_by_policy, found_at) \
             SELECT device, epoch, ?, last_seq, pruned_by_policy, found_at FROM gaps \
             WHERE device = ? AND epoch = ? AND first_seq = ? ON CONFLICT DO NOTHING",
            params,
        ));
    }
    if seq > first_seq {
        let mut params = vec![(seq - 1).into()];
        params.extend(row());
        statements.push(("UPDATE gaps SET last_seq = ? WHERE device = ? AND epoch = ? AND first_seq = ?", params));
    } else {
        statements.push(("DELETE FROM gaps WHERE device = ? AND epoch = ? AND first_seq = ?", row()));
    }
    statements
}

/// A store of either kind.
pub trait Store: Send {
    /// `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;
    /// Runs the statements in one transaction: all or nothing.
    fn execute(&mut self, statements: &[(&'static str, Vec<Val>)]) -> Result<()>;
    /// The rows of a query with `?` parameters.
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Vec<Val>>>;
}

impl dyn Store {
    /// Writes a batch in one transaction.
    pub fn write(&mut self, batch: &[Write], received_at: &str) -> Result<()> {
        let statements: Vec<(&'static str, Vec<Val>)> = batch.iter().flat_map(|w| w.statements(received_at)).collect();
        self.execute(&statements)
    }

    /// Every box's row, for `watch` to start where it stopped.
    pub fn boxes(&mut self) -> Result<Vec<BoxRow>> {
        let rows = self.query(
            "SELECT device, public_key, key_source, pinned_at, epoch, resume_record, resume_key, last_seq, \
             first_seen, last_seen, state, status FROM boxes ORDER BY device",
            &[],
        )?;
        let text = |v: &Val| v.text().map(String::from);
        Ok(rows
            .iter()
            .map(|r| BoxRow {
                device: text(&r[0]).unwrap_or_default(),
                public_key: text(&r[1]),
                key_source: text(&r[2]).unwrap_or_default(),
                pinned_at: text(&r[3]).unwrap_or_default(),
                epoch: r[4].int().unwrap_or(0),
                resume_record: text(&r[5]),
                resume_key: text(&r[6]),
                last_seq: r[7].int().and_then(|n| u64::try_from(n).ok()),
                first_seen: text(&r[8]).unwrap_or_default(),
                last_seen: text(&r[9]).unwrap_or_default(),
                state: text(&r[10]),
                status: text(&r[11]),
            })
            .collect())
    }
}

/// Opens the store a URL names and brings its schema up to date.
pub fn open(url: &str) -> Result<Box<dyn Store>> {
    let mut store: Box<dyn Store> = if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            bail!("--store sqlite:// needs a file: sqlite://PATH (sqlite:///var/lib/edge-platform/store.db)");
        }
        Box::new(sqlite::Sqlite::open(std::path::Path::new(path))?)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Box::new(postgres::Postgres::connect(url)?)
    } else {
        bail!("--store must be sqlite://PATH or postgres://USER@HOST[:PORT]/DATABASE");
    };
    migrate(store.as_mut())?;
    Ok(store)
}

/// Applies the migrations the store has not had yet, each in its own transaction with its record.
pub fn migrate(store: &mut dyn Store) -> Result<()> {
    store.execute(&[(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at TEXT NOT NULL)",
        vec![],
    )])?;
    let applied: Vec<i64> = store
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])?
        .iter()
        .filter_map(|r| r[0].int())
        .collect();
    let known: Vec<i64> = schema::MIGRATIONS.iter().map(|(v, _)| *v).collect();
    if let Some(newer) = applied.iter().find(|v| !known.contains(v)) {
        bail!("the store has schema version {newer}, newer than this edge-platform knows ({known:?}): use a newer edge-platform");
    }
    for (version, sql) in schema::MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let now = crate::time::now_text();
        let mut statements: Vec<(&'static str, Vec<Val>)> =
            split_statements(sql).into_iter().map(|s| (s, vec![])).collect();
        statements.push((
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
            vec![(*version).into(), now.into()],
        ));
        store.execute(&statements)?;
    }
    Ok(())
}

/// The statements of a migration, without comments (each backend runs one statement at a time).
fn split_statements(sql: &'static str) -> Vec<&'static str> {
    sql.split(';')
        .map(str::trim)
        .filter(|s| s.lines().any(|l| !l.trim().is_empty() && !l.trim().starts_with("--")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_of_a_migration_is_found_and_none_is_a_comment() {
        let statements = split_statements(schema::MIGRATIONS[0].1);
        let tables = statements.iter().filter(|s| s.contains("CREATE TABLE")).count();
        assert_eq!(tables, 11, "{statements:#?}");
        assert!(statements.iter().all(|s| s.contains("CREATE")));
        // The splitter cuts at every `;`: a comment must not hold one.
        for (version, sql) in schema::MIGRATIONS {
            let cut = sql.lines().find(|l| l.trim().starts_with("--") && l.contains(';'));
            assert_eq!(cut, None, "migration {version}");
        }
    }

    #[test]
    fn a_gap_filled_late_splits_around_the_record_and_keeps_when_it_was_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&format!("sqlite://{}", dir.path().join("store.db").display())).unwrap();
        let gap = |first_seq, last_seq| Write::Gap { device: "b".into(), epoch: 0, first_seq, last_seq };
        let filled =
            |first_seq, last_seq, seq| Write::GapFilled { device: "b".into(), epoch: 0, first_seq, last_seq, seq };
        store.write(&[gap(3, 9), gap(20, 20)], "found").unwrap();
        store.write(&[filled(3, 9, 5)], "later").unwrap();
        store.write(&[filled(3, 4, 3), filled(6, 9, 9), filled(20, 20, 20)], "later").unwrap();
        let rows: Vec<(i64, i64, String)> = store
            .query("SELECT first_seq, last_seq, found_at FROM gaps ORDER BY first_seq", &[])
            .unwrap()
            .into_iter()
            .map(|r| (r[0].int().unwrap(), r[1].int().unwrap(), r[2].text().unwrap().to_string()))
            .collect();
        assert_eq!(rows, vec![(4, 4, "found".to_string()), (6, 8, "found".to_string())]);
    }
}
