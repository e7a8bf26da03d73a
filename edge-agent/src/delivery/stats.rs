//! Daily statistics per station: events counted by kind and category when they start, and the time
//! to clear (整改 time: from first sighting to the end) of those that ended, mean and max by kind.
//! Published as the MQTT `stats` message at most every `stats.publish_interval_secs` when something
//! changed, and once more, final, when the day is over. Trucks that left are also counted per plate
//! (a `truck_exit` that ended with one). Pure; days begin at a fixed UTC offset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset, NaiveDate, Offset, Utc};
use serde::{Deserialize, Serialize};

use super::config::{parse_utc_offset, StatsConfig};
use crate::base::write_file::write_atomically;
use crate::judge::tracker::seconds_between;
use crate::wire::LifecycleState;
use crate::wire::{Event, EventKind};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KindCounts {
    pub events: u64,
    /// Category → events; events without a category are not in here.
    pub by_category: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimeToClear {
    /// Events of this kind that ended today.
    pub cleared: u64,
    pub mean_secs: f64,
    pub max_secs: f64,
    total_secs: f64,
}

/// One station's day, the payload of the `stats` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailyStats {
    pub station_id: String,
    pub grid_cell: Option<String>,
    pub device: String,
    /// Local date, `YYYY-MM-DD`.
    pub day: NaiveDate,
    pub utc_offset: String,
    /// The day is over: these numbers no longer change.
    pub complete: bool,
    pub updated_at: DateTime<Utc>,
    pub counts: BTreeMap<EventKind, KindCounts>,
    pub time_to_clear: BTreeMap<EventKind, TimeToClear>,
    /// Plate → trucks that left with it today (`truck_exit` events that ended with a plate).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plates: BTreeMap<String, u64>,
}

impl DailyStats {
    fn empty(station_id: &str, grid_cell: Option<&str>, device: &str, day: NaiveDate, offset: FixedOffset) -> Self {
        Self {
            station_id: station_id.into(),
            grid_cell: grid_cell.map(String::from),
            device: device.into(),
            day,
            utc_offset: offset.to_string(),
            complete: false,
            updated_at: Utc::now(),
            counts: BTreeMap::new(),
            time_to_clear: BTreeMap::new(),
            plates: BTreeMap::new(),
        }
    }

    pub fn total_events(&self) -> u64 {
        self.counts.values().map(|c| c.events).sum()
    }
}

pub struct StatsBook {
    offset: FixedOffset,
    publish_interval_secs: f64,
    today: DailyStats,
    changed: bool,
    last_published: Option<DateTime<Utc>>,
}

impl StatsBook {
    pub fn new(
        station_id: &str,
        grid_cell: Option<&str>,
        device: &str,
        offset: FixedOffset,
        publish_interval_secs: f64,
        now: DateTime<Utc>,
    ) -> Self {
        let day = now.with_timezone(&offset).date_naive();
        Self {
            offset,
            publish_interval_secs,
            today: DailyStats::empty(station_id, grid_cell, device, day, offset),
            changed: false,
            last_published: None,
        }
    }

    /// Continues the numbers of a day saved before a restart, when it is still that day.
    pub fn resume(&mut self, saved: DailyStats) {
        if saved.day == self.today.day && saved.station_id == self.today.station_id {
            self.today.counts = saved.counts;
            self.today.plates = saved.plates;
            self.today.time_to_clear = saved.time_to_clear;
        }
    }

    pub fn today(&self) -> &DailyStats {
        &self.today
    }

    /// Counts an event message; returns the finished day's statistics if `event` starts a new day.
    pub fn record(&mut self, event: &Event) -> Option<DailyStats> {
        let finished = self.roll_over(event.time);
        match event.state {
            LifecycleState::Start => {
                let counts = self.today.counts.entry(event.kind).or_default();
                counts.events += 1;
                if let Some(category) = &event.category {
                    *counts.by_category.entry(category.clone()).or_default() += 1;
                }
                self.changed = true;
            }
            LifecycleState::End => {
                let secs = event.end_time.map(|end| seconds_between(event.start_time, end)).unwrap_or(0.0);
                let clear = self.today.time_to_clear.entry(event.kind).or_default();
                clear.cleared += 1;
                clear.total_secs += secs;
                clear.max_secs = clear.max_secs.max(secs);
                clear.mean_secs = clear.total_secs / clear.cleared as f64;
                if let (EventKind::TruckExit, Some(plate)) = (event.kind, &event.plate) {
                    *self.today.plates.entry(plate.text.clone()).or_default() += 1;
                }
                self.changed = true;
            }
            LifecycleState::Update => {}
        }
        finished
    }

