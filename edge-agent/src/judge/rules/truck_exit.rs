//! `truck_exit`: a truck leaving through a site-exit zone (its wheels, the bottom middle of its box,
//! inside the zone), with `uncovered: true|false|null` from an optional second-stage classifier on
//! the truck's crop (null when none is configured or it is not sure). With `leaving_direction`, the
//! truck must also have moved that way by `min_travel` of the frame, so a truck coming in through
//! the exit, or parked in it, is not leaving. With the plate stage on, the plates read on a truck's
//! detections vote over its track, and its events carry the plate once the reads agree. It also
//! remembers where trucks with a plate went lately ([`TruckExitRule::plate_that_passed`]): debris
//! found where a truck just drove carries that truck's plate.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};

use super::{track_key, Finding, Found, FrameView, SecondStage, TrackedRule};
use crate::infer::detect::iou;
use crate::infer::plates::stage::PlatePicture;
use crate::infer::plates::stage::VehiclePlate;
use crate::infer::ModelId;
use crate::judge::config::{CoverClassifierConfig, Direction, TrackingConfig, TruckExitRuleConfig, ZoneRole};
use crate::judge::lifecycle::{Sighting, Transition};
use crate::judge::plate_votes::{ConfirmedPlate, PlateVotes, VoteSettings};
use crate::judge::tracker::{Candidate, Track, TrackIds};
use crate::wire::UpdateReason;

/// The second-stage classifier that tells a covered load from an uncovered one.
pub struct CoverClassifier {
    pub stage: SecondStage,
    pub config: CoverClassifierConfig,
}

impl CoverClassifier {
    /// true: uncovered, false: covered, None: not sure or another label.
    pub fn uncovered(&mut self, view: &FrameView, truck: &Found) -> Option<bool> {
        let top = self.stage.top(view.image, &truck.detection.bbox)?;
        if top.score < self.config.min_score {
            return None;
        }
        if self.config.uncovered_labels.contains(&top.label) {
            Some(true)
        } else if self.config.covered_labels.contains(&top.label) {
            Some(false)
        } else {
            None
        }
    }
}

/// Classify a truck's load again when its detection is this much surer than at the last try.
const RECLASSIFY_GAIN: f32 = 0.1;

struct CoverState {
    uncovered: Option<bool>,
    classifier: Option<ModelId>,
    detection_score: f32,
}

/// A plate was read on a truck's detection when its vehicle box is (nearly) the detection's.
const PLATE_ON_DETECTION_IOU: f32 = 0.7;

/// Where trucks went is remembered this long: debris found on a spot a truck covered within it
/// carries the truck's plate (spilled muck is found as soon as it lies still; the debris event
/// starts `after_secs` later).
pub const TRUCK_TRAIL_SECS: f64 = 120.0;

/// A truck's box on one frame.
struct Passage {
    at: DateTime<Utc>,
    bbox: crate::infer::BoundingBox,
    track_id: u64,
}

pub struct TruckExitRule {
    config: TruckExitRuleConfig,
    /// The labels whose detections the tracker follows: the rule's, and the other vehicle labels
    /// one of them may be given on a frame (`tracking.vehicle_labels`: a truck that looks like a
    /// car on a blurred frame keeps its track). A track is a truck by its labels' vote.
    followed: Vec<String>,
    tracked: TrackedRule,
    covers: HashMap<u64, CoverState>,
    plate_votes: HashMap<u64, PlateVotes>,
    vote_settings: VoteSettings,
    /// The plate each track's events last said.
    plates_said: HashMap<u64, String>,
    /// Where the trucks were in the last [`TRUCK_TRAIL_SECS`], oldest first.
    trail: VecDeque<Passage>,
    /// The plates of the trucks on the trail (their tracks may have ended), with the plate's picture.
    trail_plates: HashMap<u64, (ConfirmedPlate, Option<PlatePicture>)>,
}

