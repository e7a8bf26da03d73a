//! `wrong_bin`: an item inside a bin zone whose category differs from the bin's. The item's
//! category comes from the taxonomy's classifier run on its crop (mapped through the taxonomy),
//! else from the detector's own label; an item the taxonomy cannot place (`unknown`) is never
//! called wrong.

use std::collections::HashMap;

use super::{track_key, Finding, Found, FrameView, SecondStage, TrackedRule};
use crate::infer::ModelId;
use crate::judge::config::{TrackingConfig, WrongBinRuleConfig, ZoneRole, UNKNOWN_CATEGORY};
use crate::judge::lifecycle::{Sighting, Transition};
use crate::judge::taxonomy::Taxonomy;
use crate::judge::tracker::{Candidate, TrackIds};

/// Classify an item again when its detection is this much surer than at the last try.
const RECLASSIFY_GAIN: f32 = 0.1;
const MAX_CLASSIFICATIONS_PER_TRACK: u32 = 3;

#[derive(Debug, Clone)]
struct ItemCategory {
    category: String,
    classifier: Option<ModelId>,
    detection_score: f32,
    attempts: u32,
}

/// What the rule needs to put items in categories.
pub struct Categoriser<'a> {
    pub taxonomy: &'a Taxonomy,
    pub classifier: Option<&'a mut SecondStage>,
    pub min_classifier_score: f32,
}

impl Categoriser<'_> {
    /// The crop classifier's category if it is sure, else the detector label's, else `unknown`.
    pub fn categorise(&mut self, view: &FrameView, found: &Found) -> (String, Option<ModelId>) {
        if let Some(classifier) = self.classifier.as_deref_mut() {
            if let Some(top) = classifier.top(view.image, &found.detection.bbox) {
                let category = self.taxonomy.category_of(&classifier.id().name, &top.label);
                if top.score >= self.min_classifier_score && category != UNKNOWN_CATEGORY {
                    return (category.to_string(), Some(classifier.id().clone()));
                }
            }
        }
        (self.taxonomy.category_of(&found.model.name, &found.detection.label).to_string(), None)
    }
}

pub struct WrongBinRule {
    config: WrongBinRuleConfig,
    tracked: TrackedRule,
    categories: HashMap<u64, ItemCategory>,
}

impl WrongBinRule {
    pub fn new(config: &WrongBinRuleConfig, tracking: &TrackingConfig) -> Self {
        Self {
            config: config.clone(),
            tracked: TrackedRule::new(tracking, config.min_score, config.min_duration_secs, tracking.max_lost_secs),
            categories: HashMap::new(),
        }
    }

