//! `road_debris`: something new and static on a road zone (spilled muck, a dropped load) for
//! `after_secs`. Found by the city's debris detector when `rules.road_debris.model` names one;
//! without it, by the background model: static foreground that is not a detected vehicle or person.
//! The area is reported in frame pixels and, when the camera has a ground homography, in m².
//! Debris found where a truck with a read plate drove lately carries that truck's plate (the truck
//! the track links it to: [`super::truck_exit::TruckExitRule::plate_that_passed`]).

use std::collections::HashMap;

use super::{centre, track_key, Finding, Found, FrameView, TrackedRule};
use crate::infer::plates::stage::PlatePicture;
use crate::infer::BoundingBox;
use crate::infer::ModelId;
use crate::judge::config::{RoadDebrisRuleConfig, TrackingConfig, ZoneRole};
use crate::judge::lifecycle::{Sighting, Transition};
use crate::judge::tracker::{Candidate, TrackIds};
use crate::judge::zones::Scene;
use crate::wire::{EventPlate, UpdateReason};

/// Label of debris found by the background model, which has no classes.
pub const DEBRIS_LABEL: &str = "debris";

pub struct RoadDebrisRule {
    config: RoadDebrisRuleConfig,
    tracked: TrackedRule,
    /// The plate of the truck each debris track is linked to, once found.
    linked: HashMap<u64, (EventPlate, Option<PlatePicture>)>,
}

/// The plate of the truck that lately covered a spot (frame pixels), if any.
pub type TruckOnSpot<'a> = &'a dyn Fn(&BoundingBox) -> Option<(EventPlate, Option<PlatePicture>)>;

/// One candidate's extra facts, kept beside the tracker's candidate list.
struct Extra {
    model: Option<ModelId>,
    area_px: f64,
    area_m2: Option<f64>,
}

impl RoadDebrisRule {
    pub fn new(config: &RoadDebrisRuleConfig, tracking: &TrackingConfig) -> Self {
        Self {
            config: config.clone(),
            tracked: TrackedRule::new(tracking, config.min_score, config.after_secs, config.clear_secs),
            linked: HashMap::new(),
        }
    }

    /// The debris model's name, when one is configured.
    pub fn model(&self) -> Option<&str> {
        self.config.model.as_deref()
    }

    pub fn needs_background(&self, scene: &Scene) -> bool {
        self.config.enabled && self.config.model.is_none() && scene.has_role(ZoneRole::Road)
    }