    /// The statistics to publish now, if any: the finished day when it has ended, else today's
    /// when they changed and the publish interval has passed.
    pub fn due(&mut self, now: DateTime<Utc>) -> Option<DailyStats> {
        if let Some(finished) = self.roll_over(now) {
            return Some(finished);
        }
        let interval_passed =
            self.last_published.is_none_or(|last| seconds_between(last, now) >= self.publish_interval_secs);
        if self.changed && interval_passed {
            self.changed = false;
            self.last_published = Some(now);
            self.today.updated_at = now;
            return Some(self.today.clone());
        }
        None
    }

    fn roll_over(&mut self, now: DateTime<Utc>) -> Option<DailyStats> {
        let day = now.with_timezone(&self.offset).date_naive();
        if day <= self.today.day {
            return None;
        }
        let next = DailyStats::empty(
            &self.today.station_id,
            self.today.grid_cell.as_deref(),
            &self.today.device,
            day,
            self.offset,
        );
        let mut finished = std::mem::replace(&mut self.today, next);
        finished.complete = true;
        finished.updated_at = now;
        self.changed = false;
        self.last_published = Some(now);
        Some(finished)
    }
}

/// Where today's statistics are kept across restarts.
pub const STATS_FILE: &str = "stats-today.json";

/// The statistics book with today's numbers saved in `state_dir` after each change, so a restart
/// continues the day.
pub struct DailyStatsKeeper {
    book: StatsBook,
    file: PathBuf,
}

/// What a frame's events did to the statistics.
#[derive(Debug, Default)]
pub struct StatsUpdate {
    /// Today's statistics, when the events changed them.
    pub today: Option<DailyStats>,
    /// Statistics to publish as MQTT `stats` messages.
    pub to_publish: Vec<DailyStats>,
}

