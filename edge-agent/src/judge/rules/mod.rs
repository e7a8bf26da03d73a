//! The rules, one file each, one event kind each: `object`, `wrong_bin`, `litter`, `overflow`,
//! `road_debris`, `truck_exit`. A rule looks at one camera's frame ([`FrameView`]: detections,
//! zones, static foreground) and says what it sees ([`Sighting`]s of tracks or zones); its
//! [`Lifecycles`] turn sightings into starts, updates and ends. Rules are pure apart from the
//! second-stage classifiers they may run on crops.

pub mod litter;
pub mod object;
pub mod overflow;
pub mod road_debris;
pub mod truck_exit;
pub mod unregistered_truck;
pub mod wrong_bin;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use image::RgbImage;

use crate::infer::config::{BackendKind, ModelConfig};
use crate::infer::control::ModelRuns;
pub use crate::infer::{crop_rect, crop_with_margin};
use crate::infer::{BoundingBox, Classification, Detection, Findings, InferError, Model, ModelId};
use crate::judge::background::StaticForeground;
use crate::judge::config::TrackingConfig;
use crate::judge::lifecycle::{LifecycleSettings, Lifecycles, Sighting, Transition};
use crate::judge::tracker::{Candidate, TrackIds, Tracker, TrackerSettings};
use crate::judge::zones::Scene;

/// A detection and the model that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub model: ModelId,
    pub detection: Detection,
}

/// Everything a rule may look at in one frame of one camera.
pub struct FrameView<'a> {
    pub camera: &'a str,
    pub time: DateTime<Utc>,
    /// The frame as captured (crops for classifiers come from here, never from stored images).
    pub image: &'a RgbImage,
    /// Detections outside `ignore` zones.
    pub found: &'a [Found],
    pub scene: &'a Scene,
    /// Static foreground, when the camera has zones that need the background model.
    pub foreground: Option<&'a StaticForeground>,
}

impl FrameView<'_> {
    pub fn width(&self) -> u32 {
        self.image.width()
    }

    pub fn height(&self) -> u32 {
        self.image.height()
    }
}

/// Detections of one frame outside `ignore` zones, with their models; `skip_model` (the debris
/// model) is left out, as only its own rule reads it.
pub fn detections_of(
    results: &[crate::infer::ModelResult],
    scene: &Scene,
    width: u32,
    height: u32,
    skip_model: Option<&str>,
) -> Vec<Found> {
    let mut found = Vec::new();
    for result in results {
        if skip_model == Some(result.model.name.as_str()) {
            continue;
        }
        if let Findings::Detect { detections } = &result.findings {
            for d in detections {
                if !scene.ignores(&d.bbox, width, height) {
                    found.push(Found { model: result.model.clone(), detection: d.clone() });
                }
            }
        }
    }
    found
}

/// What a rule reports about its subject; becomes the event's fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub label: String,
    pub bbox: BoundingBox,
    pub track_id: Option<u64>,
    /// The model whose detection this is; None for the background model.
    pub model: Option<ModelId>,
    /// The second-stage classifier that gave the category or the cover state.
    pub classifier: Option<ModelId>,
    pub category: Option<String>,
    /// For `wrong_bin`: the bin's category.
    pub bin_category: Option<String>,
    pub area_px: Option<f64>,
    pub area_m2: Option<f64>,
    /// For `overflow`: the share of the bin zone covered.
    pub coverage: Option<f32>,
    /// For `truck_exit`: is the load uncovered? None when no cover classifier is configured or it
    /// was not sure.
    pub uncovered: Option<bool>,
    /// For `truck_exit`: the plate its track's reads agree on, once they do.
    pub plate: Option<crate::wire::EventPlate>,
    /// The picture of that plate's surest read, for the evidence.
    pub plate_picture: Option<crate::infer::plates::stage::PlatePicture>,
}

impl Finding {
    /// A finding with only a label and a box; rules fill in what they know.
    pub fn new(label: impl Into<String>, bbox: BoundingBox) -> Self {
        Self {
            label: label.into(),
            bbox,
            track_id: None,
            model: None,
            classifier: None,
            category: None,
            bin_category: None,
            area_px: None,
            area_m2: None,
            coverage: None,
            uncovered: None,
            plate: None,
            plate_picture: None,
        }
    }
}

/// A tracker, the lifecycles of its tracks, and how sure a detection must be to start a track.
pub struct TrackedRule {
    pub tracker: Tracker,
    pub lifecycles: Lifecycles<Finding>,
    pub min_score: f32,
}

