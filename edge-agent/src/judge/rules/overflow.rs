//! `overflow`: a bin zone covered by static foreground (garbage piled on and around the bin) above
//! `min_coverage` of its area for `after_secs`, or, with a state classifier (a head the site
//! trained with `edge-agent learn`), a bin whose crop it calls overflowing for `after_secs`. The
//! subject is the bin zone; the event ends when it has stayed clear for `clear_secs`.

use super::{zone_key, Finding, FrameView, SecondStage};
use crate::infer::BoundingBox;
use crate::judge::config::{OverflowRuleConfig, StateClassifierConfig, TrackingConfig, ZoneRole};
use crate::judge::lifecycle::{Lifecycles, Sighting, Transition};
use crate::judge::zones::Scene;

pub const OVERFLOW_LABEL: &str = "overflow";

/// The state classifier of `rules.overflow.state_classifier`, loaded.
pub struct StateClassifier {
    pub stage: SecondStage,
    pub config: StateClassifierConfig,
}

impl StateClassifier {
    /// The score of the crop's top label when it is an "on" label and sure enough; else None.
    pub fn on_score(&mut self, image: &image::RgbImage, zone: &BoundingBox) -> Option<f32> {
        let top = self.stage.top(image, zone)?;
        (top.score >= self.config.min_score && self.config.on_labels.contains(&top.label)).then_some(top.score)
    }
}

pub struct OverflowRule {
    config: OverflowRuleConfig,
    lifecycles: Lifecycles<Finding>,
}

impl OverflowRule {
    pub fn new(config: &OverflowRuleConfig, tracking: &TrackingConfig) -> Self {
        Self {
            config: config.clone(),
            lifecycles: super::zone_lifecycles(
                tracking,
                // With a classifier the sighting's score is its score, not a coverage.
                config.state_classifier.as_ref().map_or(config.min_coverage, |c| c.min_score),
                config.after_secs,
                config.clear_secs,
            ),
        }
    }

    pub fn needs_background(&self, scene: &Scene) -> bool {
        self.config.enabled && self.config.state_classifier.is_none() && scene.has_role(ZoneRole::Bin)
    }

    /// `classifier`: the loaded `state_classifier`, when the config has one.
    pub fn judge(
        &mut self,
        view: &FrameView,
        mut classifier: Option<&mut StateClassifier>,
    ) -> Vec<Transition<Finding>> {
        if !self.config.enabled {
            return Vec::new();
        }
        let (width, height) = (view.width(), view.height());
        let mut sightings = Vec::new();
        for bin in view.scene.zones_with_role(ZoneRole::Bin) {
            let corners = bin.pixel_corners(width, height);
            let bbox = BoundingBox {
                x1: corners.iter().map(|c| c.0).fold(f32::MAX, f32::min),
                y1: corners.iter().map(|c| c.1).fold(f32::MAX, f32::min),
                x2: corners.iter().map(|c| c.0).fold(0.0, f32::max),
                y2: corners.iter().map(|c| c.1).fold(0.0, f32::max),
            };
            // A classifier's finding names it (name and sha256) in the event.
            let mut decided_by = None;
            let (score, coverage) = match (classifier.as_deref_mut(), view.foreground) {
                (Some(classifier), _) => match classifier.on_score(view.image, &bbox) {
                    Some(score) => {
                        decided_by = Some(classifier.stage.id().clone());
                        (score, None)
                    }
                    None => continue,
                },
                (None, Some(fg)) => {
                    let coverage = fg.coverage(&bin.grid_mask(fg.cols, fg.rows));
                    if coverage < self.config.min_coverage {
                        continue;
                    }
                    (coverage, Some(coverage))
                }
                (None, None) => continue,
            };
            sightings.push(Sighting {
                news: None,
                key: zone_key(&bin.id),
                score,
                zone: Some(bin.id.clone()),
                details: Finding {
                    category: bin.category.clone(),
                    bin_category: bin.category.clone(),
                    coverage,
                    classifier: decided_by,
                    ..Finding::new(OVERFLOW_LABEL, bbox)
                },
            });
        }
        self.lifecycles.observe(view.time, sightings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::background::BackgroundModel;
    use crate::judge::config::BackgroundConfig;
    use crate::judge::fixtures::{at, muck, paste, sample, zone};
    use crate::judge::tracker::seconds_between;
    use crate::wire::LifecycleState;

    #[test]
    fn a_bin_buried_under_a_pile_overflows_and_is_cleared() {
        let empty = sample("dog.jpg");
        // The pile: the horse and the cow of person.jpg (a heap of brown and white), 240×240 px
        // over a bin zone of 276×288 px.
        let heap = image::imageops::crop_imm(&sample("person.jpg"), 393, 131, 198, 209).to_image();
        let heap = image::imageops::resize(&heap, 240, 240, image::imageops::FilterType::Triangle);
        let overflowing = paste(&empty, &heap, 490, 310);
        let scene = Scene {
            zones: vec![zone("bin-kitchen", ZoneRole::Bin, Some("kitchen"), [0.62, 0.5, 0.98, 1.0])],
            ..Scene::default()
        };
        let mut rule = OverflowRule::new(&OverflowRuleConfig::default(), &TrackingConfig::default());
        let mut background = BackgroundModel::new(BackgroundConfig::default());
        let mut all = Vec::new();
        for i in 0..400 {
            let t = i as f64 * 0.5;
            // Empty for 30 s, overflowing for 2 minutes, then cleared.
            let image = if (30.0..150.0).contains(&t) { &overflowing } else { &empty };
            let fg = background.update(image, at(t), &[]);
            let view =
                FrameView { camera: "station", time: at(t), image, found: &[], scene: &scene, foreground: Some(&fg) };
            all.extend(rule.judge(&view, None));
        }
        let states: Vec<_> = all.iter().map(|t| t.state).collect();
        assert_eq!(states, vec![LifecycleState::Start, LifecycleState::End], "{all:?}");
        let start = &all[0];
        let coverage = start.details.coverage.unwrap();
        assert!((0.5..0.8).contains(&coverage), "{coverage}");
        assert_eq!(start.details.category.as_deref(), Some("kitchen"));
        let started_after = seconds_between(at(30.0), start.last_seen);
        assert!((60.0..70.0).contains(&started_after), "after_secs = 60 once the pile is still: {started_after}");
        let lasted = seconds_between(all[1].first_seen, all[1].last_seen);
        assert!((110.0..120.0).contains(&lasted), "{lasted}");
    }

    #[test]
    fn a_bin_with_a_little_garbage_beside_it_does_not_overflow() {
        let empty = sample("dog.jpg");
        let some = paste(&empty, &muck(), 500, 320);
        let scene = Scene {
            zones: vec![zone("bin-kitchen", ZoneRole::Bin, Some("kitchen"), [0.62, 0.5, 0.98, 1.0])],
            ..Scene::default()
        };
        let mut rule = OverflowRule::new(&OverflowRuleConfig::default(), &TrackingConfig::default());
        let mut background = BackgroundModel::new(BackgroundConfig::default());
        for i in 0..300 {
            let t = i as f64 * 0.5;
            let image = if t >= 30.0 { &some } else { &empty };
            let fg = background.update(image, at(t), &[]);
            let view =
                FrameView { camera: "station", time: at(t), image, found: &[], scene: &scene, foreground: Some(&fg) };
            assert!(rule.judge(&view, None).is_empty(), "at {t} s");
        }
    }
}