impl DailyStatsKeeper {
    /// Today's book for the station, resumed from `state_dir` when it holds today's numbers.
    pub fn open(
        state_dir: &Path,
        station_id: &str,
        grid_cell: Option<&str>,
        device: &str,
        config: &StatsConfig,
    ) -> Result<Self, String> {
        let offset = match &config.utc_offset {
            Some(text) => parse_utc_offset(text).map_err(|problem| format!("`stats.utc_offset` {problem}"))?,
            None => chrono::Local::now().offset().fix(),
        };
        let mut book = StatsBook::new(station_id, grid_cell, device, offset, config.publish_interval_secs, Utc::now());
        let file = state_dir.join(STATS_FILE);
        if let Some(saved) = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
            book.resume(saved);
        }
        Ok(Self { book, file })
    }

    /// Counts a frame's event messages (decided at `now`), saves today's numbers when they
    /// changed, and says what to publish.
    pub fn record(&mut self, events: &[Event], now: DateTime<Utc>) -> StatsUpdate {
        let mut update = StatsUpdate::default();
        for event in events {
            update.to_publish.extend(self.book.record(event));
        }
        if !events.is_empty() {
            update.today = Some(self.book.today().clone());
            self.save();
        }
        update.to_publish.extend(self.book.due(now));
        update
    }

    fn save(&self) {
        let saved = serde_json::to_vec(self.book.today())
            .map_err(|e| e.to_string())
            .and_then(|json| write_atomically(&self.file, &json).map_err(|e| e.to_string()));
        if let Err(e) = saved {
            tracing::warn!(path = %self.file.display(), "cannot save today's statistics: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::fixtures::{at, test_event};

    fn book(now: DateTime<Utc>) -> StatsBook {
        StatsBook::new("station-7", Some("grid-3"), "box-1", FixedOffset::east_opt(8 * 3600).unwrap(), 300.0, now)
    }

    #[test]
    fn counts_by_kind_and_category_and_time_to_clear() {
        let mut stats = book(at(0.0));
        let mut litter = test_event(EventKind::Litter, LifecycleState::Start, at(10.0));
        litter.category = Some("residual".into());
        stats.record(&litter);
        let mut wrong = test_event(EventKind::WrongBin, LifecycleState::Start, at(20.0));
        wrong.category = Some("kitchen".into());
        stats.record(&wrong);
        stats.record(&wrong);
        for (start, end) in [(10.0, 130.0), (200.0, 260.0)] {
            let mut ended = test_event(EventKind::Litter, LifecycleState::End, at(end));
            ended.start_time = at(start);
            ended.end_time = Some(at(end));
            stats.record(&ended);
        }
        let published = stats.due(at(300.0)).expect("changed, first publication");
        assert_eq!(published.counts[&EventKind::WrongBin].events, 2);
        assert_eq!(published.counts[&EventKind::WrongBin].by_category["kitchen"], 2);
        assert_eq!(published.counts[&EventKind::Litter].by_category["residual"], 1);
        let clear = &published.time_to_clear[&EventKind::Litter];
        assert_eq!((clear.cleared, clear.mean_secs, clear.max_secs), (2, 90.0, 120.0));
        assert_eq!(published.station_id, "station-7");
        assert!(!published.complete);
        // Nothing new, or too soon: nothing to publish.
        assert!(stats.due(at(900.0)).is_none());
        stats.record(&litter);
        assert!(stats.due(at(400.0)).is_none(), "within the interval");
        assert_eq!(stats.due(at(700.0)).unwrap().counts[&EventKind::Litter].events, 2);
    }

    #[test]
    fn trucks_that_left_are_counted_per_plate_once_each_at_their_end() {
        let mut stats = book(at(0.0));
        let plate = |text: &str| crate::wire::EventPlate {
            text: text.into(),
            colour: "yellow".into(),
            rows: 1,
            score: 0.9,
            reads: 3,
            of_reads: 4,
        };
        for (kind, state, text) in [
            (EventKind::TruckExit, LifecycleState::Start, Some("浙EA3262")),
            (EventKind::TruckExit, LifecycleState::End, Some("浙EA3262")),
            (EventKind::TruckExit, LifecycleState::End, Some("浙EA3262")),
            (EventKind::TruckExit, LifecycleState::End, Some("沪B14292")),
            (EventKind::TruckExit, LifecycleState::End, None),
            (EventKind::UnregisteredTruck, LifecycleState::End, Some("沪B14292")),
        ] {
            let mut event = test_event(kind, state, at(60.0));
            event.plate = text.map(plate);
            stats.record(&event);
        }
        let published = stats.due(at(300.0)).expect("changed");
        assert_eq!(
            published.plates.into_iter().collect::<Vec<_>>(),
            vec![("沪B14292".into(), 1), ("浙EA3262".into(), 2)]
        );
    }

    #[test]
    fn the_day_ends_at_local_midnight_with_a_final_message() {
        // 2023-11-14 22:13:20 UTC is 06:13 on the 15th in UTC+8; the day ends 16 h later.
        let mut stats = book(at(0.0));
        stats.record(&test_event(EventKind::Overflow, LifecycleState::Start, at(60.0)));
        assert_eq!(stats.today().day.to_string(), "2023-11-15");
        let final_day = stats.due(at(18.0 * 3600.0)).expect("the day is over");
        assert!(final_day.complete);
        assert_eq!(final_day.day.to_string(), "2023-11-15");
        assert_eq!(final_day.total_events(), 1);
        assert_eq!(stats.today().day.to_string(), "2023-11-16");
        assert_eq!(stats.today().total_events(), 0);
    }

    #[test]
    fn a_restart_resumes_the_same_day_only() {
        let mut before = book(at(0.0));
        before.record(&test_event(EventKind::Litter, LifecycleState::Start, at(60.0)));
        let saved = before.today().clone();
        let mut after = book(at(120.0));
        after.resume(saved.clone());
        assert_eq!(after.today().total_events(), 1);
        let mut next_day = book(at(86_400.0 * 2.0));
        next_day.resume(saved);
        assert_eq!(next_day.today().total_events(), 0);
    }
}