impl TrackedRule {
    pub fn new(tracking: &TrackingConfig, min_score: f32, min_duration_secs: f64, end_after_secs: f64) -> Self {
        let mut tracker_settings = TrackerSettings::from(tracking);
        tracker_settings.max_lost_secs = end_after_secs;
        Self {
            tracker: Tracker::new(tracker_settings).with_one_object_labels(&tracking.vehicle_labels),
            lifecycles: Lifecycles::new(LifecycleSettings {
                min_score,
                min_duration_secs,
                end_after_secs,
                score_window: tracking.score_window,
                update_interval_secs: tracking.update_interval_secs,
                remember_finished_secs: tracking.stationary_memory_secs,
            }),
            min_score,
        }
    }

    /// Tracks the candidates; returns (candidate index, track id) for those on a track.
    pub fn track(&mut self, now: DateTime<Utc>, candidates: &[Candidate], ids: &mut TrackIds) -> Vec<(usize, u64)> {
        self.tracker
            .update(now, candidates, self.min_score, ids)
            .into_iter()
            .enumerate()
            .filter_map(|(i, id)| id.map(|id| (i, id)))
            .collect()
    }

    /// The label of a track: the one with the most score over its sightings.
    pub fn label_of(&self, track_id: u64) -> Option<&str> {
        self.tracker.track(track_id).map(|t| t.label.as_str())
    }

    pub fn observe(&mut self, now: DateTime<Utc>, sightings: Vec<Sighting<Finding>>) -> Vec<Transition<Finding>> {
        self.lifecycles.observe(now, sightings)
    }
}

/// Settings for the lifecycles of zone subjects (a drop area, a bin), which have no tracker.
pub fn zone_lifecycles(
    tracking: &TrackingConfig,
    min_score: f32,
    after_secs: f64,
    clear_secs: f64,
) -> Lifecycles<Finding> {
    Lifecycles::new(LifecycleSettings {
        min_score,
        min_duration_secs: after_secs,
        end_after_secs: clear_secs,
        score_window: tracking.score_window,
        update_interval_secs: tracking.update_interval_secs,
        // A zone that was cleared and fills again is a new event.
        remember_finished_secs: 0.0,
    })
}

pub fn track_key(id: u64) -> String {
    format!("track:{id}")
}

pub fn zone_key(id: &str) -> String {
    format!("zone:{id}")
}

pub fn centre(b: &BoundingBox) -> (f32, f32) {
    ((b.x1 + b.x2) / 2.0, (b.y1 + b.y2) / 2.0)
}

/// The smallest box holding all of `boxes`.
pub fn union(boxes: impl IntoIterator<Item = BoundingBox>) -> Option<BoundingBox> {
    boxes.into_iter().reduce(|a, b| BoundingBox {
        x1: a.x1.min(b.x1),
        y1: a.y1.min(b.y1),
        x2: a.x2.max(b.x2),
        y2: a.y2.max(b.y2),
    })
}

/// A classifier run on crops (the taxonomy's item classifier, the truck cover classifier).
pub struct SecondStage {
    model: Model,
    /// Where its runs are counted (a newly deployed head's probation reads them); None: nowhere.
    runs: Option<Arc<ModelRuns>>,
}

/// Crops grow by this share on each side: classifiers were trained on objects with some context.
const CROP_MARGIN: f32 = 0.1;

impl SecondStage {
    pub fn load(manifest: &std::path::Path, backend: BackendKind) -> Result<Self, InferError> {
        let model = Model::load(
            &ModelConfig { manifest: manifest.to_owned(), score_threshold: None, class_thresholds: Default::default() },
            backend,
        )?;
        Ok(Self { model, runs: None })
    }

    pub fn id(&self) -> &ModelId {
        self.model.id()
    }

    /// The model itself, e.g. for a self-test before it is deployed.
    pub fn model_mut(&mut self) -> &mut Model {
        &mut self.model
    }

    /// Counts each run (ok or failed) under the model's name in `runs` from now on.
    pub fn count_runs_in(&mut self, runs: Arc<ModelRuns>) {
        self.runs = Some(runs);
    }

    /// The classifier's best class for the box's crop; None (logged) when it fails.
    pub fn top(&mut self, image: &RgbImage, b: &BoundingBox) -> Option<Classification> {
        let crop = crop_with_margin(image, b, CROP_MARGIN)?;
        let outcome = match self.model.infer(&crop) {
            Ok(result) => match result.findings {
                Findings::Classify { classes } => Ok(classes.into_iter().next()),
                Findings::Detect { .. } => Err("a second-stage model must be a classifier".to_string()),
            },
            Err(e) => Err(format!("second-stage classifier failed: {e}")),
        };
        if let Some(runs) = &self.runs {
            runs.record(&self.model.id().name, outcome.is_ok());
        }
        outcome.unwrap_or_else(|why| {
            tracing::error!(model = %self.id().name, "{why}");
            None
        })
    }
}