    /// `debris_found`: the debris model's detections (empty without one); `truck_on_spot`: the
    /// plate of the truck that lately drove where a piece of debris lies.
    pub fn judge(
        &mut self,
        view: &FrameView,
        debris_found: &[Found],
        ids: &mut TrackIds,
        truck_on_spot: TruckOnSpot,
    ) -> Vec<Transition<Finding>> {
        if !self.config.enabled || !view.scene.has_role(ZoneRole::Road) {
            return Vec::new();
        }
        let (width, height) = (view.width(), view.height());
        let road_at = |x: f32, y: f32| {
            view.scene
                .zones_with_role(ZoneRole::Road)
                .find(|z| z.contains_pixel(x, y, width, height))
                .map(|z| z.id.clone())
        };
        let mut candidates = Vec::new();
        let mut extras = Vec::new();
        if self.config.model.is_some() {
            for f in debris_found {
                let (cx, cy) = centre(&f.detection.bbox);
                let wanted = self.config.labels.is_empty() || self.config.labels.contains(&f.detection.label);
                if !wanted || road_at(cx, cy).is_none() || view.scene.ignores(&f.detection.bbox, width, height) {
                    continue;
                }
                let area_px = f64::from(f.detection.bbox.area());
                let area_m2 = view.scene.ground.map(|g| g.pixel_area_m2(f64::from(cx), f64::from(cy)) * area_px);
                candidates.push(Candidate {
                    label: f.detection.label.clone(),
                    bbox: f.detection.bbox,
                    score: f.detection.score,
                });
                extras.push(Extra { model: Some(f.model.clone()), area_px, area_m2 });
            }
        } else if let Some(fg) = view.foreground {
            let mut mask = vec![false; fg.cols * fg.rows];
            for road in view.scene.zones_with_role(ZoneRole::Road) {
                for (cell, inside) in road.grid_mask(fg.cols, fg.rows).into_iter().enumerate() {
                    mask[cell] |= inside;
                }
            }
            for ignored in view.scene.zones_with_role(ZoneRole::Ignore) {
                for (cell, inside) in ignored.grid_mask(fg.cols, fg.rows).into_iter().enumerate() {
                    mask[cell] &= !inside;
                }
            }
            for blob in fg.blobs(&mask, self.config.min_area_px) {
                let area_m2 = view.scene.ground.map(|g| fg.area_m2(&blob, &g));
                candidates.push(Candidate { label: DEBRIS_LABEL.into(), bbox: blob.bbox, score: blob.score });
                extras.push(Extra { model: None, area_px: blob.area_px, area_m2 });
            }
        }
        let mut sightings = Vec::new();
        for (i, track_id) in self.tracked.track(view.time, &candidates, ids) {
            let (candidate, extra) = (&candidates[i], &extras[i]);
            let (cx, cy) = centre(&candidate.bbox);
            // Linked once, for the debris track's life; a link found after its start is news.
            let mut news = None;
            if !self.linked.contains_key(&track_id) {
                if let Some(truck) = truck_on_spot(&candidate.bbox) {
                    self.linked.insert(track_id, truck);
                    news = Some(UpdateReason::PlateRead);
                }
            }
            let (plate, plate_picture) = self.linked.get(&track_id).cloned().unzip();
            sightings.push(Sighting {
                news,
                key: track_key(track_id),
                score: candidate.score,
                zone: road_at(cx, cy),
                details: Finding {
                    track_id: Some(track_id),
                    model: extra.model.clone(),
                    area_px: Some(extra.area_px),
                    area_m2: extra.area_m2,
                    plate,
                    plate_picture: plate_picture.flatten(),
                    ..Finding::new(&candidate.label, candidate.bbox)
                },
            });
        }
        let live: std::collections::HashSet<u64> = self.tracked.tracker.tracks().iter().map(|t| t.id).collect();
        self.linked.retain(|id, _| live.contains(id));
        self.tracked.observe(view.time, sightings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::ModelResult;
    use crate::judge::background::BackgroundModel;
    use crate::judge::config::BackgroundConfig;
    use crate::judge::fixtures::{at, cup_on_pavement, detector_result, dog_jpg_truck, muck, paste, sample, zone};
    use crate::judge::rules::detections_of;
    use crate::judge::zones::Homography;
    use crate::wire::LifecycleState;

    /// A road over the lower 40 % of dog.jpg.
    fn road() -> Scene {
        Scene {
            zones: vec![zone("lane", ZoneRole::Road, None, [0.0, 0.6, 1.0, 1.0])],
            // 100 pixels per metre, seen from straight above.
            ground: Some(Homography::new([[0.01, 0.0, 0.0], [0.0, 0.01, 0.0], [0.0, 0.0, 1.0]]).unwrap()),
            ..Scene::default()
        }
    }

    /// Plays `before` for 30 s then `after`, at 2 frames/s, with the background model and the
    /// vehicles and people the detector found left out.
    fn play(
        rule: &mut RoadDebrisRule,
        before: &image::RgbImage,
        after: &image::RgbImage,
        until: f64,
    ) -> Vec<Transition<Finding>> {
        let scene = road();
        let results: [Vec<ModelResult>; 2] = [vec![detector_result(before)], vec![detector_result(after)]];
        let exclude_labels = BackgroundConfig::default().exclude_labels;
        let mut background = BackgroundModel::new(BackgroundConfig::default());
        let mut ids = TrackIds::default();
        let mut all = Vec::new();
        for i in 0..(until * 2.0) as usize {
            let t = i as f64 * 0.5;
            let which = usize::from(t >= 30.0);
            let image = [before, after][which];
            let found = detections_of(&results[which], &scene, image.width(), image.height(), None);
            let exclude: Vec<_> = found
                .iter()
                .filter(|f| exclude_labels.contains(&f.detection.label))
                .map(|f| f.detection.bbox)
                .collect();
            let fg = background.update(image, at(t), &exclude);
            let view =
                FrameView { camera: "road", time: at(t), image, found: &found, scene: &scene, foreground: Some(&fg) };
            all.extend(rule.judge(&view, &[], &mut ids, &|_| None));
        }
        all
    }

    #[test]
    fn spilled_muck_on_the_road_is_debris_with_its_area_in_square_metres() {
        let empty = sample("dog.jpg");
        let spilled = paste(&empty, &muck(), 560, 430);
        let mut rule = RoadDebrisRule::new(&RoadDebrisRuleConfig::default(), &TrackingConfig::default());
        let all = play(&mut rule, &empty, &spilled, 100.0);
        assert_eq!(all.len(), 1, "{all:?}");
        let start = &all[0];
        assert_eq!(start.state, LifecycleState::Start);
        assert_eq!(start.details.label, DEBRIS_LABEL);
        assert_eq!(start.zone.as_deref(), Some("lane"));
        assert!(start.details.model.is_none(), "found by the background model");
        let area_px = start.details.area_px.unwrap();
        let area_m2 = start.details.area_m2.unwrap();
        assert!((area_px - 7200.0).abs() < 3000.0, "{area_px}");
        assert!((area_m2 - 0.72).abs() < 0.3, "{area_m2}");
        let b = start.details.bbox;
        assert!(
            crate::infer::detect::iou(&b, &crate::infer::BoundingBox { x1: 560.0, y1: 430.0, x2: 680.0, y2: 490.0 })
                > 0.5,
            "{b:?}"
        );
    }

    #[test]
    fn a_parked_truck_on_the_road_is_not_debris() {
        let empty = sample("dog.jpg");
        let parked = paste(&empty, &dog_jpg_truck(), 520, 460);
        let found = detect_labels(&parked);
        assert!(found.iter().any(|l| l == "truck" || l == "car"), "the detector sees the pasted truck: {found:?}");
        let mut rule = RoadDebrisRule::new(&RoadDebrisRuleConfig::default(), &TrackingConfig::default());
        let all = play(&mut rule, &empty, &parked, 100.0);
        assert!(all.is_empty(), "{all:?}");
    }

    fn detect_labels(image: &image::RgbImage) -> Vec<String> {
        crate::judge::fixtures::detect(image).into_iter().map(|d| d.label).collect()
    }

    /// The cup put down on the pavement, and a rule that takes nanodet for a city's debris model:
    /// its `cup` is the debris class.
    fn cup_as_debris() -> (image::RgbImage, Vec<ModelResult>, RoadDebrisRuleConfig) {
        let spilled = cup_on_pavement();
        let results = vec![detector_result(&spilled)];
        let config = RoadDebrisRuleConfig {
            model: Some("nanodet".into()),
            labels: vec!["cup".into()],
            after_secs: 5.0,
            ..RoadDebrisRuleConfig::default()
        };
        (spilled, results, config)
    }

    #[test]
    fn a_configured_debris_model_replaces_the_background_model() {
        let (spilled, results, config) = cup_as_debris();
        let scene = road();
        let mut rule = RoadDebrisRule::new(&config, &TrackingConfig::default());
        let debris = detections_of(&results, &scene, 768, 576, None);
        let mut ids = TrackIds::default();
        let mut all = Vec::new();
        for i in 0..20 {
            let view = FrameView {
                camera: "road",
                time: at(i as f64 * 0.5),
                image: &spilled,
                found: &[],
                scene: &scene,
                foreground: None,
            };
            all.extend(rule.judge(&view, &debris, &mut ids, &|_| None));
        }
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].details.label, "cup");
        assert_eq!(all[0].details.model.as_ref().map(|m| m.name.as_str()), Some("nanodet"));
        assert!(all[0].details.area_m2.is_some_and(|a| a > 0.5), "{:?}", all[0].details.area_m2);
        assert_eq!(all[0].details.plate, None, "no truck drove there");
    }

