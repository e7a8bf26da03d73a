//! What the agent publishes, as the platform reads it: the event message ([`event`]), the signed
//! chain records that travel with it and on `chain` ([`chain`]), the one check of a chain
//! ([`verify`]) and of captured messages ([`messages`]). Each type matches a JSON Schema in
//! docs/schemas/ (the tests below and tests/schemas.rs hold them together). Imports nothing of the
//! agent but `base`: the stages and the platform's tools build on it.

pub mod chain;
pub mod event;
pub mod messages;
pub mod verify;

pub use chain::{ChainHead, ChainProof, EvidenceFile, EvidenceRef, RecordBody, RecordContent};
pub use event::{Event, EventBox, EventKind, EventPlate, LifecycleState, ModelId, UpdateReason, EVENT_SCHEMA_VERSION};
pub use verify::ChainVerifier;

/// The JSON Schema of event messages (`edge/{device}/events`), from the repository's root.
pub const EVENT_SCHEMA: &str = "docs/schemas/event.schema.json";
/// The JSON Schema of chain records (`edge/{device}/chain`, and an event's `chain`).
pub const CHAIN_SCHEMA: &str = "docs/schemas/chain.schema.json";

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    use serde_json::Value;

    fn schema_text(path: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The keys of a JSON object in the order they are written.
    fn keys_in_order(json: &str) -> Vec<String> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
                let mut keys = Vec::new();
                while let Some((key, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                    keys.push(key);
                }
                Ok(keys)
            }
        }
        serde_json::Deserializer::from_str(json).deserialize_map(Keys).unwrap()
    }

    /// The keys of a schema's `properties`, in the schema's order.
    fn schema_properties(schema: &str) -> Vec<String> {
        #[derive(serde::Deserialize)]
        struct Schema<'a> {
            #[serde(borrow)]
            properties: &'a serde_json::value::RawValue,
        }
        let schema: Schema = serde_json::from_str(schema).unwrap();
        keys_in_order(schema.properties.get())
    }

    fn proof() -> ChainProof {
        ChainProof {
            seq: 7,
            prev_sha256: "a".repeat(64),
            sha256: "b".repeat(64),
            signature: "c".repeat(128),
            record: "{}".into(),
        }
    }

    /// An event with every field set, so each one is written.
    fn every_field() -> Event {
        let time = Utc.with_ymd_and_hms(2025, 5, 1, 8, 0, 0).unwrap();
        let model = ModelId { name: "nanodet".into(), sha256: "d".repeat(64) };
        Event {
            schema_version: EVENT_SCHEMA_VERSION,
            event_id: uuid::Uuid::now_v7(),
            revision: 2,
            state: LifecycleState::End,
            reason: Some(UpdateReason::ZoneChange),
            device: "box-1".into(),
            station_id: "station-7".into(),
            grid_cell: Some("grid-3".into()),
            camera: "gate".into(),
            zone: Some("bin-1".into()),
            time,
            start_time: time,
            end_time: Some(time),
            duration_secs: 4.5,
            kind: EventKind::WrongBin,
            label: "cup".into(),
            category: Some("residual".into()),
            bin_category: Some("recyclable".into()),
            score: 0.8,
            bbox: EventBox { x1: 1, y1: 2, x2: 30, y2: 40 },
            frame_width: 768,
            frame_height: 576,
            track_id: Some(17),
            model: Some(model.clone()),
            classifier: Some(model),
            area_px: Some(1100.0),
            area_m2: Some(0.02),
            ground_position_m: Some([1.5, 7.25]),
            ground_width_m: Some(0.3),
            coverage: Some(0.4),
            uncovered: Some(true),
            snapshot_sha256: Some("e".repeat(64)),
            evidence: Some(EvidenceRef {
                chain_seq: 7,
                files: vec![EvidenceFile { file: "2025-05-01/x-frame.jpg".into(), sha256: "f".repeat(64), bytes: 9 }],
            }),
            chain: Some(proof()),
            plate: Some(EventPlate {
                text: "浙EA3262".into(),
                colour: "yellow".into(),
                rows: 1,
                score: 0.97,
                reads: 5,
                of_reads: 6,
            }),
        }
    }

    #[test]
    fn an_event_writes_the_schemas_fields_in_the_schemas_order_and_every_one_it_requires() {
        let schema = schema_text(EVENT_SCHEMA);
        let written = keys_in_order(&serde_json::to_string(&every_field()).unwrap());
        assert_eq!(written, schema_properties(&schema), "event fields vs {EVENT_SCHEMA}");
        let parsed: Value = serde_json::from_str(&schema).unwrap();
        assert_eq!(parsed["properties"]["schema_version"]["const"], EVENT_SCHEMA_VERSION);
        for required in parsed["required"].as_array().unwrap() {
            let required = required.as_str().unwrap();
            assert!(written.iter().any(|k| k == required), "{required} is required by {EVENT_SCHEMA}");
        }
        let bbox = serde_json::to_string(&EventBox { x1: 1, y1: 2, x2: 3, y2: 4 }).unwrap();
        assert_eq!(keys_in_order(&bbox), ["x1", "y1", "x2", "y2"]);
    }

    #[test]
    fn every_kind_state_and_reason_is_one_the_event_schema_names() {
        use EventKind::*;
        let kinds = [Object, WrongBin, Litter, Overflow, RoadDebris, TruckExit, UnregisteredTruck, Tamper];
        for kind in kinds {
            // Does not compile when a kind is added without being listed above.
            match kind {
                Object | WrongBin | Litter | Overflow | RoadDebris | TruckExit | UnregisteredTruck | Tamper => {}
            }
        }
        let schema: Value = serde_json::from_str(&schema_text(EVENT_SCHEMA)).unwrap();
        let named = |field: &str| -> Vec<Value> { schema["properties"][field]["enum"].as_array().unwrap().clone() };
        let written: Vec<Value> = kinds.iter().map(|k| serde_json::to_value(k).unwrap()).collect();
        assert_eq!(written, named("kind"));
        assert!(kinds.iter().all(|k| serde_json::to_value(k).unwrap() == k.as_str()));
        let states: Vec<Value> = [LifecycleState::Start, LifecycleState::Update, LifecycleState::End]
            .iter()
            .map(|s| serde_json::to_value(s).unwrap())
            .collect();
        assert_eq!(states, named("state"));
        let mut reasons: Vec<Value> = [UpdateReason::BetterSnapshot, UpdateReason::ZoneChange, UpdateReason::PlateRead]
            .iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect();
        reasons.push(Value::Null);
        assert_eq!(reasons, named("reason"));
    }

    #[test]
    fn a_chain_record_writes_the_chain_schemas_fields_in_its_order() {
        let written = keys_in_order(&serde_json::to_string(&proof()).unwrap());
        assert_eq!(written, schema_properties(&schema_text(CHAIN_SCHEMA)));
        let head = ChainHead { seq: 3, sha256: "a".repeat(64), time: Utc::now() };
        assert_eq!(keys_in_order(&serde_json::to_string(&head).unwrap()), ["seq", "sha256", "time"]);
    }

    #[test]
    fn the_signed_form_of_an_event_is_the_message_without_its_proof_with_numbers_as_sent() {
        let event = every_field();
        let signed = event.signed_form().unwrap();
        assert!(signed.get("chain").is_none());
        assert_eq!(signed["score"].to_string(), "0.8", "an f32 reads back as written");
        let mut sent: Value = serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
        event::without_proof(&mut sent);
        assert_eq!(signed, sent);
    }
}
