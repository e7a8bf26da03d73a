//! `litter`: garbage left in a drop area outside the bins for longer than `after_secs`. Garbage is a
//! detected item (the configured labels) or, with `static_foreground`, a patch of static foreground
//! the detector has no label for (a bag, a box). The subject is the drop area itself: the event
//! ends when the area has been clear for `clear_secs`, and its duration is the time to clear
//! (整改 time), from the first sighting to the last.

use super::{centre, union, zone_key, Finding, Found, FrameView};
use crate::judge::config::{LitterRuleConfig, TrackingConfig, ZoneRole};
use crate::judge::lifecycle::{Lifecycles, Sighting, Transition};
use crate::judge::taxonomy::Taxonomy;
use crate::judge::zones::Zone;

/// Label of litter found by the background model, which has no classes.
pub const STATIC_FOREGROUND_LABEL: &str = "static_foreground";
/// An item mostly inside a bin is in the bin, not litter.
const IN_BIN_SHARE: f32 = 0.5;

pub struct LitterRule {
    config: LitterRuleConfig,
    lifecycles: Lifecycles<Finding>,
}

impl LitterRule {
    pub fn new(config: &LitterRuleConfig, tracking: &TrackingConfig) -> Self {
        Self {
            config: config.clone(),
            lifecycles: super::zone_lifecycles(tracking, config.min_score, config.after_secs, config.clear_secs),
        }
    }

    /// Does this rule need the background model on a camera with this scene?
    pub fn needs_background(&self, scene: &crate::judge::zones::Scene) -> bool {
        self.config.enabled && self.config.static_foreground && scene.has_role(ZoneRole::DropArea)
    }

