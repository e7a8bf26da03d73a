//! The life of an event: a subject (a track, or a zone) is sighted frame after frame; it becomes an
//! event (`start`) once it has been seen for the rule's minimum duration and the median score of its
//! recent sightings passes the rule's threshold; it sends an `update` for a better snapshot or a
//! zone change (rate limited); it `end`s when it has not been seen for a while. A finished track is
//! remembered, so the same object does not start a second event. Pure, driven by frame times.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::judge::tracker::seconds_between;
use crate::wire::{LifecycleState, UpdateReason};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LifecycleSettings {
    pub min_score: f32,
    /// Seen this long (from the first sighting) before the event starts.
    pub min_duration_secs: f64,
    /// Not seen for this long: the event ends (or a pending subject is forgotten).
    pub end_after_secs: f64,
    /// Sightings whose scores give the median.
    pub score_window: usize,
    /// Updates of one event at most this often.
    pub update_interval_secs: f64,
    /// A finished subject's key is ignored for this long (tracks: same object, no new event).
    pub remember_finished_secs: f64,
}

/// How much better a sighting's score must be than the last snapshot's to be worth an update.
const BETTER_SNAPSHOT_GAIN: f32 = 0.1;

/// What a rule saw of one subject in one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Sighting<T> {
    /// Identifies the subject within its rule and camera, e.g. `track:17` or `zone:drop-1`.
    pub key: String,
    pub score: f32,
    pub zone: Option<String>,
    pub details: T,
    /// Something the rule learnt that the event's platform must hear now (a truck's plate read):
    /// an update at once, whatever the update interval.
    pub news: Option<UpdateReason>,
}

/// A message-worthy change of an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition<T> {
    pub state: LifecycleState,
    pub reason: Option<UpdateReason>,
    pub event_id: Uuid,
    /// 0 for `start`, then one more for each message of the same event.
    pub revision: u32,
    pub key: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Median score over the recent sightings.
    pub score: f32,
    pub zone: Option<String>,
    /// The latest sighting's details.
    pub details: T,
    /// Does this message come with a new snapshot of this frame? (`end` messages show the scene
    /// without the subject, which is the proof it was cleared.)
    pub snapshot: bool,
}

#[derive(Debug)]
struct Active {
    event_id: Uuid,
    revision: u32,
    snapshot_score: f32,
    last_message: DateTime<Utc>,
    zone: Option<String>,
}

#[derive(Debug)]
struct Subject<T> {
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    scores: VecDeque<f32>,
    zone: Option<String>,
    latest: T,
    active: Option<Active>,
}

impl<T> Subject<T> {
    fn median_score(&self) -> f32 {
        let mut scores: Vec<f32> = self.scores.iter().copied().collect();
        scores.sort_by(f32::total_cmp);
        match scores.len() {
            0 => 0.0,
            n if n % 2 == 1 => scores[n / 2],
            n => (scores[n / 2 - 1] + scores[n / 2]) / 2.0,
        }
    }
}

/// The subjects of one rule on one camera.
#[derive(Debug)]
pub struct Lifecycles<T> {
    settings: LifecycleSettings,
    subjects: HashMap<String, Subject<T>>,
    finished: HashMap<String, DateTime<Utc>>,
}

impl<T: Clone> Lifecycles<T> {
    pub fn new(settings: LifecycleSettings) -> Self {
        Self { settings, subjects: HashMap::new(), finished: HashMap::new() }
    }

    pub fn active_count(&self) -> usize {
        self.subjects.values().filter(|s| s.active.is_some()).count()
    }

