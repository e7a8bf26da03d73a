//! Daily statistics for the page and `GET /api/v1/stats`: events per day by kind and by category,
//! time to clear, and the trucks that left per plate, counted from the events the board holds (days
//! in the box's local time).

use std::collections::BTreeMap;

use chrono::{Local, NaiveDate};
use serde::Serialize;

use super::events::EventView;

/// Category shown for events that carry none.
pub const NO_CATEGORY: &str = "-";

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DayStats {
    pub date: NaiveDate,
    pub total: u64,
    pub by_kind: BTreeMap<String, u64>,
    pub by_category: BTreeMap<String, u64>,
    /// Events that ended (were cleared) that day, and how long they stood.
    pub cleared: u64,
    pub mean_time_to_clear_secs: Option<f64>,
    pub max_time_to_clear_secs: Option<f64>,
    /// Plate → trucks that left with it (`truck_exit` events that ended with a plate).
    pub trucks_by_plate: BTreeMap<String, u64>,
}

/// The last `days` days up to `today`, oldest first, every day present even when empty.
pub fn daily(events: &[EventView], days: u32, today: NaiveDate) -> Vec<DayStats> {
    let days = days.clamp(1, 366);
    let first = today - chrono::Days::new(u64::from(days - 1));
    let mut table: BTreeMap<NaiveDate, (DayStats, f64)> = first
        .iter_days()
        .take(days as usize)
        .map(|date| (date, (DayStats { date, ..Default::default() }, 0.0)))
        .collect();
    for event in events {
        let date = event.time().with_timezone(&Local).date_naive();
        let Some((day, clear_sum)) = table.get_mut(&date) else {
            continue;
        };
        // A lifecycle is one problem: count it at its start (or once, for one-shot events).
        if event.state().is_none_or(|s| s == "start") {
            day.total += 1;
            *day.by_kind.entry(event.kind().to_string()).or_default() += 1;
            *day.by_category.entry(event.category().unwrap_or(NO_CATEGORY).to_string()).or_default() += 1;
        }
        if event.kind() == "truck_exit" && event.state() == Some("end") {
            if let Some(plate) = event.plate_text() {
                *day.trucks_by_plate.entry(plate.to_string()).or_default() += 1;
            }
        }
        if let Some(secs) = event.time_to_clear_secs() {
            day.cleared += 1;
            *clear_sum += secs;
            day.max_time_to_clear_secs = Some(day.max_time_to_clear_secs.map_or(secs, |m| m.max(secs)));
        }
    }
    table
        .into_values()
        .map(|(mut day, clear_sum)| {
            if day.cleared > 0 {
                day.mean_time_to_clear_secs = Some(clear_sum / day.cleared as f64);
            }
            day
        })
        .collect()
}

/// Series names across days, for chart legends, in a stable order.
pub fn series_names<'a>(days: &'a [DayStats], pick: impl Fn(&'a DayStats) -> &'a BTreeMap<String, u64>) -> Vec<String> {
    let mut names: Vec<String> = days.iter().flat_map(|d| pick(d).keys().cloned()).collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::board::EventRecord;
    use crate::infer::ModelId;
    use crate::wire::{Event, EventBox, EventKind};
    use chrono::{TimeZone, Utc};

    fn view(local: (i32, u32, u32, u32), extra: serde_json::Value) -> EventView {
        let time = Local.with_ymd_and_hms(local.0, local.1, local.2, local.3, 0, 0).unwrap().with_timezone(&Utc);
        let mut view = EventView::new(EventRecord {
            event: Event {
                event_id: uuid::Uuid::now_v7(),
                device: "box".into(),
                station_id: "station".into(),
                camera: "gate".into(),
                label: "cup".into(),
                score: 0.5,
                bbox: EventBox { x1: 0, y1: 0, x2: 1, y2: 1 },
                frame_width: 1,
                frame_height: 1,
                model: Some(ModelId { name: "m".into(), sha256: "s".into() }),
                ..crate::judge::fixtures::test_event(EventKind::Object, crate::wire::LifecycleState::Start, time)
            },
            frame_jpeg: None,
            acknowledged: None,
        });
        if let serde_json::Value::Object(extra) = extra {
            for (k, v) in extra {
                view.json[k] = v;
            }
        }
        view
    }

    #[test]
    fn days_count_by_kind_and_category_and_time_to_clear() {
        let today = NaiveDate::from_ymd_opt(2024, 5, 3).unwrap();
        let events = vec![
            view((2024, 5, 3, 9), serde_json::json!({})),
            view((2024, 5, 3, 10), serde_json::json!({"kind": "litter", "category": "kitchen", "state": "start"})),
            view(
                (2024, 5, 3, 11),
                serde_json::json!({"kind": "litter", "category": "kitchen", "state": "end", "duration_secs": 120.0}),
            ),
            view(
                (2024, 5, 3, 12),
                serde_json::json!({"kind": "litter", "category": "kitchen", "state": "end", "duration_secs": 60.0}),
            ),
            view((2024, 5, 1, 8), serde_json::json!({})),
            view((2024, 4, 1, 8), serde_json::json!({})),
            // Two trucks left with one plate, one with another; a start and an unplated end do not count.
            view(
                (2024, 5, 1, 9),
                serde_json::json!({"kind": "truck_exit", "state": "end", "plate": {"text": "浙EA3262"}}),
            ),
            view(
                (2024, 5, 1, 10),
                serde_json::json!({"kind": "truck_exit", "state": "end", "plate": {"text": "浙EA3262"}}),
            ),
            view(
                (2024, 5, 1, 11),
                serde_json::json!({"kind": "truck_exit", "state": "end", "plate": {"text": "沪B14292"}}),
            ),
            view(
                (2024, 5, 1, 12),
                serde_json::json!({"kind": "truck_exit", "state": "start", "plate": {"text": "沪B14292"}}),
            ),
            view((2024, 5, 1, 13), serde_json::json!({"kind": "truck_exit", "state": "end"})),
        ];
        let days = daily(&events, 3, today);
        assert_eq!(
            days.iter().map(|d| d.date.to_string()).collect::<Vec<_>>(),
            ["2024-05-01", "2024-05-02", "2024-05-03"]
        );
        assert_eq!(days[0].total, 2, "a plain event and one truck_exit start");
        assert_eq!(
            days[0].trucks_by_plate.iter().map(|(p, n)| (p.as_str(), *n)).collect::<Vec<_>>(),
            [("沪B14292", 1), ("浙EA3262", 2)]
        );
        assert_eq!(days[1].total, 0);
        let may3 = &days[2];
        assert_eq!(may3.total, 2, "the end messages are the same problems");
        assert_eq!(may3.by_kind["object"], 1);
        assert_eq!(may3.by_kind["litter"], 1);
        assert_eq!(may3.by_category[NO_CATEGORY], 1);
        assert_eq!(may3.cleared, 2);
        assert_eq!(may3.mean_time_to_clear_secs, Some(90.0));
        assert_eq!(may3.max_time_to_clear_secs, Some(120.0));
        assert_eq!(series_names(&days, |d| &d.by_kind), ["litter", "object", "truck_exit"]);
    }
}
