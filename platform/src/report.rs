//! `edge-platform report`: one day of a district from the store, per box and camera: events by
//! kind (incidents and messages), plates read (the `plate` object events carry, from the stored
//! message), gaps in the chain, time offline, messages kept apart and alarms. The same queries on
//! SQLite and PostgreSQL, so the two stores give the same report.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::command::render_table;
use crate::store::{self, Store, Val};

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// sqlite://PATH or postgres://USER@HOST[:PORT]/DATABASE
    #[arg(long, default_value = "sqlite://edge-platform.db")]
    pub store: String,
    /// The day (UTC), YYYY-MM-DD; today by default.
    #[arg(long)]
    pub day: Option<NaiveDate>,
    /// The report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub day: NaiveDate,
    /// The last time the store knows of on that day: offline time is counted up to it.
    pub until: Option<String>,
    pub boxes: Vec<BoxReport>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct BoxReport {
    pub device: String,
    pub cameras: Vec<CameraReport>,
    pub gaps: Vec<GapReport>,
    pub offline_secs: u64,
    pub kept_apart: u64,
    pub alarms: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct CameraReport {
    pub camera: String,
    /// Kind → counts.
    pub events: BTreeMap<String, KindCount>,
    /// Plate text → incidents that carried it.
    pub plates: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct KindCount {
    /// Distinct events (one incident sends start, updates and end).
    pub incidents: u64,
    pub messages: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GapReport {
    pub first_seq: u64,
    pub last_seq: u64,
    pub pruned_by_policy: Option<String>,
}

pub fn run(args: ReportArgs) -> Result<u8> {
    let mut store = store::open(&args.store)?;
    let day = args.day.unwrap_or_else(|| Utc::now().date_naive());
    let report = build(store.as_mut(), day)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(0)
}

fn count(v: &Val) -> u64 {
    v.int().and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

fn text(v: &Val) -> String {
    v.text().unwrap_or_default().to_string()
}

/// The report of `day` (UTC).
pub fn build(store: &mut dyn Store, day: NaiveDate) -> Result<Report> {
    let from = format!("{day}T00:00:00.000000Z");
    let next = day.succ_opt().context("the day after --day")?;
    let to = format!("{next}T00:00:00.000000Z");
    let window = [Val::from(from.as_str()), Val::from(to.as_str())];
    let mut boxes: BTreeMap<String, BoxReport> = BTreeMap::new();
    for row in store.query("SELECT device FROM boxes ORDER BY device", &[])? {
        let device = text(&row[0]);
        boxes.insert(device.clone(), BoxReport { device, ..Default::default() });
    }
    let mut cameras: BTreeMap<(String, String), CameraReport> = BTreeMap::new();
    let rows = store.query(
        "SELECT device, camera, kind, COUNT(DISTINCT event_id), COUNT(*) FROM events WHERE time >= ? AND time < ? \
         GROUP BY device, camera, kind ORDER BY device, camera, kind",
        &window,
    )?;
    for row in rows {
        let (device, camera) = (text(&row[0]), text(&row[1]));
        let entry =
            cameras.entry((device, camera.clone())).or_insert_with(|| CameraReport { camera, ..Default::default() });
        entry.events.insert(text(&row[2]), KindCount { incidents: count(&row[3]), messages: count(&row[4]) });
    }
    // Plates (issue 28): read from the messages as stored, so events that carry one count; a truck
    // is its truck_exit event (an unregistered_truck event follows the same truck).
    let rows = store.query(
        "SELECT device, camera, event_id, message FROM events WHERE time >= ? AND time < ? AND kind = 'truck_exit' \
         AND message LIKE ?",
        &[window[0].clone(), window[1].clone(), Val::from("%\"plate\"%")],
    )?;
    let mut plates: BTreeMap<(String, String), BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for row in rows {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&text(&row[3])) else { continue };
        let Some(plate) = message["plate"]["text"].as_str() else { continue };
        plates
            .entry((text(&row[0]), text(&row[1])))
            .or_default()
            .entry(plate.to_string())
            .or_default()
            .insert(text(&row[2]));
    }
    for ((device, camera), texts) in plates {
        let entry =
            cameras.entry((device, camera.clone())).or_insert_with(|| CameraReport { camera, ..Default::default() });
        entry.plates = texts.into_iter().map(|(plate, ids)| (plate, ids.len() as u64)).collect();
    }
    for ((device, _), camera) in cameras {
        boxes.entry(device.clone()).or_insert_with(|| BoxReport { device, ..Default::default() }).cameras.push(camera);
    }
    let rows = store.query(
        "SELECT device, first_seq, last_seq, pruned_by_policy FROM gaps WHERE found_at >= ? AND found_at < ? \
         ORDER BY device, epoch, first_seq",
        &window,
    )?;
    for row in rows {
        if let Some(report) = boxes.get_mut(&text(&row[0])) {
            report.gaps.push(GapReport {
                first_seq: count(&row[1]),
                last_seq: count(&row[2]),
                pruned_by_policy: row[3].text().map(String::from),
            });
        }
    }
    for (sql, field) in [
        ("SELECT device, COUNT(*) FROM rejected WHERE received_at >= ? AND received_at < ? GROUP BY device", 0),
        ("SELECT device, COUNT(*) FROM alarms WHERE time >= ? AND time < ? GROUP BY device", 1),
    ] {
        for row in store.query(sql, &window)? {
            if let Some(report) = boxes.get_mut(&text(&row[0])) {
                match field {
                    0 => report.kept_apart = count(&row[1]),
                    _ => report.alarms = count(&row[1]),
                }
            }
        }
    }
    // Offline time: from each box's state at the start of the day through its changes, up to the
    // last time the store knows of that day (the same for every store of the same messages).
    let mut until: Option<String> = None;
    for sql in [
        "SELECT MAX(time) FROM presence WHERE time >= ? AND time < ?",
        "SELECT MAX(time) FROM telemetry WHERE time >= ? AND time < ?",
        "SELECT MAX(time) FROM events WHERE time >= ? AND time < ?",
    ] {
        for row in store.query(sql, &window)? {
            if let Some(t) = row[0].text() {
                if until.as_deref().is_none_or(|u| u < t) {
                    until = Some(t.to_string());
                }
            }
        }
    }
    let mut state_at_start: BTreeMap<String, String> = BTreeMap::new();
    for row in store.query(
        "SELECT p.device, p.state FROM presence p WHERE p.time = \
         (SELECT MAX(q.time) FROM presence q WHERE q.device = p.device AND q.time < ?)",
        &[window[0].clone()],
    )? {
        state_at_start.insert(text(&row[0]), text(&row[1]));
    }
    let mut changes: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for row in store.query(
        "SELECT device, time, state FROM presence WHERE time >= ? AND time < ? ORDER BY device, time, state",
        &window,
    )? {
        changes.entry(text(&row[0])).or_default().push((text(&row[1]), text(&row[2])));
    }
    if let Some(until) = until.as_deref().and_then(parse_time) {
        let start = parse_time(&from).context("the start of --day")?;
        for (device, report) in boxes.iter_mut() {
            let mut state = state_at_start.get(device).cloned();
            let mut since = start;
            let mut offline = chrono::Duration::zero();
            for (time, next) in changes.get(device).into_iter().flatten() {
                let Some(at) = parse_time(time) else { continue };
                let at = at.min(until);
                if state.as_deref().is_some_and(|s| s != "online") && at > since {
                    offline += at - since;
                }
                state = Some(next.clone());
                since = since.max(at);
            }
            if state.as_deref().is_some_and(|s| s != "online") && until > since {
                offline += until - since;
            }
            report.offline_secs = u64::try_from(offline.num_seconds()).unwrap_or(0);
        }
    }
    Ok(Report { day, until, boxes: boxes.into_values().collect() })
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
}

/// The report as tables: a row per box and camera, then a row per box.
pub fn render(report: &Report) -> String {
    let until = report
        .until
        .as_deref()
        .map(|u| format!(" (messages up to {})", u.get(11..19).unwrap_or(u)))
        .unwrap_or_default();
    let mut text = format!("Report of {}{until}\n\n", report.day);
    let mut rows: Vec<[String; 4]> = Vec::new();
    for b in &report.boxes {
        for c in &b.cameras {
            let events: Vec<String> =
                c.events.iter().map(|(kind, n)| format!("{kind} {} ({} messages)", n.incidents, n.messages)).collect();
            let plates: Vec<String> = c.plates.iter().map(|(p, n)| format!("{p} ×{n}")).collect();
            rows.push([b.device.clone(), c.camera.clone(), events.join(", "), plates.join(", ")]);
        }
    }
    text.push_str(&render_table(&["box", "camera", "events by kind", "plates"], &rows));
    text.push('\n');
    let rows: Vec<[String; 5]> = report
        .boxes
        .iter()
        .map(|b| {
            let unexplained = b.gaps.iter().filter(|g| g.pruned_by_policy.is_none()).count();
            let gaps = if b.gaps.is_empty() {
                "0".to_string()
            } else {
                let ranges: Vec<String> = b.gaps.iter().map(|g| format!("{}..={}", g.first_seq, g.last_seq)).collect();
                format!("{} ({unexplained} unexplained): {}", b.gaps.len(), ranges.join(", "))
            };
            let offline =
                format!("{}h{:02}m{:02}s", b.offline_secs / 3600, b.offline_secs / 60 % 60, b.offline_secs % 60);
            [b.device.clone(), gaps, offline, b.kept_apart.to_string(), b.alarms.to_string()]
        })
        .collect();
    text.push_str(&render_table(&["box", "gaps", "offline", "kept apart", "alarms"], &rows));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Write;

    fn event(device: &str, id: &str, revision: i64, kind: &str, plate: Option<&str>) -> Write {
        let mut message = serde_json::json!({ "event_id": id, "revision": revision, "kind": kind });
        if let Some(text) = plate {
            message["plate"] = serde_json::json!({ "text": text });
        }
        Write::Event {
            device: device.into(),
            event_id: id.into(),
            revision,
            state: if revision == 0 { "start" } else { "end" }.into(),
            kind: kind.into(),
            camera: "gate".into(),
            time: "2026-12-07T08:00:00.000000Z".into(),
            epoch: 0,
            chain_seq: None,
            message: message.to_string(),
        }
    }

    #[test]
    fn trucks_are_counted_per_plate_once_each_whatever_follows_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store::open(&format!("sqlite://{}", dir.path().join("store.db").display())).unwrap();
        store
            .write(
                &[
                    // One truck: its exit without a plate at first, with it at its end, and the
                    // unregistered_truck event that follows it.
                    event("b", "e1", 0, "truck_exit", None),
                    event("b", "e1", 1, "truck_exit", Some("浙EA3262")),
                    event("b", "u1", 0, "unregistered_truck", Some("浙EA3262")),
                    // The same truck again later, and another.
                    event("b", "e2", 0, "truck_exit", Some("浙EA3262")),
                    event("b", "e3", 1, "truck_exit", Some("沪B14292")),
                ],
                "2026-12-07T08:00:01.000000Z",
            )
            .unwrap();
        let report = build(store.as_mut(), NaiveDate::from_ymd_opt(2026, 12, 7).unwrap()).unwrap();
        let gate = &report.boxes.iter().find(|b| b.device == "b").unwrap().cameras[0];
        assert_eq!(
            gate.plates.iter().map(|(p, n)| (p.as_str(), *n)).collect::<Vec<_>>(),
            [("沪B14292", 1), ("浙EA3262", 2)]
        );
    }
}