impl TruckExitRule {
    pub fn new(config: &TruckExitRuleConfig, tracking: &TrackingConfig) -> Self {
        let mut followed = config.labels.clone();
        if config.labels.iter().any(|l| tracking.vehicle_labels.contains(l)) {
            followed.extend(tracking.vehicle_labels.iter().filter(|l| !config.labels.contains(l)).cloned());
        }
        Self {
            config: config.clone(),
            followed,
            tracked: TrackedRule::new(tracking, config.min_score, config.min_duration_secs, tracking.max_lost_secs),
            covers: HashMap::new(),
            plate_votes: HashMap::new(),
            vote_settings: VoteSettings::default(),
            plates_said: HashMap::new(),
            trail: VecDeque::new(),
            trail_plates: HashMap::new(),
        }
    }

    /// The plate of the truck that most recently covered the middle of `spot` (frame pixels) in the
    /// last [`TRUCK_TRAIL_SECS`], when its reads agreed on one.
    pub fn plate_that_passed(
        &self,
        spot: &crate::infer::BoundingBox,
    ) -> Option<(ConfirmedPlate, Option<PlatePicture>)> {
        let (x, y) = ((spot.x1 + spot.x2) / 2.0, (spot.y1 + spot.y2) / 2.0);
        self.trail
            .iter()
            .rev()
            .filter(|p| p.bbox.x1 <= x && x <= p.bbox.x2 && p.bbox.y1 <= y && y <= p.bbox.y2)
            .find_map(|p| self.trail_plates.get(&p.track_id).cloned())
    }

    /// How many agreeing reads make a track's plate (`[plates]`).
    pub fn with_plate_votes(mut self, settings: VoteSettings) -> Self {
        self.vote_settings = settings;
        self
    }

    pub fn judge(
        &mut self,
        view: &FrameView,
        ids: &mut TrackIds,
        mut cover: Option<&mut CoverClassifier>,
        plates: &[VehiclePlate],
    ) -> Vec<Transition<Finding>> {
        if !self.config.enabled || !view.scene.has_role(ZoneRole::SiteExit) {
            return Vec::new();
        }
        let (width, height) = (view.width(), view.height());
        let found: Vec<&Found> = view.found.iter().filter(|f| self.followed.contains(&f.detection.label)).collect();
        let candidates: Vec<Candidate> = found.iter().map(|f| Candidate::from(&f.detection)).collect();
        let mut sightings = Vec::new();
        for (i, track_id) in self.tracked.track(view.time, &candidates, ids) {
            let f = found[i];
            let b = f.detection.bbox;
            // Every read on the truck counts, before and inside the exit.
            for plate in plates.iter().filter(|p| iou(&p.vehicle, &b) >= PLATE_ON_DETECTION_IOU) {
                self.plate_votes.entry(track_id).or_default().add(plate);
            }
            let label = self.tracked.label_of(track_id).unwrap_or(&f.detection.label);
            if !self.config.labels.iter().any(|l| l == label) {
                continue;
            }
            // The track's plate once its reads agree: for its trail, and its exit's messages below.
            let votes = self.plate_votes.get(&track_id);
            let plate = votes.and_then(|v| v.confirmed(&self.vote_settings));
            let plate_picture = plate.as_ref().and_then(|p| votes?.best_picture(&p.text)).cloned();
            self.trail.push_back(Passage { at: view.time, bbox: b, track_id });
            if let Some(plate) = &plate {
                self.trail_plates.insert(track_id, (plate.clone(), plate_picture.clone()));
            }
            let wheels = ((b.x1 + b.x2) / 2.0, b.y2);
            let Some(exit) = view
                .scene
                .zones_with_role(ZoneRole::SiteExit)
                .find(|z| z.contains_pixel(wheels.0, wheels.1, width, height))
            else {
                continue;
            };
            if let (Some(direction), Some(track)) =
                (self.config.leaving_direction, self.tracked.tracker.track(track_id))
            {
                if travel(track, direction, width, height) < self.config.min_travel {
                    continue;
                }
            }
            let known = self.covers.get(&track_id);
            let classify =
                cover.is_some() && known.is_none_or(|k| f.detection.score >= k.detection_score + RECLASSIFY_GAIN);
            if classify {
                if let Some(cover) = cover.as_deref_mut() {
                    let uncovered = cover.uncovered(view, f);
                    let classifier = Some(cover.stage.id().clone());
                    self.covers
                        .insert(track_id, CoverState { uncovered, classifier, detection_score: f.detection.score });
                }
            }
            let (uncovered, classifier) =
                self.covers.get(&track_id).map(|c| (c.uncovered, c.classifier.clone())).unwrap_or((None, None));
            // A plate newly agreed on is news for the platform: an update at once (a start that
            // comes with it carries it anyway).
            let news = match &plate {
                Some(p) if self.plates_said.get(&track_id) != Some(&p.text) => {
                    self.plates_said.insert(track_id, p.text.clone());
                    Some(UpdateReason::PlateRead)
                }
                _ => None,
            };
            sightings.push(Sighting {
                key: track_key(track_id),
                score: f.detection.score,
                zone: Some(exit.id.clone()),
                news,
                details: Finding {
                    track_id: Some(track_id),
                    model: Some(f.model.clone()),
                    classifier,
                    uncovered,
                    plate,
                    plate_picture,
                    ..Finding::new(self.tracked.label_of(track_id).unwrap_or(&f.detection.label), b)
                },
            });
        }
        let live: std::collections::HashSet<u64> = self.tracked.tracker.tracks().iter().map(|t| t.id).collect();
        self.covers.retain(|id, _| live.contains(id));
        self.plate_votes.retain(|id, _| live.contains(id));
        let horizon = view.time - chrono::Duration::milliseconds((TRUCK_TRAIL_SECS * 1000.0) as i64);
        while self.trail.front().is_some_and(|p| p.at < horizon) {
            self.trail.pop_front();
        }
        let on_trail: std::collections::HashSet<u64> = self.trail.iter().map(|p| p.track_id).collect();
        self.trail_plates.retain(|id, _| on_trail.contains(id));
        self.plates_said.retain(|id, _| live.contains(id));
        self.tracked.observe(view.time, sightings)
    }
}

