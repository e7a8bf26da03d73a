//! The event message (`edge/{device}/events`, docs/schemas/event.schema.json): what the judge
//! decides, the evidence stage completes (snapshot hash, evidence, chain record) and delivery sends.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::chain::{ChainProof, EvidenceRef};

/// Version of the event JSON; bump when a field changes meaning or goes away. 2: events have a
/// lifecycle (`state`, `revision`: one incident sends start, updates and end under one `event_id`).
pub const EVENT_SCHEMA_VERSION: u32 = 2;

/// One message about an event: the message from judge to report, and the JSON the platform
/// receives. `event_id` names the incident; (`event_id`, `revision`) names the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub schema_version: u32,
    /// UUID v7: unique, and sorts by creation time; the same for every message of one incident.
    pub event_id: Uuid,
    /// 0 for `start`, one more for each following message of the same event.
    pub revision: u32,
    pub state: LifecycleState,
    /// Why an `update` was sent.
    pub reason: Option<UpdateReason>,
    pub device: String,
    pub station_id: String,
    pub grid_cell: Option<String>,
    pub camera: String,
    pub zone: Option<String>,
    /// RFC 3339 capture time of the frame this message was decided on.
    pub time: DateTime<Utc>,
    /// When the subject was first seen.
    pub start_time: DateTime<Utc>,
    /// When it was last seen; only on `end`.
    pub end_time: Option<DateTime<Utc>>,
    /// From `start_time` to `end_time` (on `end`: the time to clear) or to `time`.
    pub duration_secs: f64,
    pub kind: EventKind,
    pub label: String,
    /// The item's category (taxonomy), or the bin's for `overflow`.
    pub category: Option<String>,
    /// `wrong_bin`: the category of the bin the item is in.
    pub bin_category: Option<String>,
    /// Median score over the recent sightings (`overflow`: coverage; background model: contrast).
    pub score: f32,
    /// In frame pixels.
    #[serde(rename = "box")]
    pub bbox: EventBox,
    pub frame_width: u32,
    pub frame_height: u32,
    pub track_id: Option<u64>,
    /// The model whose detection this is; null when the background model found it.
    pub model: Option<ModelId>,
    /// The second-stage classifier (item category, truck cover), if one was used.
    pub classifier: Option<ModelId>,
    pub area_px: Option<f64>,
    pub area_m2: Option<f64>,
    /// With the camera's ground homography: where the subject stands (the middle of its box's
    /// bottom edge) on the ground plane, in metres; distances between events follow from it.
    #[serde(default)]
    pub ground_position_m: Option<[f64; 2]>,
    /// With the ground homography: the width of the box's bottom edge on the ground, in metres.
    #[serde(default)]
    pub ground_width_m: Option<f64>,
    pub coverage: Option<f32>,
    /// `truck_exit`: true uncovered, false covered, null unknown (no or unsure classifier).
    pub uncovered: Option<bool>,
    /// sha256 of the JPEG published on `snapshots/{event_id}` with this message.
    pub snapshot_sha256: Option<String>,
    /// Where the evidence of this message is kept in the device's chain.
    pub evidence: Option<EvidenceRef>,
    /// This message's record in the device's signed chain, so the platform can check it (and its
    /// snapshot, through `snapshot_sha256`) from MQTT alone; absent when evidence is off (and in
    /// the record itself, which holds the event without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainProof>,
    /// `truck_exit` with the plate stage on: the plate the truck's track reads agree on; absent
    /// until they do (a later message of the event carries it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plate: Option<EventPlate>,
}

/// A vehicle's plate as its track's reads agree on it (`judge::plate_votes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPlate {
    /// Province character first; a double-row plate's top row first.
    pub text: String,
    /// `blue`, `green`, `yellow` or `white`: the colour most of the agreeing reads saw.
    pub colour: String,
    /// 1, or 2 for a double-row plate.
    pub rows: u8,
    /// The mean score of the agreeing reads.
    pub score: f32,
    /// How many reads agree, of how many valid reads the track had.
    pub reads: u32,
    pub of_reads: u32,
}

impl Event {
    /// The event as its chain record holds it: the message without its `chain` proof, as a JSON
    /// parser reads the message's bytes (an f32 score reads back as sent, not widened to f64).
    pub fn signed_form(&self) -> serde_json::Result<Value> {
        let mut value: Value = serde_json::from_slice(&serde_json::to_vec(self)?)?;
        without_proof(&mut value);
        Ok(value)
    }
}

/// A received event message as its chain record must hold it: without its `chain` field.
pub fn without_proof(message: &mut Value) {
    if let Value::Object(fields) = message {
        fields.remove("chain");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The plain rule: a detection of a configured label.
    Object,
    WrongBin,
    Litter,
    Overflow,
    RoadDebris,
    TruckExit,
    /// A leaving truck whose plate is not among the site's registered trucks (`plates.registered`).
    UnregisteredTruck,
    /// The camera's view is no longer what the installer set up; `label` is the condition.
    Tamper,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Object => "object",
            EventKind::WrongBin => "wrong_bin",
            EventKind::Litter => "litter",
            EventKind::Overflow => "overflow",
            EventKind::RoadDebris => "road_debris",
            EventKind::TruckExit => "truck_exit",
            EventKind::UnregisteredTruck => "unregistered_truck",
            EventKind::Tamper => "tamper",
        }
    }
}

/// Where an event is in its life: `start`, then `update`s, then `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleState {
    Start,
    Update,
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateReason {
    BetterSnapshot,
    ZoneChange,
    /// `truck_exit`: the reads over the truck's track now agree on its plate (or on another one).
    PlateRead,
}

/// A box rounded to whole pixels for the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBox {
    pub x1: i32,
    pub y1: i32,
    pub x2: i32,
    pub y2: i32,
}

/// Name and hash that identify the exact model an event came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelId {
    pub name: String,
    pub sha256: String,
}
