//! Follows objects from frame to frame and gives each a track id. IoU matching with ByteTrack's two
//! passes (confident detections first, then weak ones may only continue existing tracks), class
//! aware, except among the labels one object may be given (`tracking.vehicle_labels`: a detector
//! calls one pickup both a car and a truck, in one frame or from frame to frame): those overlapping
//! in a frame are one candidate, they continue each other's tracks, and a track's label is the one
//! with the most score over its sightings. A lost track is remembered for a while, so an object
//! that comes back in the same place (a parked truck the detector missed for a few frames) keeps its
//! id and does not trigger again. Pure: times come from the frames, so tests replay any duration
//! instantly.

use chrono::{DateTime, Utc};

use crate::infer::detect::iou;
use crate::infer::BoundingBox;

#[derive(Debug, Clone, Copy)]
pub struct TrackerSettings {
    pub match_iou: f32,
    pub max_lost_secs: f64,
    pub stationary_memory_secs: f64,
    pub stationary_iou: f32,
}

impl From<&crate::judge::config::TrackingConfig> for TrackerSettings {
    fn from(c: &crate::judge::config::TrackingConfig) -> Self {
        Self {
            match_iou: c.match_iou,
            max_lost_secs: c.max_lost_secs,
            stationary_memory_secs: c.stationary_memory_secs,
            stationary_iou: c.stationary_iou,
        }
    }
}

/// Something to track: a detection, or a blob of static foreground.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub label: String,
    pub bbox: BoundingBox,
    pub score: f32,
}

impl From<&crate::infer::Detection> for Candidate {
    fn from(d: &crate::infer::Detection) -> Self {
        Self { label: d.label.clone(), bbox: d.bbox, score: d.score }
    }
}

/// Boxes of labels one object may be given that overlap this much in a frame are one object (the
/// detector's per-class suppression leaves both).
const ONE_OBJECT_IOU: f32 = 0.7;

#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub id: u64,
    /// The label with the most score over the track's sightings.
    pub label: String,
    /// Each label's summed score over the track's sightings.
    votes: Vec<(String, f32)>,
    pub bbox: BoundingBox,
    /// Where the object was first seen: how far it moved tells whether it is leaving.
    pub first_bbox: BoundingBox,
    pub score: f32,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// Hands out track ids unique per camera, shared by the trackers of the camera's rules.
#[derive(Debug, Default)]
pub struct TrackIds {
    last: u64,
}

impl TrackIds {
    pub fn next_id(&mut self) -> u64 {
        self.last += 1;
        self.last
    }
}

pub fn seconds_between(earlier: DateTime<Utc>, later: DateTime<Utc>) -> f64 {
    (later - earlier).num_milliseconds() as f64 / 1000.0
}

impl Track {
    fn vote(&mut self, label: &str, score: f32) {
        match self.votes.iter_mut().find(|(l, _)| l == label) {
            Some((_, total)) => *total += score,
            None => self.votes.push((label.to_string(), score)),
        }
        if let Some((best, _)) = self.votes.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
            self.label.clone_from(best);
        }
    }
}

#[derive(Debug)]
pub struct Tracker {
    settings: TrackerSettings,
    /// Labels one object may be given (vehicles): matched across each other.
    one_object_labels: Vec<String>,
    tracks: Vec<Track>,
    /// Lost tracks kept for `stationary_memory_secs`.
    dormant: Vec<Track>,
}

impl Tracker {
    pub fn new(settings: TrackerSettings) -> Self {
        Self { settings, one_object_labels: Vec::new(), tracks: Vec::new(), dormant: Vec::new() }
    }

    /// Tracks of these labels take each other's detections (`tracking.vehicle_labels`).
    pub fn with_one_object_labels(mut self, labels: &[String]) -> Self {
        self.one_object_labels = labels.to_vec();
        self
    }

    /// Whether a detection labelled `b` may be the object tracked as `a`.
    fn same_object(&self, a: &str, b: &str) -> bool {
        a == b || (self.one_object_labels.iter().any(|l| l == a) && self.one_object_labels.iter().any(|l| l == b))
    }

    /// For each candidate, the one that stands for its object in this frame: itself, or a better
    /// scored candidate of a label the same object may have whose box overlaps it almost wholly.
    fn representatives(&self, candidates: &[Candidate]) -> Vec<usize> {
        let mut by_score: Vec<usize> = (0..candidates.len()).collect();
        by_score.sort_by(|&a, &b| candidates[b].score.total_cmp(&candidates[a].score));
        let mut standing_for = (0..candidates.len()).collect::<Vec<usize>>();
        for (rank, &c) in by_score.iter().enumerate() {
            let better = by_score[..rank].iter().copied().find(|&r| {
                standing_for[r] == r
                    && candidates[r].label != candidates[c].label
                    && self.same_object(&candidates[r].label, &candidates[c].label)
                    && iou(&candidates[r].bbox, &candidates[c].bbox) >= ONE_OBJECT_IOU
            });
            if let Some(r) = better {
                standing_for[c] = r;
            }
        }
        standing_for
    }

    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    pub fn track(&self, id: u64) -> Option<&Track> {
        self.tracks.iter().find(|t| t.id == id)
    }

