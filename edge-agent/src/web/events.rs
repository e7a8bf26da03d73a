//! Events as the page and the API show them: filters and paging over the board's history, and
//! the evidence picture — a file in the evidence store when the event names one, else the
//! annotated frame the board kept in memory.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::form_urlencoded;
use uuid::Uuid;

use crate::delivery::board::{Acknowledgement, EventRecord};

/// Events per page unless asked otherwise, and the most one request may ask for.
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 200;

/// One event with its JSON, ready to show.
#[derive(Debug, Clone)]
pub struct EventView {
    pub record: EventRecord,
    /// The event as JSON, so fields other stages add show up without a change here.
    pub json: Value,
}

impl EventView {
    pub fn new(record: EventRecord) -> Self {
        let json = serde_json::to_value(&record.event).unwrap_or(Value::Null);
        Self { record, json }
    }

    pub fn id(&self) -> Uuid {
        self.record.event.event_id
    }

    pub fn time(&self) -> DateTime<Utc> {
        self.record.event.time
    }

    pub fn camera(&self) -> &str {
        &self.record.event.camera
    }

    pub fn label(&self) -> &str {
        &self.record.event.label
    }

    pub fn score(&self) -> f32 {
        self.record.event.score
    }

    fn text(&self, key: &str) -> Option<&str> {
        self.json.get(key).and_then(Value::as_str)
    }

    pub fn kind(&self) -> &str {
        self.text("kind").unwrap_or("unknown")
    }

    pub fn category(&self) -> Option<&str> {
        self.text("category")
    }

    /// The plate the event carries (`truck_exit`, `unregistered_truck`).
    pub fn plate_text(&self) -> Option<&str> {
        self.json.get("plate").and_then(|p| p.get("text")).and_then(|t| t.as_str())
    }

    pub fn zone(&self) -> Option<&str> {
        self.text("zone")
    }

    pub fn track_id(&self) -> Option<String> {
        self.json
            .get("track_id")
            .filter(|v| !v.is_null())
            .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
    }

    /// Lifecycle state: `start`, `update` or `end`; `None` for one-shot events.
    pub fn state(&self) -> Option<&str> {
        self.text("state")
    }