    /// A truck whose plate was read drove over the spot: the debris carries its plate, from the
    /// sighting the link is found on to the end; debris elsewhere does not.
    #[test]
    fn debris_where_a_truck_with_a_plate_drove_carries_its_plate() {
        let (spilled, results, config) = cup_as_debris();
        let config = RoadDebrisRuleConfig { clear_secs: 2.0, ..config };
        let scene = road();
        let debris = detections_of(&results, &scene, 768, 576, None);
        let cup = debris.iter().find(|f| f.detection.label == "cup").expect("the cup").detection.bbox;
        let plate = EventPlate {
            text: "浙EA3262".into(),
            colour: "yellow".into(),
            rows: 1,
            score: 0.97,
            reads: 3,
            of_reads: 4,
        };
        let run = |truck_spot: BoundingBox, link_from: usize| {
            let mut rule = RoadDebrisRule::new(&config, &TrackingConfig::default());
            let mut ids = TrackIds::default();
            let mut all = Vec::new();
            for i in 0..30 {
                // The plate is agreed on only from frame `link_from` (the truck is still leaving).
                let known = |spot: &BoundingBox| {
                    let (x, y) = centre(spot);
                    let covered = truck_spot.x1 <= x && x <= truck_spot.x2 && truck_spot.y1 <= y && y <= truck_spot.y2;
                    (covered && i >= link_from).then(|| (plate.clone(), None))
                };
                let found = if i < 24 { debris.as_slice() } else { &[] };
                let view = FrameView {
                    camera: "road",
                    time: at(i as f64 * 0.5),
                    image: &spilled,
                    found: &[],
                    scene: &scene,
                    foreground: None,
                };
                all.extend(rule.judge(&view, found, &mut ids, &known));
            }
            all
        };
        let over_the_cup = BoundingBox { x1: cup.x1 - 50.0, y1: cup.y1 - 80.0, x2: cup.x2 + 50.0, y2: cup.y2 + 5.0 };
        let all = run(over_the_cup, 0);
        let states: Vec<LifecycleState> = all.iter().map(|t| t.state).collect();
        assert_eq!(states, [LifecycleState::Start, LifecycleState::End], "{all:?}");
        assert!(all.iter().all(|t| t.details.plate.as_ref() == Some(&plate)), "{all:?}");
        // Linked after the event started: an update says it at once.
        let all = run(over_the_cup, 14);
        assert_eq!(all[0].details.plate, None);
        let linked = all.iter().find(|t| t.reason == Some(UpdateReason::PlateRead)).expect("an update with the plate");
        assert_eq!(linked.details.plate.as_ref(), Some(&plate));
        assert_eq!(all.last().and_then(|t| t.details.plate.as_ref()), Some(&plate), "{all:?}");
        // A truck that drove elsewhere: no plate.
        let beside = BoundingBox { x1: 0.0, y1: 0.0, x2: 100.0, y2: 100.0 };
        assert!(run(beside, 0).iter().all(|t| t.details.plate.is_none()));
    }
}