    pub fn judge(&mut self, view: &FrameView, taxonomy: &Taxonomy) -> Vec<Transition<Finding>> {
        if !self.config.enabled {
            return Vec::new();
        }
        let (width, height) = (view.width(), view.height());
        let bins: Vec<&Zone> = view.scene.zones_with_role(ZoneRole::Bin).collect();
        let mut sightings = Vec::new();
        for area in view.scene.zones_with_role(ZoneRole::DropArea) {
            let items: Vec<&Found> = view
                .found
                .iter()
                .filter(|f| self.config.item_labels.contains(&f.detection.label))
                .filter(|f| {
                    let (cx, cy) = centre(&f.detection.bbox);
                    area.contains_pixel(cx, cy, width, height)
                })
                .filter(|f| {
                    bins.iter().all(|bin| bin.share_of_box_inside(&f.detection.bbox, width, height) < IN_BIN_SHARE)
                })
                .collect();
            let blobs = match (self.config.static_foreground, view.foreground) {
                (true, Some(fg)) => {
                    let mut mask = area.grid_mask(fg.cols, fg.rows);
                    for other in view.scene.zones.iter().filter(|z| matches!(z.role, ZoneRole::Bin | ZoneRole::Ignore))
                    {
                        for (cell, inside) in other.grid_mask(fg.cols, fg.rows).into_iter().enumerate() {
                            mask[cell] &= !inside;
                        }
                    }
                    fg.blobs(&mask, self.config.min_area_px)
                }
                _ => Vec::new(),
            };
            let best_item = items.iter().max_by(|a, b| a.detection.score.total_cmp(&b.detection.score));
            let best_blob = blobs.iter().max_by(|a, b| a.score.total_cmp(&b.score));
            let Some(bbox) = union(items.iter().map(|f| f.detection.bbox).chain(blobs.iter().map(|b| b.bbox))) else {
                continue;
            };
            let details = match (best_item, best_blob) {
                (Some(item), _) => Finding {
                    model: Some(item.model.clone()),
                    category: Some(taxonomy.category_of(&item.model.name, &item.detection.label).to_string()),
                    ..Finding::new(&item.detection.label, bbox)
                },
                (None, Some(_)) => Finding {
                    area_px: Some(blobs.iter().map(|b| b.area_px).sum()),
                    ..Finding::new(STATIC_FOREGROUND_LABEL, bbox)
                },
                (None, None) => continue,
            };
            let score =
                best_item.map(|i| i.detection.score).into_iter().chain(best_blob.map(|b| b.score)).fold(0.0, f32::max);
            sightings.push(Sighting {
                key: zone_key(&area.id),
                score,
                news: None,
                zone: Some(area.id.clone()),
                details,
            });
        }
        self.lifecycles.observe(view.time, sightings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::ModelResult;
    use crate::judge::background::BackgroundModel;
    use crate::judge::config::BackgroundConfig;
    use crate::judge::fixtures::{at, cup_on_pavement, detector_result, muck, paste, sample, zone};
    use crate::judge::rules::detections_of;
    use crate::judge::tracker::seconds_between;
    use crate::judge::zones::Scene;
    use crate::wire::LifecycleState;

    /// A drop area over the lower half of dog.jpg, with a bin at `bin` (normalised rectangle).
    fn scene(bin: [f64; 4]) -> Scene {
        Scene {
            zones: vec![
                zone("drop", ZoneRole::DropArea, None, [0.0, 0.5, 1.0, 1.0]),
                zone("bin-1", ZoneRole::Bin, Some("residual"), bin),
            ],
            ..Scene::default()
        }
    }

    const BIN_AT_THE_RIGHT: [f64; 4] = [0.88, 0.5, 1.0, 1.0];

    /// Plays `timeline` (from second, picture, results) at 2 frames/s until `until`.
    fn play(
        rule: &mut LitterRule,
        scene: &Scene,
        timeline: &[(f64, &image::RgbImage, &[ModelResult])],
        until: f64,
    ) -> Vec<Transition<Finding>> {
        let taxonomy = Taxonomy::load(&crate::judge::config::TaxonomyConfig::default()).unwrap();
        let mut background = BackgroundModel::new(BackgroundConfig::default());
        let mut all = Vec::new();
        let mut t = 0.0;
        while t < until {
            let (_, image, results) = timeline.iter().rev().find(|(from, _, _)| *from <= t).copied().unwrap();
            let found = detections_of(results, scene, image.width(), image.height(), None);
            let fg = background.update(image, at(t), &[]);
            let view = FrameView { camera: "station", time: at(t), image, found: &found, scene, foreground: Some(&fg) };
            all.extend(rule.judge(&view, &taxonomy));
            t += 0.5;
        }
        all
    }

    #[test]
    fn a_cup_left_in_the_drop_area_is_litter_until_someone_clears_it() {
        let empty = sample("dog.jpg");
        let littered = cup_on_pavement();
        let (empty_results, littered_results) = (vec![detector_result(&empty)], vec![detector_result(&littered)]);
        let config = LitterRuleConfig { static_foreground: false, ..LitterRuleConfig::default() };
        let mut rule = LitterRule::new(&config, &TrackingConfig::default());
        let timeline = [
            (0.0, &empty, empty_results.as_slice()),
            (30.0, &littered, littered_results.as_slice()),
            (130.0, &empty, empty_results.as_slice()),
        ];
        let all = play(&mut rule, &scene(BIN_AT_THE_RIGHT), &timeline, 160.0);
        let states: Vec<_> = all.iter().map(|t| t.state).collect();
        assert_eq!(states, vec![LifecycleState::Start, LifecycleState::End], "{all:?}");
        let (start, end) = (&all[0], &all[1]);
        assert_eq!(start.last_seen, at(90.0), "left for after_secs = 60");
        assert_eq!(start.details.label, "cup");
        assert_eq!(start.details.category.as_deref(), Some("residual"));
        assert_eq!(start.zone.as_deref(), Some("drop"));
        assert_eq!(end.event_id, start.event_id);
        assert_eq!(seconds_between(end.first_seen, end.last_seen), 99.5, "time to clear");
    }

    #[test]
    fn a_bag_the_detector_cannot_name_is_litter_through_the_background_model() {
        let empty = sample("dog.jpg");
        // A dark bag-sized patch: nothing the detector has a label for.
        let littered = paste(&empty, &muck(), 480, 430);
        let (empty_results, littered_results) = (vec![detector_result(&empty)], vec![detector_result(&littered)]);
        let mut rule = LitterRule::new(&LitterRuleConfig::default(), &TrackingConfig::default());
        let timeline = [(0.0, &empty, empty_results.as_slice()), (30.0, &littered, littered_results.as_slice())];
        let all = play(&mut rule, &scene(BIN_AT_THE_RIGHT), &timeline, 120.0);
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].details.label, STATIC_FOREGROUND_LABEL);
        let area = all[0].details.area_px.unwrap();
        assert!((area - 7200.0).abs() < 3000.0, "{area}");
        // Seen once it stopped changing (a few seconds after the drop), then left for 60 s.
        let started = seconds_between(at(0.0), all[0].last_seen);
        assert!((90.0..100.0).contains(&started), "{started}");
    }

    #[test]
    fn garbage_inside_a_bin_is_not_litter() {
        // The cup (x 77–198, y 379–493) stands in a bin over the lower left.
        let in_bin = cup_on_pavement();
        let scene = scene([0.0, 0.6, 0.3, 1.0]);
        let results = vec![detector_result(&in_bin)];
        assert!(
            detections_of(&results, &scene, 768, 576, None).iter().any(|f| f.detection.label == "cup"),
            "the detector sees the cup"
        );
        let config = LitterRuleConfig { static_foreground: false, after_secs: 5.0, ..LitterRuleConfig::default() };
        let mut rule = LitterRule::new(&config, &TrackingConfig::default());
        assert!(play(&mut rule, &scene, &[(0.0, &in_bin, results.as_slice())], 30.0).is_empty());
    }
}