    pub fn start_time(&self) -> Option<DateTime<Utc>> {
        self.text("start_time").and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc))
    }

    pub fn end_time(&self) -> Option<DateTime<Utc>> {
        self.text("end_time").and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc))
    }

    /// Time to clear: how long the problem stood, once it has ended.
    pub fn time_to_clear_secs(&self) -> Option<f64> {
        if self.state().is_some_and(|s| s != "end") {
            return None;
        }
        self.json.get("duration_secs").and_then(Value::as_f64).filter(|d| d.is_finite() && *d >= 0.0)
    }

    /// The judge's evidence record of the full frame (`evidence.files`, the crop is the other one);
    /// a flat `evidence.{file, sha256}` is read too.
    fn evidence_frame(&self) -> Option<&Value> {
        let evidence = self.json.get("evidence")?;
        let Some(files) = evidence.get("files").and_then(Value::as_array) else { return Some(evidence) };
        // The full frame is the file whose hash the event gives as `snapshot_sha256`.
        let snapshot = self.json.get("snapshot_sha256").and_then(Value::as_str);
        files.iter().find(|f| f.get("sha256").and_then(Value::as_str) == snapshot).or(files.first())
    }

    pub fn evidence_sha256(&self) -> Option<&str> {
        self.evidence_frame().and_then(|e| e.get("sha256")).and_then(Value::as_str)
    }

    pub fn evidence_file(&self) -> Option<&str> {
        self.evidence_frame().and_then(|e| e.get("file")).and_then(Value::as_str)
    }

    /// The picture of the event's plate this message kept (`…-plate.jpg` in `evidence.files`).
    pub fn plate_file(&self) -> Option<&str> {
        let files = self.json.get("evidence")?.get("files")?.as_array()?;
        files.iter().filter_map(|f| f.get("file").and_then(Value::as_str)).find(|f| f.ends_with("-plate.jpg"))
    }

    pub fn record_hash(&self) -> Option<&str> {
        self.text("hash")
    }

    /// Whether the event's signed chain record holds, checked here with the device key: Some(Ok(seq))
    /// verified, Some(Err(why)) broken, None when the event carries no record (evidence off).
    pub fn signature_check(&self, public_key: Option<&str>) -> Option<Result<u64, String>> {
        let key = public_key?;
        // The message as it went out: through its bytes, so f32 scores read as they were signed.
        let message: Value =
            serde_json::to_vec(&self.record.event).ok().and_then(|b| serde_json::from_slice(&b).ok())?;
        crate::wire::messages::check_event_message(&message, key)
    }

    pub fn acknowledged(&self) -> Option<&Acknowledgement> {
        self.record.acknowledged.as_ref()
    }

    /// Whether the page has a picture for it (a kept frame, or an evidence file named by the event).
    pub fn has_picture(&self) -> bool {
        self.record.frame_jpeg.is_some() || self.evidence_file().is_some()
    }

    pub fn evidence_url(&self) -> String {
        // The revision pins the picture: a later update of the event may bring a better one.
        format!("/api/v1/events/{}/evidence.jpg?revision={}", self.id(), self.record.event.revision)
    }

    /// The API's shape: the event as the platform gets it, plus what the page knows about it.
    pub fn to_api(&self) -> ApiEvent {
        ApiEvent {
            event: self.json.clone(),
            acknowledged: self.record.acknowledged.clone(),
            evidence_url: self.has_picture().then(|| self.evidence_url()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ApiEvent {
    pub event: Value,
    pub acknowledged: Option<Acknowledgement>,
    /// Where the evidence picture is, when there is one.
    pub evidence_url: Option<String>,
}

/// The newest record of each event id (a lifecycle sends one per state), newest first.
pub fn latest_per_event(records: Vec<EventRecord>) -> Vec<EventView> {
    let mut seen = HashSet::new();
    records.into_iter().filter(|r| seen.insert(r.event.event_id)).map(EventView::new).collect()
}

/// What the events list and `GET /api/v1/events` accept.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventFilter {
    pub kind: Option<String>,
    pub camera: Option<String>,
    pub category: Option<String>,
    /// RFC 3339, or a local `YYYY-MM-DDTHH:MM` as a browser's date-time field sends it.
    pub since: Option<String>,
    pub until: Option<String>,
    /// Paging: only events older than this event id.
    pub before: Option<String>,
    pub limit: Option<usize>,
}

impl EventFilter {
    fn wanted(value: &Option<String>) -> Option<&str> {
        value.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }

    pub fn kind(&self) -> Option<&str> {
        Self::wanted(&self.kind)
    }
    pub fn camera(&self) -> Option<&str> {
        Self::wanted(&self.camera)
    }
    pub fn category(&self) -> Option<&str> {
        Self::wanted(&self.category)
    }
    pub fn since(&self) -> Option<&str> {
        Self::wanted(&self.since)
    }
    pub fn until(&self) -> Option<&str> {
        Self::wanted(&self.until)
    }
    pub fn before(&self) -> Option<&str> {
        Self::wanted(&self.before)
    }

    /// The filter as a query string (without `before`), for links to other pages of the list.
    pub fn query_without_paging(&self) -> String {
        let pairs = [
            ("kind", self.kind()),
            ("camera", self.camera()),
            ("category", self.category()),
            ("since", self.since()),
            ("until", self.until()),
        ];
        let present = pairs.into_iter().filter_map(|(key, value)| value.map(|v| (key, v)));
        form_urlencoded::Serializer::new(String::new()).extend_pairs(present).finish()
    }
}

/// A query value, form-encoded as the page's forms send it.
pub fn query_value(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// One path segment (a camera id): form encoding with a space as `%20`, since a `+` in a path is a
/// plus (form encoding writes a real `+` as `%2B`).
pub fn path_segment(value: &str) -> String {
    query_value(value).replace('+', "%20")
}

/// A bad filter value, named by its field (never quoted: the page shows the error to whoever sent it,
/// and a link can carry anything).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` is not accepted; expected {expected}")]
pub struct BadFilter {
    pub field: &'static str,
    pub expected: &'static str,
}

pub struct EventPage {
    pub events: Vec<EventView>,
    /// Cursor for the next (older) page, when there is one.
    pub next_before: Option<Uuid>,
    pub matching: usize,
}

/// Parses a time as RFC 3339 or as a browser's local date-time (`2024-05-01T08:30`).
pub fn parse_time(field: &'static str, text: &str) -> Result<DateTime<Utc>, BadFilter> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .and_then(|naive| Local.from_local_datetime(&naive).earliest())
        .map(|time| time.with_timezone(&Utc))
        .ok_or(BadFilter { field, expected: "a time such as 2024-05-01T08:30 or 2024-05-01T08:30:00+08:00" })
}

/// Filters and pages the events, newest first.
pub fn query(events: Vec<EventView>, filter: &EventFilter) -> Result<EventPage, BadFilter> {
    let since = filter.since().map(|t| parse_time("since", t)).transpose()?;
    let until = filter.until().map(|t| parse_time("until", t)).transpose()?;
    let before = filter
        .before()
        .map(|id| Uuid::parse_str(id).map_err(|_| BadFilter { field: "before", expected: "an event id (UUID)" }))
        .transpose()?;
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let matching: Vec<EventView> = events
        .into_iter()
        .filter(|e| filter.kind().is_none_or(|k| e.kind() == k))
        .filter(|e| filter.camera().is_none_or(|c| e.camera() == c))
        .filter(|e| filter.category().is_none_or(|c| e.category() == Some(c)))
        .filter(|e| since.is_none_or(|t| e.time() >= t))
        .filter(|e| until.is_none_or(|t| e.time() <= t))
        .collect();
    let count = matching.len();
    // UUID v7 sorts by creation time, so "older than the cursor" is a plain comparison.
    let mut page: Vec<EventView> =
        matching.into_iter().filter(|e| before.is_none_or(|b| e.id() < b)).take(limit + 1).collect();
    let next_before = if page.len() > limit {
        page.truncate(limit);
        page.last().map(EventView::id)
    } else {
        None
    };
    Ok(EventPage { events: page, next_before, matching: count })
}

/// A file named by an event, inside the evidence folder and nowhere else: no absolute paths, no
/// `..`, no symbolic link out of the folder.
pub fn evidence_file_path(evidence_dir: &Path, name: &str) -> Option<PathBuf> {
    let relative = Path::new(name);
    if name.is_empty() || relative.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let root = evidence_dir.canonicalize().ok()?;
    let file = root.join(relative).canonicalize().ok()?;
    (file.starts_with(&root) && file.is_file()).then_some(file)
}

/// An event's video clip in the evidence folder: `<day>/<event_id>-clip.mp4`, the day its start
/// was judged (tried from the day it was first seen to the day of this message).
pub fn clip_path(evidence_dir: &Path, view: &EventView) -> Option<PathBuf> {
    let first_seen = view.start_time().unwrap_or(view.time());
    let days: std::collections::BTreeSet<String> = [first_seen, first_seen + chrono::Duration::days(1), view.time()]
        .iter()
        .map(|time| time.format("%Y-%m-%d").to_string())
        .collect();
    days.iter().find_map(|day| evidence_file_path(evidence_dir, &format!("{day}/{}-clip.mp4", view.id())))
}

/// The picture of an event's plate: of `revision`'s message when one is asked for, else of the
/// newest message that kept one (an `end` keeps none; the update that said the plate does).
pub fn plate_picture_path(
    evidence_dir: &Path,
    board: &crate::delivery::board::StatusBoard,
    event_id: Uuid,
    revision: Option<u32>,
) -> Option<PathBuf> {
    let records = match revision {
        Some(_) => board.event_revision(event_id, revision).into_iter().collect(),
        None => board.event_revisions(event_id),
    };
    records.into_iter().find_map(|record| {
        let view = EventView::new(record);
        view.plate_file().and_then(|name| evidence_file_path(evidence_dir, name))
    })
}

/// The evidence picture of an event: its evidence file when it names one, else its kept frame.
pub async fn evidence_image(state_dir: &Path, view: &EventView) -> Option<Arc<Vec<u8>>> {
    if let Some(name) = view.evidence_file() {
        if let Some(path) = evidence_file_path(&state_dir.join("evidence"), name) {
            if let Ok(bytes) = tokio::fs::read(&path).await {
                return Some(Arc::new(bytes));
            }
        }
        tracing::warn!(event_id = %view.id(), file = name, "evidence file named by the event is not in the evidence store");
    }
    view.record.frame_jpeg.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::ModelId;
    use crate::wire::{Event, EventBox, EventKind};

    fn record(camera: &str, label: &str, minutes_ago: i64) -> EventRecord {
        let time = Utc::now() - chrono::Duration::minutes(minutes_ago);
        let event_id = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            time.timestamp() as u64,
            time.timestamp_subsec_nanos(),
        ));
        EventRecord {
            event: Event {
                event_id: event_id,
                device: "box".into(),
                station_id: "station".into(),
                camera: camera.into(),
                label: label.into(),
                score: 0.5,
                bbox: EventBox { x1: 1, y1: 2, x2: 3, y2: 4 },
                frame_width: 10,
                frame_height: 10,
                model: Some(ModelId { name: "nanodet".into(), sha256: "ab".into() }),
                ..crate::judge::fixtures::test_event(EventKind::Object, crate::wire::LifecycleState::Start, time)
            },
            frame_jpeg: None,
            acknowledged: None,
        }
    }

    /// Newest first, as the board keeps them.
    fn history() -> Vec<EventView> {
        let mut records: Vec<EventRecord> = (0..30)
            .map(|i| record(if i % 3 == 0 { "gate" } else { "yard" }, if i % 2 == 0 { "truck" } else { "cup" }, i))
            .collect();
        records.sort_by_key(|r| std::cmp::Reverse(r.event.event_id));
        latest_per_event(records)
    }

    #[test]
    fn pages_walk_the_whole_list_once_newest_first() {
        let all = history();
        let mut seen = Vec::new();
        let mut filter = EventFilter { limit: Some(7), ..Default::default() };
        loop {
            let page = query(all.clone(), &filter).unwrap();
            assert_eq!(page.matching, 30);
            seen.extend(page.events.iter().map(|e| e.id()));
            match page.next_before {
                Some(cursor) => filter.before = Some(cursor.to_string()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 30);
        assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first, no repeats");
    }

    #[test]
    fn filters_combine() {
        let filter = EventFilter { camera: Some("gate".into()), kind: Some("object".into()), ..Default::default() };
        let page = query(history(), &filter).unwrap();
        assert_eq!(page.matching, 10);
        assert!(page.events.iter().all(|e| e.camera() == "gate"));
        let none = query(history(), &EventFilter { category: Some("kitchen".into()), ..Default::default() }).unwrap();
        assert_eq!(none.matching, 0, "events without a category match no category");
        let since = (Utc::now() - chrono::Duration::seconds(9 * 60 + 30)).to_rfc3339();
        let recent = query(history(), &EventFilter { since: Some(since), ..Default::default() }).unwrap();
        assert_eq!(recent.matching, 10);
    }

    #[test]
    fn bad_filter_values_are_named() {
        let err = query(history(), &EventFilter { since: Some("yesterday".into()), ..Default::default() });
        assert_eq!(err.err().map(|e| e.field), Some("since"));
        let err = query(history(), &EventFilter { before: Some("../../etc".into()), ..Default::default() });
        let err = err.err().expect("a path is not an event id");
        assert_eq!(err.field, "before");
        assert!(!err.to_string().contains("etc"), "the error quotes the value: {err}");
    }

    #[test]
    fn a_browser_local_time_is_accepted() {
        assert!(parse_time("since", "2024-05-01T08:30").is_ok());
        assert!(parse_time("since", "2024-05-01T08:30:00+08:00").is_ok());
    }

    #[test]
    fn evidence_files_stay_inside_the_evidence_folder() {
        let state = tempfile::tempdir().unwrap();
        let evidence = state.path().join("evidence");
        std::fs::create_dir_all(evidence.join("2024-05-01")).unwrap();
        std::fs::write(evidence.join("2024-05-01/a.jpg"), b"jpeg").unwrap();
        std::fs::write(state.path().join("secret.txt"), b"secret").unwrap();
        std::os::unix::fs::symlink(state.path().join("secret.txt"), evidence.join("link.jpg")).unwrap();
        assert!(evidence_file_path(&evidence, "2024-05-01/a.jpg").is_some());
        for bad in ["../secret.txt", "/etc/passwd", "2024-05-01/../../secret.txt", "link.jpg", "", "missing.jpg"] {
            assert_eq!(evidence_file_path(&evidence, bad), None, "{bad}");
        }
    }

    #[test]
    fn a_filter_goes_into_the_page_links_and_comes_back_unchanged() {
        let filter = EventFilter {
            kind: Some("object".into()),
            camera: Some("gate 1&2".into()),
            since: Some("2024-05-01T08:30".into()),
            before: Some("not in links".into()),
            ..Default::default()
        };
        let query = filter.query_without_paging();
        assert_eq!(query, "kind=object&camera=gate+1%262&since=2024-05-01T08%3A30");
        let back: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let expected = [("kind", "object"), ("camera", "gate 1&2"), ("since", "2024-05-01T08:30")];
        assert_eq!(back, expected.map(|(k, v)| (k.to_string(), v.to_string())));
        // In a path a + is a plus: a space there is %20.
        assert_eq!(path_segment("gate 1+/ü"), "gate%201%2B%2F%C3%BC");
    }

    #[test]
    fn lifecycle_fields_show_when_present() {
        let mut view = EventView::new(record("gate", "cup", 0));
        assert_eq!(view.state(), Some("start"));
        assert_eq!(view.time_to_clear_secs(), None);
        view.json["state"] = "end".into();
        view.json["duration_secs"] = 95.0.into();
        view.json["category"] = "kitchen".into();
        view.json["evidence"] = serde_json::json!({"file": "x.jpg", "sha256": "ab"});
        assert_eq!(view.time_to_clear_secs(), Some(95.0));
        assert_eq!(view.category(), Some("kitchen"));
        assert_eq!(view.evidence_sha256(), Some("ab"));
        assert!(view.has_picture());
    }
}