    pub fn judge(
        &mut self,
        view: &FrameView,
        ids: &mut TrackIds,
        categoriser: &mut Categoriser,
    ) -> Vec<Transition<Finding>> {
        if !self.config.enabled || !view.scene.has_role(ZoneRole::Bin) {
            return Vec::new();
        }
        let found: Vec<&Found> =
            view.found.iter().filter(|f| self.config.item_labels.contains(&f.detection.label)).collect();
        let candidates: Vec<Candidate> = found.iter().map(|f| Candidate::from(&f.detection)).collect();
        let mut sightings = Vec::new();
        for (i, track_id) in self.tracked.track(view.time, &candidates, ids) {
            let f = found[i];
            let bin = view
                .scene
                .zones_with_role(ZoneRole::Bin)
                .map(|z| (z, z.share_of_box_inside(&f.detection.bbox, view.width(), view.height())))
                .filter(|(_, share)| *share >= self.config.min_inside)
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(z, _)| z);
            let Some(bin) = bin else { continue };
            let known = self.categories.get(&track_id);
            let classify_again = known.is_none_or(|k| {
                k.attempts < MAX_CLASSIFICATIONS_PER_TRACK && f.detection.score >= k.detection_score + RECLASSIFY_GAIN
            });
            if classify_again {
                let (category, classifier) = categoriser.categorise(view, f);
                let attempts = known.map_or(0, |k| k.attempts) + 1;
                self.categories.insert(
                    track_id,
                    ItemCategory { category, classifier, detection_score: f.detection.score, attempts },
                );
            }
            let Some(item) = self.categories.get(&track_id) else { continue };
            if item.category == UNKNOWN_CATEGORY || bin.category.as_deref() == Some(item.category.as_str()) {
                continue;
            }
            sightings.push(Sighting {
                news: None,
                key: track_key(track_id),
                score: f.detection.score,
                zone: Some(bin.id.clone()),
                details: Finding {
                    track_id: Some(track_id),
                    model: Some(f.model.clone()),
                    classifier: item.classifier.clone(),
                    category: Some(item.category.clone()),
                    bin_category: bin.category.clone(),
                    ..Finding::new(&f.detection.label, f.detection.bbox)
                },
            });
        }
        let live: std::collections::HashSet<u64> = self.tracked.tracker.tracks().iter().map(|t| t.id).collect();
        self.categories.retain(|id, _| live.contains(id));
        self.tracked.observe(view.time, sightings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::config::TaxonomyConfig;
    use crate::judge::fixtures::{at, cup_on_pavement, detector_result, models_dir, zone};
    use crate::judge::rules::detections_of;
    use crate::judge::zones::Scene;
    use crate::wire::LifecycleState;

    fn taxonomy() -> Taxonomy {
        Taxonomy::load(&TaxonomyConfig {
            mappings: vec![
                models_dir().join("efficientnet_lite0.taxonomy.toml"),
                models_dir().join("nanodet.taxonomy.toml"),
            ],
            ..TaxonomyConfig::default()
        })
        .unwrap()
    }

    /// The cup of coffee.png put down at the lower left of dog.jpg (x 77–198, y 379–493), inside a
    /// bin zone covering x 0–0.4, y 0.6–1.
    fn cup_in_bin() -> image::RgbImage {
        cup_on_pavement()
    }

    fn run(bin_category: &str, classifier: Option<&mut SecondStage>) -> Vec<Transition<Finding>> {
        let frame = cup_in_bin();
        let results = vec![detector_result(&frame)];
        let scene = Scene {
            zones: vec![zone("bin-1", ZoneRole::Bin, Some(bin_category), [0.0, 0.6, 0.4, 1.0])],
            ..Scene::default()
        };
        let found = detections_of(&results, &scene, frame.width(), frame.height(), None);
        assert!(found.iter().any(|f| f.detection.label == "cup"), "the detector sees the pasted cup: {found:?}");
        let taxonomy = taxonomy();
        let mut categoriser = Categoriser { taxonomy: &taxonomy, classifier, min_classifier_score: 0.15 };
        let mut rule = WrongBinRule::new(&WrongBinRuleConfig::default(), &TrackingConfig::default());
        let mut ids = TrackIds::default();
        let mut all = Vec::new();
        for i in 0..8 {
            let view = FrameView {
                camera: "station",
                time: at(i as f64 * 0.5),
                image: &frame,
                found: &found,
                scene: &scene,
                foreground: None,
            };
            all.extend(rule.judge(&view, &mut ids, &mut categoriser));
        }
        all
    }

    #[test]
    fn a_coffee_cup_in_the_recyclable_bin_is_a_wrong_bin_event() {
        let mut classifier =
            SecondStage::load(&models_dir().join("efficientnet_lite0.toml"), Default::default()).unwrap();
        let all = run("recyclable", Some(&mut classifier));
        assert_eq!(all.len(), 1, "{all:?}");
        let event = &all[0];
        assert_eq!(event.state, LifecycleState::Start);
        assert_eq!(event.details.label, "cup");
        assert_eq!(event.details.category.as_deref(), Some("residual"), "espresso → residual");
        assert_eq!(event.details.bin_category.as_deref(), Some("recyclable"));
        assert_eq!(event.details.classifier.as_ref().map(|m| m.name.as_str()), Some("efficientnet_lite0"));
        assert_eq!(event.zone.as_deref(), Some("bin-1"));
        assert_eq!(event.last_seen, at(2.0), "min_duration_secs = 2");
    }

    #[test]
    fn the_same_cup_in_the_residual_bin_is_fine() {
        let mut classifier =
            SecondStage::load(&models_dir().join("efficientnet_lite0.toml"), Default::default()).unwrap();
        assert!(run("residual", Some(&mut classifier)).is_empty());
    }

    #[test]
    fn without_a_classifier_the_detector_label_decides() {
        // nanodet.taxonomy.toml: cup → residual.
        let all = run("kitchen", None);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].details.category.as_deref(), Some("residual"));
        assert_eq!(all[0].details.classifier, None);
    }

    #[test]
    fn items_outside_every_bin_are_not_judged_here() {
        let frame = cup_in_bin();
        let results = vec![detector_result(&frame)];
        let scene = Scene {
            zones: vec![zone("bin-1", ZoneRole::Bin, Some("recyclable"), [0.6, 0.6, 1.0, 1.0])],
            ..Scene::default()
        };
        let found = detections_of(&results, &scene, frame.width(), frame.height(), None);
        let taxonomy = taxonomy();
        let mut categoriser = Categoriser { taxonomy: &taxonomy, classifier: None, min_classifier_score: 0.15 };
        let mut rule = WrongBinRule::new(&WrongBinRuleConfig::default(), &TrackingConfig::default());
        let mut ids = TrackIds::default();
        for i in 0..8 {
            let view = FrameView {
                camera: "station",
                time: at(i as f64),
                image: &frame,
                found: &found,
                scene: &scene,
                foreground: None,
            };
            assert!(rule.judge(&view, &mut ids, &mut categoriser).is_empty());
        }
    }
}