    /// Takes this frame's candidates; returns, per candidate, the id of the track it belongs to.
    /// Candidates below `confident` only continue tracks; they never start one.
    pub fn update(
        &mut self,
        now: DateTime<Utc>,
        candidates: &[Candidate],
        confident: f32,
        ids: &mut TrackIds,
    ) -> Vec<Option<u64>> {
        self.forget_lost(now);
        let mut assigned: Vec<Option<u64>> = vec![None; candidates.len()];
        let mut track_taken = vec![false; self.tracks.len()];
        let standing_for = self.representatives(candidates);
        let (strong, weak): (Vec<usize>, Vec<usize>) =
            (0..candidates.len()).filter(|&i| standing_for[i] == i).partition(|&i| candidates[i].score >= confident);
        for pass in [strong.as_slice(), weak.as_slice()] {
            // Greedy by overlap: the best pairs first.
            let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
            for &c in pass {
                for (t, track) in self.tracks.iter().enumerate() {
                    if track_taken[t] || !self.same_object(&track.label, &candidates[c].label) {
                        continue;
                    }
                    let overlap = iou(&track.bbox, &candidates[c].bbox);
                    if overlap >= self.settings.match_iou {
                        pairs.push((overlap, c, t));
                    }
                }
            }
            pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (_, c, t) in pairs {
                if track_taken[t] || assigned[c].is_some() {
                    continue;
                }
                track_taken[t] = true;
                let track = &mut self.tracks[t];
                track.bbox = candidates[c].bbox;
                track.score = candidates[c].score;
                track.last_seen = now;
                track.vote(&candidates[c].label, candidates[c].score);
                assigned[c] = Some(track.id);
            }
        }
        for &c in &strong {
            if assigned[c].is_some() {
                continue;
            }
            let candidate = &candidates[c];
            let revived = self
                .dormant
                .iter()
                .enumerate()
                .filter(|(_, d)| self.same_object(&d.label, &candidate.label))
                .map(|(i, d)| (i, iou(&d.bbox, &candidate.bbox)))
                .filter(|&(_, overlap)| overlap >= self.settings.stationary_iou)
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i);
            let track = match revived {
                Some(i) => {
                    let mut track = self.dormant.swap_remove(i);
                    track.bbox = candidate.bbox;
                    track.score = candidate.score;
                    track.last_seen = now;
                    track.vote(&candidate.label, candidate.score);
                    track
                }
                None => Track {
                    id: ids.next_id(),
                    label: candidate.label.clone(),
                    votes: vec![(candidate.label.clone(), candidate.score)],
                    bbox: candidate.bbox,
                    first_bbox: candidate.bbox,
                    score: candidate.score,
                    first_seen: now,
                    last_seen: now,
                },
            };
            assigned[c] = Some(track.id);
            self.tracks.push(track);
        }
        // The other labels of an object tracked this frame count towards its track's label.
        for (c, &r) in standing_for.iter().enumerate() {
            if r == c {
                continue;
            }
            if let Some(track) = assigned[r].and_then(|id| self.tracks.iter_mut().find(|t| t.id == id)) {
                track.vote(&candidates[c].label, candidates[c].score);
            }
        }
        assigned
    }

    fn forget_lost(&mut self, now: DateTime<Utc>) {
        let settings = self.settings;
        let (kept, lost): (Vec<Track>, Vec<Track>) = std::mem::take(&mut self.tracks)
            .into_iter()
            .partition(|t| seconds_between(t.last_seen, now) <= settings.max_lost_secs);
        self.tracks = kept;
        self.dormant.extend(lost);
        self.dormant.retain(|t| seconds_between(t.last_seen, now) <= settings.stationary_memory_secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: f64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_700_000_000_000 + (secs * 1000.0) as i64).unwrap()
    }

    fn settings() -> TrackerSettings {
        TrackerSettings { match_iou: 0.3, max_lost_secs: 5.0, stationary_memory_secs: 600.0, stationary_iou: 0.6 }
    }

    fn candidate(label: &str, x: f32, score: f32) -> Candidate {
        Candidate { label: label.into(), bbox: BoundingBox { x1: x, y1: 100.0, x2: x + 200.0, y2: 180.0 }, score }
    }

    #[test]
    fn a_moving_object_keeps_its_track_id() {
        let mut tracker = Tracker::new(settings());
        let mut ids = TrackIds::default();
        let first = tracker.update(at(0.0), &[candidate("truck", 100.0, 0.6)], 0.3, &mut ids);
        let second = tracker.update(at(0.5), &[candidate("truck", 130.0, 0.6)], 0.3, &mut ids);
        let third = tracker.update(at(1.0), &[candidate("truck", 160.0, 0.5)], 0.3, &mut ids);
        assert_eq!(first, vec![Some(1)]);
        assert_eq!(second, first);
        assert_eq!(third, first);
        let track = tracker.track(1).unwrap();
        assert_eq!(track.first_bbox.x1, 100.0);
        assert_eq!(track.bbox.x1, 160.0);
    }

    #[test]
    fn two_objects_get_two_ids_and_labels_do_not_mix() {
        let mut tracker = Tracker::new(settings());
        let mut ids = TrackIds::default();
        let frame = [candidate("truck", 100.0, 0.6), candidate("car", 105.0, 0.6), candidate("truck", 500.0, 0.6)];
        let first = tracker.update(at(0.0), &frame, 0.3, &mut ids);
        assert_eq!(first, vec![Some(1), Some(2), Some(3)]);
        let again = tracker.update(at(0.5), &frame, 0.3, &mut ids);
        assert_eq!(again, first);
    }

    #[test]
    fn one_vehicle_called_a_car_and_a_truck_is_one_track_labelled_by_the_most_score() {
        let vehicles = ["car", "truck", "bus"].map(String::from);
        let mut tracker = Tracker::new(settings()).with_one_object_labels(&vehicles);
        let mut ids = TrackIds::default();
        // The demo's pickup: a car at 0.35 and a truck at 0.36 on almost the same box.
        let pickup = [candidate("car", 100.0, 0.35), candidate("truck", 102.0, 0.36)];
        assert_eq!(tracker.update(at(0.0), &pickup, 0.3, &mut ids), vec![None, Some(1)]);
        assert_eq!(tracker.track(1).unwrap().label, "truck");
        // Then seen as a car alone for a while, moving: the same track, and the car's score wins.
        for (i, x) in [110.0, 120.0, 130.0].into_iter().enumerate() {
            let seen = tracker.update(at(0.5 * (i + 1) as f64), &[candidate("car", x, 0.5)], 0.3, &mut ids);
            assert_eq!(seen, vec![Some(1)]);
        }
        assert_eq!(tracker.track(1).unwrap().label, "car");
        // Other labels never mix, and two vehicles side by side stay two.
        let frame = [candidate("car", 130.0, 0.5), candidate("cup", 131.0, 0.9), candidate("truck", 600.0, 0.6)];
        assert_eq!(tracker.update(at(2.5), &frame, 0.3, &mut ids), vec![Some(1), Some(2), Some(3)]);
        // Without the setting, a car and a truck are two tracks as before.
        let mut plain = Tracker::new(settings());
        assert_eq!(plain.update(at(0.0), &pickup, 0.3, &mut TrackIds::default()), vec![Some(1), Some(2)]);
    }

    #[test]
    fn weak_detections_continue_tracks_but_never_start_one() {
        let mut tracker = Tracker::new(settings());
        let mut ids = TrackIds::default();
        assert_eq!(tracker.update(at(0.0), &[candidate("cup", 100.0, 0.2)], 0.3, &mut ids), vec![None]);
        assert_eq!(tracker.update(at(0.5), &[candidate("cup", 100.0, 0.5)], 0.3, &mut ids), vec![Some(1)]);
        assert_eq!(tracker.update(at(1.0), &[candidate("cup", 100.0, 0.2)], 0.3, &mut ids), vec![Some(1)]);
    }

    #[test]
    fn a_parked_truck_missed_for_a_while_comes_back_with_its_old_id() {
        let mut tracker = Tracker::new(settings());
        let mut ids = TrackIds::default();
        tracker.update(at(0.0), &[candidate("truck", 100.0, 0.6)], 0.3, &mut ids);
        // Missed for 60 s: lost after 5 s, but remembered.
        tracker.update(at(30.0), &[], 0.3, &mut ids);
        assert!(tracker.tracks().is_empty());
        let back = tracker.update(at(60.0), &[candidate("truck", 102.0, 0.6)], 0.3, &mut ids);
        assert_eq!(back, vec![Some(1)]);
        // Somewhere else it is a new truck.
        let other =
            tracker.update(at(60.5), &[candidate("truck", 102.0, 0.6), candidate("truck", 600.0, 0.6)], 0.3, &mut ids);
        assert_eq!(other, vec![Some(1), Some(2)]);
        // After the memory has passed, the same place is a new track.
        tracker.update(at(700.0), &[], 0.3, &mut ids);
        assert_eq!(tracker.update(at(701.0), &[candidate("truck", 102.0, 0.6)], 0.3, &mut ids), vec![Some(3)]);
    }
}