/// How far the track's centre moved in `direction` since it was first seen, as a share of the frame.
fn travel(track: &Track, direction: Direction, width: u32, height: u32) -> f32 {
    let (x0, y0) = super::centre(&track.first_bbox);
    let (x1, y1) = super::centre(&track.bbox);
    match direction {
        Direction::Right => (x1 - x0) / width as f32,
        Direction::Left => (x0 - x1) / width as f32,
        Direction::Down => (y1 - y0) / height as f32,
        Direction::Up => (y0 - y1) / height as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::{BoundingBox, ModelResult};
    use crate::judge::fixtures::{at, detector_result, dog_jpg_truck, models_dir, paste, sample, zone};
    use crate::judge::rules::detections_of;
    use crate::judge::zones::Scene;
    use crate::wire::LifecycleState;

    fn exit_scene() -> Scene {
        // Around the truck of dog.jpg: x 0.55–1, y 0.1–0.4.
        Scene { zones: vec![zone("gate-out", ZoneRole::SiteExit, None, [0.55, 0.1, 1.0, 0.4])], ..Scene::default() }
    }

    fn play(
        rule: &mut TruckExitRule,
        frames: &[(f64, &image::RgbImage, &[ModelResult])],
        mut cover: Option<&mut CoverClassifier>,
    ) -> Vec<Transition<Finding>> {
        let scene = exit_scene();
        let mut ids = TrackIds::default();
        let mut all = Vec::new();
        for (t, image, results) in frames {
            let found = detections_of(results, &scene, image.width(), image.height(), None);
            let view =
                FrameView { camera: "gate", time: at(*t), image, found: &found, scene: &scene, foreground: None };
            all.extend(rule.judge(&view, &mut ids, cover.as_deref_mut(), &[]));
        }
        all
    }

    /// dog.jpg's results with the truck's detection given another label and moved `dx` pixels.
    fn truck_labelled(results: &[ModelResult], label: &str, dx: f32) -> Vec<ModelResult> {
        let mut results = results.to_vec();
        if let crate::infer::Findings::Detect { detections } = &mut results[0].findings {
            // The car nanodet also sees on the pickup goes: one box, one label a frame.
            let truck = detections.iter().find(|d| d.label == "truck").map(|d| d.bbox);
            detections.retain(|d| d.label == "truck" || truck.is_none_or(|t| iou(&t, &d.bbox) < 0.5));
            for d in detections.iter_mut().filter(|d| d.label == "truck") {
                d.label = label.to_string();
                d.bbox = BoundingBox { x1: d.bbox.x1 + dx, x2: d.bbox.x2 + dx, ..d.bbox };
            }
        }
        results
    }

    #[test]
    fn a_truck_called_a_car_on_some_frames_is_one_exit_and_a_car_is_none() {
        let dog = sample("dog.jpg");
        let found = vec![detector_result(&dog)];
        // Driving through the exit, 6 px a frame; on blurred frames, for 6 s (longer than a track
        // is kept without a sighting, and far enough not to be the same still object), it is a car.
        let results: Vec<Vec<ModelResult>> = (0..40)
            .map(|i| {
                let label = if (14..26).contains(&i) { "car" } else { "truck" };
                truck_labelled(&found, label, -100.0 + 6.0 * i as f32)
            })
            .collect();
        let frames: Vec<(f64, &image::RgbImage, &[ModelResult])> =
            results.iter().enumerate().map(|(i, r)| (i as f64 * 0.5, &dog, r.as_slice())).collect();
        let mut rule = TruckExitRule::new(&TruckExitRuleConfig::default(), &TrackingConfig::default());
        let all = play(&mut rule, &frames, None);
        let ids: std::collections::HashSet<_> = all.iter().map(|t| t.event_id).collect();
        assert_eq!(ids.len(), 1, "one truck, one exit: {all:?}");
        assert!(all.iter().all(|t| t.details.label == "truck"), "{all:?}");
        // A car (called a car on every frame but one) is not a truck.
        let results: Vec<Vec<ModelResult>> = (0..30)
            .map(|i| truck_labelled(&found, if i == 4 { "truck" } else { "car" }, -100.0 + 6.0 * i as f32))
            .collect();
        let frames: Vec<(f64, &image::RgbImage, &[ModelResult])> =
            results.iter().enumerate().map(|(i, r)| (i as f64 * 0.5, &dog, r.as_slice())).collect();
        let mut rule = TruckExitRule::new(&TruckExitRuleConfig::default(), &TrackingConfig::default());
        let all = play(&mut rule, &frames, None);
        assert!(all.is_empty(), "{all:?}");
    }

    #[test]
    fn a_truck_in_the_exit_is_an_event_with_uncovered_null_without_a_classifier() {
        let (dog, other) = (sample("dog.jpg"), sample("person.jpg"));
        let (dog_results, other_results) = (vec![detector_result(&dog)], vec![detector_result(&other)]);
        let mut frames: Vec<(f64, &image::RgbImage, &[ModelResult])> =
            (0..20).map(|i| (i as f64 * 0.5, &dog, dog_results.as_slice())).collect();
        frames.extend((20..40).map(|i| (i as f64 * 0.5, &other, other_results.as_slice())));
        let mut rule = TruckExitRule::new(&TruckExitRuleConfig::default(), &TrackingConfig::default());
        let all = play(&mut rule, &frames, None);
        let states: Vec<_> = all.iter().map(|t| t.state).collect();
        assert_eq!(states, vec![LifecycleState::Start, LifecycleState::End], "{all:?}");
        assert_eq!(all[0].details.label, "truck");
        assert_eq!(all[0].zone.as_deref(), Some("gate-out"));
        assert_eq!(all[0].details.uncovered, None);
        assert_eq!(all[0].details.classifier, None);
    }

    #[test]
    fn the_plates_read_on_a_truck_vote_and_its_event_carries_the_one_they_agree_on() {
        let (dog, other) = (sample("dog.jpg"), sample("person.jpg"));
        let (dog_results, other_results) = (vec![detector_result(&dog)], vec![detector_result(&other)]);
        let scene = exit_scene();
        let truck = detections_of(&dog_results, &scene, dog.width(), dog.height(), None)
            .into_iter()
            .find(|f| f.detection.label == "truck")
            .expect("dog.jpg has a truck")
            .detection
            .bbox;
        let read = |text: &str, vehicle: BoundingBox| VehiclePlate {
            vehicle,
            plate: vehicle,
            text: text.into(),
            score: 0.9,
            valid: true,
            colour: crate::infer::plates::PlateColour::Yellow,
            rows: 1,
            picture: None,
        };
        let elsewhere = BoundingBox { x1: 0.0, y1: 0.0, x2: 50.0, y2: 50.0 };
        let mut rule = TruckExitRule::new(&TruckExitRuleConfig::default(), &TrackingConfig::default());
        let mut ids = TrackIds::default();
        let mut all = Vec::new();
        for i in 0..40 {
            let (image, results) = if i < 20 { (&dog, &dog_results) } else { (&other, &other_results) };
            // The first read is wrong; a car's plate elsewhere in the frame is not the truck's.
            let plates = match i {
                0 => vec![read("京A12346", truck)],
                1..=19 => vec![read("京A12345", truck), read("沪B99999", elsewhere)],
                _ => Vec::new(),
            };
            let found = detections_of(results, &scene, image.width(), image.height(), None);
            let view = FrameView {
                camera: "gate",
                time: at(i as f64 * 0.5),
                image,
                found: &found,
                scene: &scene,
                foreground: None,
            };
            all.extend(rule.judge(&view, &mut ids, None, &plates));
        }
        // The start came before three reads agreed; an update says the plate at once.
        assert_eq!(all[0].state, LifecycleState::Start);
        assert_eq!(all[0].details.plate, None, "{all:?}");
        let said = all
            .iter()
            .find(|t| t.reason == Some(UpdateReason::PlateRead))
            .unwrap_or_else(|| panic!("an update with the plate: {all:?}"));
        assert_eq!((said.state, said.details.plate.as_ref().map(|p| p.reads)), (LifecycleState::Update, Some(3)));
        assert_eq!(all.iter().filter(|t| t.reason == Some(UpdateReason::PlateRead)).count(), 1, "said once");
        let end = all.iter().find(|t| t.state == LifecycleState::End).expect("the truck left");
        let plate = end.details.plate.as_ref().expect("the end carries the plate");
        assert_eq!(
            (plate.text.as_str(), plate.colour.as_str(), plate.reads, plate.of_reads),
            ("京A12345", "yellow", 19, 20)
        );
        assert!(all.iter().all(|t| t.details.plate.as_ref().is_none_or(|p| p.text == "京A12345")), "{all:?}");
        // The truck's trail: a spot it covered has its plate (its track has ended); a spot it
        // never covered has none, and neither has any once the trail is older than it keeps.
        let under_the_truck =
            BoundingBox { x1: truck.x1 + 20.0, y1: truck.y2 - 10.0, x2: truck.x1 + 60.0, y2: truck.y2 };
        let passed = rule.plate_that_passed(&under_the_truck).map(|(plate, _)| plate.text);
        assert_eq!(passed.as_deref(), Some("京A12345"));
        assert_eq!(rule.plate_that_passed(&elsewhere), None);
        let found = detections_of(&other_results, &scene, other.width(), other.height(), None);
        let later = FrameView {
            camera: "gate",
            time: at(20.0 + TRUCK_TRAIL_SECS),
            image: &other,
            found: &found,
            scene: &scene,
            foreground: None,
        };
        rule.judge(&later, &mut ids, None, &[]);
        assert_eq!(rule.plate_that_passed(&under_the_truck), None, "forgotten after {TRUCK_TRAIL_SECS} s");
        // Fewer agreeing reads than asked for: no plate.
        let strict = VoteSettings { min_reads: 30, min_agreement: 0.6 };
        let mut rule =
            TruckExitRule::new(&TruckExitRuleConfig::default(), &TrackingConfig::default()).with_plate_votes(strict);
        let mut ids = TrackIds::default();
        let found = detections_of(&dog_results, &scene, dog.width(), dog.height(), None);
        for i in 0..20 {
            let view = FrameView {
                camera: "gate",
                time: at(i as f64 * 0.5),
                image: &dog,
                found: &found,
                scene: &scene,
                foreground: None,
            };
            let transitions = rule.judge(&view, &mut ids, None, &[read("京A12345", truck)]);
            assert!(transitions.iter().all(|t| t.details.plate.is_none()));
        }
    }

    /// The real classifier on the real truck crop; its top label is mapped to covered or uncovered
    /// by configuration, both ways.
    #[test]
    fn the_cover_classifier_decides_uncovered_true_or_false() {
        let dog = sample("dog.jpg");
        let results = vec![detector_result(&dog)];
        let manifest = models_dir().join("efficientnet_lite0.toml");
        let mut stage = SecondStage::load(&manifest, Default::default()).unwrap();
        let truck = crate::infer::BoundingBox { x1: 457.0, y1: 80.0, x2: 686.0, y2: 161.0 };
        let top = stage.top(&dog, &truck).unwrap();
        for (uncovered_labels, covered_labels, expected) in [
            (vec![top.label.clone()], vec![], Some(true)),
            (vec!["tarp".to_string()], vec![top.label.clone()], Some(false)),
        ] {
            let config =
                CoverClassifierConfig { manifest: manifest.clone(), uncovered_labels, covered_labels, min_score: 0.0 };
            let mut cover =
                CoverClassifier { stage: SecondStage::load(&manifest, Default::default()).unwrap(), config };
            let mut rule = TruckExitRule::new(&TruckExitRuleConfig::default(), &TrackingConfig::default());
            let frames: Vec<(f64, &image::RgbImage, &[ModelResult])> =
                (0..6).map(|i| (i as f64 * 0.5, &dog, results.as_slice())).collect();
            let all = play(&mut rule, &frames, Some(&mut cover));
            assert_eq!(all.len(), 1, "{all:?}");
            assert_eq!(all[0].details.uncovered, expected, "top label {:?}", top.label);
            assert_eq!(all[0].details.classifier.as_ref().map(|m| m.name.as_str()), Some("efficientnet_lite0"));
        }
    }

    #[test]
    fn with_a_leaving_direction_only_a_truck_moving_out_counts() {
        // The truck of dog.jpg driven to the right across person.jpg's field, then parked.
        let field = sample("person.jpg");
        let positions = [60u32, 120, 180, 240, 300, 360, 400];
        let pictures: Vec<image::RgbImage> =
            positions.iter().map(|&x| paste(&field, &dog_jpg_truck(), x, 300)).collect();
        let results: Vec<Vec<ModelResult>> = pictures.iter().map(|p| vec![detector_result(p)]).collect();
        let scene_zone = [0.0, 0.5, 1.0, 1.0];
        let scene = Scene { zones: vec![zone("gate-out", ZoneRole::SiteExit, None, scene_zone)], ..Scene::default() };
        for (direction, expect_event) in [(Direction::Right, true), (Direction::Left, false)] {
            // nanodet calls the pasted truck a car in this scene.
            let config = TruckExitRuleConfig {
                labels: vec!["car".into()],
                leaving_direction: Some(direction),
                ..TruckExitRuleConfig::default()
            };
            let mut rule = TruckExitRule::new(&config, &TrackingConfig::default());
            let mut ids = TrackIds::default();
            let mut all = Vec::new();
            for i in 0..14 {
                let k = i.min(positions.len() - 1);
                let found = detections_of(&results[k], &scene, 640, 424, None);
                assert!(found.iter().any(|f| f.detection.label == "car"), "frame {k} has the truck: {found:?}");
                let view = FrameView {
                    camera: "gate",
                    time: at(i as f64 * 0.5),
                    image: &pictures[k],
                    found: &found,
                    scene: &scene,
                    foreground: None,
                };
                all.extend(rule.judge(&view, &mut ids, None, &[]));
            }
            assert_eq!(all.len(), usize::from(expect_event), "{direction:?}: {all:?}");
        }
    }
}
