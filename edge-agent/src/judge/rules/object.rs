//! `object`: the plain rule for anything else a city wants reported. A tracked detection of a
//! configured label (in the configured zones, if any) whose median score passes `min_score` for
//! `min_duration_secs` is an event; it ends when the object has been gone for
//! `tracking.max_lost_secs`.

use super::{centre, track_key, Finding, FrameView, TrackedRule};
use crate::judge::config::{ObjectRuleConfig, TrackingConfig, ZoneRole};
use crate::judge::lifecycle::{Sighting, Transition};
use crate::judge::tracker::{Candidate, TrackIds};

pub struct ObjectRule {
    config: ObjectRuleConfig,
    tracked: TrackedRule,
}

impl ObjectRule {
    pub fn new(config: &ObjectRuleConfig, tracking: &TrackingConfig) -> Self {
        Self {
            config: config.clone(),
            tracked: TrackedRule::new(tracking, config.min_score, config.min_duration_secs, tracking.max_lost_secs),
        }
    }

    pub fn judge(&mut self, view: &FrameView, ids: &mut TrackIds) -> Vec<Transition<Finding>> {
        if !self.config.enabled {
            return Vec::new();
        }
        let found: Vec<_> = view.found.iter().filter(|f| self.config.labels.contains(&f.detection.label)).collect();
        let candidates: Vec<Candidate> = found.iter().map(|f| Candidate::from(&f.detection)).collect();
        let mut sightings = Vec::new();
        for (i, track_id) in self.tracked.track(view.time, &candidates, ids) {
            let f = found[i];
            let (cx, cy) = centre(&f.detection.bbox);
            let zones_here: Vec<&str> = view
                .scene
                .zones
                .iter()
                .filter(|z| !matches!(z.role, ZoneRole::Ignore | ZoneRole::Privacy))
                .filter(|z| z.contains_pixel(cx, cy, view.width(), view.height()))
                .map(|z| z.id.as_str())
                .collect();
            let zone = if self.config.zones.is_empty() {
                zones_here.first().copied()
            } else {
                match zones_here.iter().find(|id| self.config.zones.iter().any(|z| z == *id)) {
                    Some(id) => Some(*id),
                    None => continue,
                }
            };
            sightings.push(Sighting {
                news: None,
                key: track_key(track_id),
                score: f.detection.score,
                zone: zone.map(String::from),
                details: Finding {
                    track_id: Some(track_id),
                    model: Some(f.model.clone()),
                    ..Finding::new(self.tracked.label_of(track_id).unwrap_or(&f.detection.label), f.detection.bbox)
                },
            });
        }
        self.tracked.observe(view.time, sightings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::fixtures::{at, detector_result, sample, zone};
    use crate::judge::rules::detections_of;
    use crate::judge::zones::Scene;
    use crate::wire::LifecycleState;

    fn judge_frames(
        rule: &mut ObjectRule,
        scene: &Scene,
        frames: &[(f64, &image::RgbImage, &[crate::infer::ModelResult])],
    ) -> Vec<Transition<Finding>> {
        let mut ids = TrackIds::default();
        let mut all = Vec::new();
        for (secs, image, results) in frames {
            let found = detections_of(results, scene, image.width(), image.height(), None);
            let view = FrameView { camera: "gate", time: at(*secs), image, found: &found, scene, foreground: None };
            all.extend(rule.judge(&view, &mut ids));
        }
        all
    }

    #[test]
    fn the_truck_in_dog_jpg_starts_once_while_parked_and_ends_when_gone() {
        let dog = sample("dog.jpg");
        let person = sample("person.jpg");
        let (dog_results, person_results) = (vec![detector_result(&dog)], vec![detector_result(&person)]);
        let config = ObjectRuleConfig { labels: vec!["truck".into()], ..ObjectRuleConfig::default() };
        let mut rule = ObjectRule::new(&config, &TrackingConfig::default());
        let scene = Scene::default();
        // Two minutes of the parked truck at 2 frames/s, then a scene without it.
        let mut frames: Vec<(f64, &image::RgbImage, &[crate::infer::ModelResult])> =
            (0..240).map(|i| (i as f64 * 0.5, &dog, dog_results.as_slice())).collect();
        frames.extend((0..20).map(|i| (120.0 + i as f64 * 0.5, &person, person_results.as_slice())));
        let all = judge_frames(&mut rule, &scene, &frames);
        let states: Vec<LifecycleState> = all.iter().map(|t| t.state).collect();
        assert_eq!(states, vec![LifecycleState::Start, LifecycleState::End]);
        let start = &all[0];
        assert_eq!(start.details.label, "truck");
        assert_eq!(start.first_seen, at(0.0));
        assert_eq!(start.last_seen, at(1.0), "min_duration_secs = 1");
        let b = start.details.bbox;
        assert!((b.x1 - 457.0).abs() < 10.0 && (b.y2 - 160.0).abs() < 10.0, "{b:?}");
        assert_eq!(start.details.model.as_ref().map(|m| m.name.as_str()), Some("nanodet"));
        assert_eq!(all[1].event_id, start.event_id);
        assert_eq!(all[1].last_seen, at(119.5));
    }

    #[test]
    fn with_zones_configured_only_objects_inside_them_count() {
        let dog = sample("dog.jpg");
        let results = vec![detector_result(&dog)];
        // The truck (upper right) is outside a zone over the left 60 %; the bicycle is in it.
        let scene =
            Scene { zones: vec![zone("yard", ZoneRole::DropArea, None, [0.0, 0.0, 0.6, 1.0])], ..Scene::default() };
        let config = ObjectRuleConfig { zones: vec!["yard".into()], ..ObjectRuleConfig::default() };
        let mut rule = ObjectRule::new(&config, &TrackingConfig::default());
        let frames: Vec<_> = (0..6).map(|i| (i as f64 * 0.5, &dog, results.as_slice())).collect();
        let all = judge_frames(&mut rule, &scene, &frames);
        let labels: Vec<&str> = all.iter().map(|t| t.details.label.as_str()).collect();
        assert_eq!(labels, vec!["bicycle"]);
        assert_eq!(all[0].zone.as_deref(), Some("yard"));
    }
}