    /// Takes one frame's sightings; returns the starts, updates and ends they cause.
    pub fn observe(&mut self, now: DateTime<Utc>, sightings: Vec<Sighting<T>>) -> Vec<Transition<T>> {
        let settings = self.settings;
        self.finished.retain(|_, at| seconds_between(*at, now) <= settings.remember_finished_secs);
        let mut transitions = Vec::new();
        let mut sighted = std::collections::HashSet::new();
        for sighting in sightings {
            if self.finished.contains_key(&sighting.key) || !sighted.insert(sighting.key.clone()) {
                continue;
            }
            let subject = self.subjects.entry(sighting.key.clone()).or_insert_with(|| Subject {
                first_seen: now,
                last_seen: now,
                scores: VecDeque::with_capacity(settings.score_window),
                zone: sighting.zone.clone(),
                latest: sighting.details.clone(),
                active: None,
            });
            subject.last_seen = now;
            if subject.scores.len() == settings.score_window.max(1) {
                subject.scores.pop_front();
            }
            subject.scores.push_back(sighting.score);
            subject.zone = sighting.zone.clone();
            subject.latest = sighting.details;
            let median = subject.median_score();
            let change = match &mut subject.active {
                None => {
                    let long_enough = seconds_between(subject.first_seen, now) >= settings.min_duration_secs;
                    if long_enough && median >= settings.min_score {
                        subject.active = Some(Active {
                            event_id: Uuid::now_v7(),
                            revision: 0,
                            snapshot_score: sighting.score,
                            last_message: now,
                            zone: subject.zone.clone(),
                        });
                        Some((LifecycleState::Start, None))
                    } else {
                        None
                    }
                }
                Some(active) => {
                    let reason = if sighting.news.is_some() {
                        sighting.news
                    } else if active.zone != subject.zone {
                        Some(UpdateReason::ZoneChange)
                    } else if sighting.score >= active.snapshot_score + BETTER_SNAPSHOT_GAIN {
                        Some(UpdateReason::BetterSnapshot)
                    } else {
                        None
                    };
                    let due = sighting.news.is_some()
                        || seconds_between(active.last_message, now) >= settings.update_interval_secs;
                    match (reason, due) {
                        (Some(reason), true) => {
                            active.revision += 1;
                            active.last_message = now;
                            active.zone = subject.zone.clone();
                            active.snapshot_score = active.snapshot_score.max(sighting.score);
                            Some((LifecycleState::Update, Some(reason)))
                        }
                        _ => None,
                    }
                }
            };
            if let (Some((state, reason)), Some(active)) = (change, &subject.active) {
                transitions.push(Transition {
                    state,
                    reason,
                    event_id: active.event_id,
                    revision: active.revision,
                    key: sighting.key.clone(),
                    first_seen: subject.first_seen,
                    last_seen: subject.last_seen,
                    score: median,
                    zone: subject.zone.clone(),
                    details: subject.latest.clone(),
                    snapshot: true,
                });
            }
        }
        let gone: Vec<String> = self
            .subjects
            .iter()
            .filter(|(key, s)| !sighted.contains(*key) && seconds_between(s.last_seen, now) >= settings.end_after_secs)
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            let Some(subject) = self.subjects.remove(&key) else { continue };
            let Some(active) = subject.active.as_ref() else { continue };
            transitions.push(Transition {
                state: LifecycleState::End,
                reason: None,
                event_id: active.event_id,
                revision: active.revision + 1,
                key: key.clone(),
                first_seen: subject.first_seen,
                last_seen: subject.last_seen,
                score: subject.median_score(),
                zone: subject.zone.clone(),
                details: subject.latest.clone(),
                snapshot: true,
            });
            if settings.remember_finished_secs > 0.0 {
                self.finished.insert(key, now);
            }
        }
        transitions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: f64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_700_000_000_000 + (secs * 1000.0) as i64).unwrap()
    }

    fn settings() -> LifecycleSettings {
        LifecycleSettings {
            min_score: 0.4,
            min_duration_secs: 2.0,
            end_after_secs: 5.0,
            score_window: 5,
            update_interval_secs: 10.0,
            remember_finished_secs: 600.0,
        }
    }

    fn seen(key: &str, score: f32, zone: &str) -> Sighting<&'static str> {
        Sighting { key: key.into(), score, zone: Some(zone.into()), news: None, details: "truck" }
    }

    fn states<T>(transitions: &[Transition<T>]) -> Vec<LifecycleState> {
        transitions.iter().map(|t| t.state).collect()
    }

    #[test]
    fn an_event_starts_only_after_the_minimum_duration() {
        let mut book = Lifecycles::new(settings());
        assert!(book.observe(at(0.0), vec![seen("track:1", 0.6, "exit")]).is_empty());
        assert!(book.observe(at(1.0), vec![seen("track:1", 0.6, "exit")]).is_empty());
        let started = book.observe(at(2.0), vec![seen("track:1", 0.6, "exit")]);
        assert_eq!(states(&started), vec![LifecycleState::Start]);
        assert_eq!(started[0].revision, 0);
        assert_eq!(started[0].first_seen, at(0.0));
        assert_eq!(started[0].event_id.get_version_num(), 7);
    }

    #[test]
    fn one_lucky_frame_does_not_pass_the_median() {
        let mut book = Lifecycles::new(settings());
        let mut all = Vec::new();
        for (i, score) in [0.2, 0.9, 0.2, 0.25, 0.3].into_iter().enumerate() {
            all.extend(book.observe(at(i as f64), vec![seen("track:1", score, "exit")]));
        }
        assert!(all.is_empty(), "{all:?}");
        // Consistently good sightings then pass.
        for i in 5..8 {
            all.extend(book.observe(at(i as f64), vec![seen("track:1", 0.7, "exit")]));
        }
        assert_eq!(states(&all), vec![LifecycleState::Start]);
    }

    #[test]
    fn a_stationary_object_starts_once_updates_when_better_and_ends_when_gone() {
        let mut book = Lifecycles::new(settings());
        let mut all = Vec::new();
        for i in 0..100 {
            // Parked for 50 s, detected every half second; a better view at 30 s.
            let score = if i == 60 { 0.8 } else { 0.5 };
            all.extend(book.observe(at(i as f64 * 0.5), vec![seen("track:1", score, "exit")]));
        }
        assert_eq!(states(&all), vec![LifecycleState::Start, LifecycleState::Update]);
        assert_eq!(all[1].reason, Some(UpdateReason::BetterSnapshot));
        assert_eq!(all[1].revision, 1);
        assert_eq!(all[1].event_id, all[0].event_id);
        // Gone: nothing for 4 s, then the end at 5 s without it.
        assert!(book.observe(at(53.0), vec![]).is_empty());
        let ended = book.observe(at(54.5), vec![]);
        assert_eq!(states(&ended), vec![LifecycleState::End]);
        assert_eq!(ended[0].revision, 2);
        assert_eq!(seconds_between(ended[0].first_seen, ended[0].last_seen), 49.5);
        // The same track coming back does not trigger again.
        for i in 0..20 {
            assert!(book.observe(at(60.0 + i as f64), vec![seen("track:1", 0.9, "exit")]).is_empty());
        }
        assert_eq!(book.active_count(), 0);
    }

    #[test]
    fn a_zone_change_is_an_update_but_rate_limited() {
        let mut book = Lifecycles::new(settings());
        let mut all = Vec::new();
        for i in 0..5 {
            all.extend(book.observe(at(i as f64), vec![seen("track:1", 0.5, "lane-a")]));
        }
        all.extend(book.observe(at(5.0), vec![seen("track:1", 0.5, "lane-b")]));
        assert_eq!(states(&all), vec![LifecycleState::Start], "too soon after the start");
        all.extend(book.observe(at(12.5), vec![seen("track:1", 0.5, "lane-b")]));
        assert_eq!(states(&all), vec![LifecycleState::Start, LifecycleState::Update]);
        assert_eq!(all[1].reason, Some(UpdateReason::ZoneChange));
        assert_eq!(all[1].zone.as_deref(), Some("lane-b"));
    }

    #[test]
    fn a_subject_that_flickers_out_before_starting_is_forgotten() {
        let mut book = Lifecycles::new(settings());
        book.observe(at(0.0), vec![seen("zone:drop", 0.6, "drop")]);
        book.observe(at(1.0), vec![seen("zone:drop", 0.6, "drop")]);
        assert!(book.observe(at(7.0), vec![]).is_empty(), "never started, so no end");
        // Seen again: the duration counts from the new first sighting.
        assert!(book.observe(at(8.0), vec![seen("zone:drop", 0.6, "drop")]).is_empty());
        assert_eq!(states(&book.observe(at(10.0), vec![seen("zone:drop", 0.6, "drop")])), vec![LifecycleState::Start]);
    }
}
