//! The judge stage: decides which findings are events worth reporting, keeps the evidence, and
//! hides what must not be seen. Per camera: zones ([`zones`]), a background model for static
//! foreground ([`background`]), and the rules ([`rules`]) with their trackers ([`tracker`]) and
//! event lifecycles ([`lifecycle`]). Per device: the taxonomy ([`taxonomy`]), evidence pictures in a
//! signed hash chain ([`evidence`], [`chain`], [`signing`]), privacy masks ([`privacy`]), daily
//! statistics ([`stats`]) and on-site actions ([`actions`]). The logic is pure and driven by frame
//! times; files are written only by the evidence store.

pub mod actions;
pub mod background;
pub mod chain;
pub mod config;
pub mod draw;
pub mod evidence;
#[cfg(test)]
pub mod fixtures;
pub mod lifecycle;
pub mod privacy;
pub mod rules;
pub mod signing;
pub mod stats;
pub mod taxonomy;
pub mod tracker;
pub mod zones;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Offset, Utc};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{BackendKind, Config};
use crate::infer::{BoundingBox, Findings, InferError, InferredFrame, ModelId, ModelResult};
use crate::source::Frame;
use background::BackgroundModel;
use chain::EvidenceFile;
use config::{BackgroundConfig, PrivacyConfig, RulesConfig, TrackingConfig, ZoneRole};
use evidence::{EvidenceError, EvidenceStore, Picture};
use lifecycle::{LifecycleState, Transition, UpdateReason};
use rules::litter::LitterRule;
use rules::object::ObjectRule;
use rules::overflow::OverflowRule;
use rules::road_debris::RoadDebrisRule;
use rules::truck_exit::{CoverClassifier, TruckExitRule};
use rules::wrong_bin::{Categoriser, WrongBinRule};
use rules::{detections_of, Finding, FrameView, SecondStage};
use stats::{DailyStats, StatsBook};
use taxonomy::{Taxonomy, TaxonomyError};
use tracker::{seconds_between, TrackIds};
use zones::{Scene, Zone};

/// Version of the event JSON; bump when a field changes meaning or goes away. 2: events have a
/// lifecycle (`state`, `revision`: one incident sends start, updates and end under one `event_id`).
pub const EVENT_SCHEMA_VERSION: u32 = 2;

/// One message about an event: the message from judge to report, and the JSON the platform
/// receives. `event_id` names the incident; (`event_id`, `revision`) names the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub schema_version: u32,
    /// UUID v7: unique, and sorts by creation time; the same for every message of one incident.
    pub event_id: Uuid,
    /// 0 for `start`, one more for each following message of the same event.
    pub revision: u32,
    pub state: LifecycleState,
    /// Why an `update` was sent.
    pub reason: Option<UpdateReason>,
    pub device: String,
    pub station_id: String,
    pub grid_cell: Option<String>,
    pub camera: String,
    pub zone: Option<String>,
    /// RFC 3339 capture time of the frame this message was decided on.
    pub time: DateTime<Utc>,
    /// When the subject was first seen.
    pub start_time: DateTime<Utc>,
    /// When it was last seen; only on `end`.
    pub end_time: Option<DateTime<Utc>>,
    /// From `start_time` to `end_time` (on `end`: the time to clear) or to `time`.
    pub duration_secs: f64,
    pub kind: EventKind,
    pub label: String,
    /// The item's category (taxonomy), or the bin's for `overflow`.
    pub category: Option<String>,
    /// `wrong_bin`: the category of the bin the item is in.
    pub bin_category: Option<String>,
    /// Median score over the recent sightings (`overflow`: coverage; background model: contrast).
    pub score: f32,
    /// In frame pixels.
    #[serde(rename = "box")]
    pub bbox: EventBox,
    pub frame_width: u32,
    pub frame_height: u32,
    pub track_id: Option<u64>,
    /// The model whose detection this is; null when the background model found it.
    pub model: Option<ModelId>,
    /// The second-stage classifier (item category, truck cover), if one was used.
    pub classifier: Option<ModelId>,
    pub area_px: Option<f64>,
    pub area_m2: Option<f64>,
    /// With the camera's ground homography: where the subject stands (the middle of its box's
    /// bottom edge) on the ground plane, in metres; distances between events follow from it.
    #[serde(default)]
    pub ground_position_m: Option<[f64; 2]>,
    /// With the ground homography: the width of the box's bottom edge on the ground, in metres.
    #[serde(default)]
    pub ground_width_m: Option<f64>,
    pub coverage: Option<f32>,
    /// `truck_exit`: true uncovered, false covered, null unknown (no or unsure classifier).
    pub uncovered: Option<bool>,
    /// sha256 of the JPEG published on `snapshots/{event_id}` with this message.
    pub snapshot_sha256: Option<String>,
    /// Where the evidence of this message is kept in the device's chain.
    pub evidence: Option<EvidenceRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceRef {
    /// Sequence number of the chain record holding this message.
    pub chain_seq: u64,
    pub files: Vec<EvidenceFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The plain rule: a detection of a configured label.
    Object,
    WrongBin,
    Litter,
    Overflow,
    RoadDebris,
    TruckExit,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Object => "object",
            EventKind::WrongBin => "wrong_bin",
            EventKind::Litter => "litter",
            EventKind::Overflow => "overflow",
            EventKind::RoadDebris => "road_debris",
            EventKind::TruckExit => "truck_exit",
        }
    }
}

/// A box rounded to whole pixels for the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBox {
    pub x1: i32,
    pub y1: i32,
    pub x2: i32,
    pub y2: i32,
}

impl From<BoundingBox> for EventBox {
    fn from(b: BoundingBox) -> Self {
        Self { x1: b.x1.round() as i32, y1: b.y1.round() as i32, x2: b.x2.round() as i32, y2: b.y2.round() as i32 }
    }
}

impl From<EventBox> for BoundingBox {
    fn from(b: EventBox) -> Self {
        Self { x1: b.x1 as f32, y1: b.y1 as f32, x2: b.x2 as f32, y2: b.y2 as f32 }
    }
}

/// The evidence picture of an event message, for `snapshots/{event_id}`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub event_id: Uuid,
    pub jpeg: Arc<Vec<u8>>,
}

/// A judged frame: the message from judge to report.
#[derive(Debug, Clone)]
pub struct Judgement {
    /// The frame with privacy applied (people blurred, privacy zones black): safe to show or send.
    pub frame: Frame,
    pub results: Vec<ModelResult>,
    pub events: Vec<Event>,
    /// One per event message that has a picture.
    pub snapshots: Vec<Snapshot>,
    /// The camera's zones, for drawing.
    pub zones: Vec<Zone>,
    /// Today's statistics, when this frame changed them.
    pub stats_today: Option<DailyStats>,
    /// Statistics to publish as MQTT `stats` messages.
    pub stats_to_publish: Vec<DailyStats>,
}

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error(transparent)]
    Taxonomy(#[from] TaxonomyError),
    #[error("`{key}`: {source}")]
    Model { key: &'static str, source: InferError },
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
    #[error("`{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
}

/// A camera's rules and their state.
struct CameraJudge {
    ids: TrackIds,
    background: Option<BackgroundModel>,
    object: ObjectRule,
    wrong_bin: WrongBinRule,
    litter: LitterRule,
    overflow: OverflowRule,
    road_debris: RoadDebrisRule,
    truck_exit: TruckExitRule,
}

impl CameraJudge {
    fn new(rules: &RulesConfig, tracking: &TrackingConfig, background: &BackgroundConfig, scene: &Scene) -> Self {
        let litter = LitterRule::new(&rules.litter, tracking);
        let overflow = OverflowRule::new(&rules.overflow, tracking);
        let road_debris = RoadDebrisRule::new(&rules.road_debris, tracking);
        let needs_background =
            litter.needs_background(scene) || overflow.needs_background(scene) || road_debris.needs_background(scene);
        Self {
            ids: TrackIds::default(),
            background: needs_background.then(|| BackgroundModel::new(background.clone())),
            object: ObjectRule::new(&rules.object, tracking),
            wrong_bin: WrongBinRule::new(&rules.wrong_bin, tracking),
            litter,
            overflow,
            road_debris,
            truck_exit: TruckExitRule::new(&rules.truck_exit, tracking),
        }
    }
}

pub struct Judge {
    device: String,
    station_id: String,
    grid_cell: Option<String>,
    rules: RulesConfig,
    tracking: TrackingConfig,
    background: BackgroundConfig,
    privacy: PrivacyConfig,
    jpeg_quality: u8,
    classifier_min_score: f32,
    taxonomy: Taxonomy,
    scenes: HashMap<String, Scene>,
    default_scene: Scene,
    cameras: HashMap<String, CameraJudge>,
    item_classifier: Option<SecondStage>,
    cover_classifier: Option<CoverClassifier>,
    evidence: Option<EvidenceStore>,
    stats: StatsBook,
    stats_file: Option<PathBuf>,
    actions: actions::ActionLimiter,
    last_retention: Option<DateTime<Utc>>,
}

/// Retention also runs this often when no event brings new evidence, so old pictures still go.
const RETENTION_INTERVAL_SECS: f64 = 600.0;

/// The evidence crop is the event's box grown by this share of its size on each side (the page's
/// labelling finds the box inside the crop again from it).
pub const EVIDENCE_CROP_MARGIN: f32 = 0.15;

/// Where today's statistics are kept across restarts.
const STATS_FILE: &str = "stats-today.json";

impl Judge {
    /// Builds the judge from the configuration: loads the taxonomy, the second-stage classifiers the
    /// zones need, the evidence store (creating the device key on first start) and today's
    /// statistics. `model_names` are the infer stage's models.
    pub fn open(config: &Config, model_names: &[String]) -> Result<Self, JudgeError> {
        let rules = config.rules.clone();
        if let Some(model) = &rules.road_debris.model {
            if !model_names.contains(model) {
                return Err(JudgeError::Invalid {
                    key: "rules.road_debris.model",
                    problem: format!(
                        "is {model:?}; expected the name of a configured model: {}",
                        model_names.join(", ")
                    ),
                });
            }
        }
        let taxonomy = Taxonomy::load(&config.taxonomy)?;
        let blur_default = config.privacy.blur_people;
        let scenes: HashMap<String, Scene> = config
            .scenes
            .iter()
            .map(|(camera, scene)| (camera.clone(), Scene::from_config(camera, scene, blur_default)))
            .collect();
        let backend: BackendKind = config.inference.backend;
        let wants_item_classifier = rules.wrong_bin.enabled
            && config.taxonomy.classify_crops
            && scenes.values().any(|s| s.has_role(ZoneRole::Bin));
        let item_classifier = if wants_item_classifier {
            Some(
                SecondStage::load(&config.taxonomy.classifier, backend)
                    .map_err(|source| JudgeError::Model { key: "taxonomy.classifier", source })?,
            )
        } else {
            None
        };
        let cover_classifier = match (&rules.truck_exit.cover_classifier, rules.truck_exit.enabled) {
            (Some(cover), true) => Some(CoverClassifier {
                stage: SecondStage::load(&cover.manifest, backend).map_err(|source| JudgeError::Model {
                    key: "rules.truck_exit.cover_classifier.manifest",
                    source,
                })?,
                config: cover.clone(),
            }),
            _ => None,
        };
        let evidence = if config.evidence.enabled {
            Some(EvidenceStore::open(&config.state_dir, config.evidence.clone(), &config.device_id)?)
        } else {
            None
        };
        let offset = match &config.stats.utc_offset {
            Some(text) => config::parse_utc_offset(text)
                .map_err(|problem| JudgeError::Invalid { key: "stats.utc_offset", problem })?,
            None => chrono::Local::now().offset().fix(),
        };
        let station_id = config.site.station_id.clone().unwrap_or_else(|| config.device_id.clone());
        let mut stats = StatsBook::new(
            &station_id,
            config.site.grid_cell.as_deref(),
            &config.device_id,
            offset,
            config.stats.publish_interval_secs,
            Utc::now(),
        );
        let stats_file = config.state_dir.join(STATS_FILE);
        if let Some(saved) = std::fs::read(&stats_file).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
            stats.resume(saved);
        }
        Ok(Self {
            device: config.device_id.clone(),
            station_id,
            grid_cell: config.site.grid_cell.clone(),
            rules,
            tracking: config.tracking.clone(),
            background: config.background.clone(),
            privacy: config.privacy.clone(),
            jpeg_quality: config.evidence.jpeg_quality,
            classifier_min_score: config.taxonomy.classifier_min_score,
            taxonomy,
            default_scene: Scene { blur_people: blur_default, ..Scene::default() },
            scenes,
            cameras: HashMap::new(),
            item_classifier,
            cover_classifier,
            evidence,
            stats,
            stats_file: Some(stats_file),
            actions: actions::ActionLimiter::default(),
            last_retention: None,
        })
    }

    /// Takes new rules, zones, tracking, background and privacy settings from `set`/`reload`
    /// between two frames. The evidence store, device key, statistics and loaded classifiers stay;
    /// each camera's rule state starts afresh, so an incident open under the old rules is reported
    /// again under the new ones (with a new `event_id`).
    pub fn reconfigure(&mut self, config: &Config) -> Result<(), JudgeError> {
        let taxonomy = Taxonomy::load(&config.taxonomy)?;
        let blur_default = config.privacy.blur_people;
        let scenes: HashMap<String, Scene> = config
            .scenes
            .iter()
            .map(|(camera, scene)| (camera.clone(), Scene::from_config(camera, scene, blur_default)))
            .collect();
        // The first bin zone drawn on a running box needs the crop classifier the start skipped.
        let wants_item_classifier = config.rules.wrong_bin.enabled
            && config.taxonomy.classify_crops
            && scenes.values().any(|s| s.has_role(ZoneRole::Bin));
        if wants_item_classifier && self.item_classifier.is_none() {
            self.item_classifier = Some(
                SecondStage::load(&config.taxonomy.classifier, config.inference.backend)
                    .map_err(|source| JudgeError::Model { key: "taxonomy.classifier", source })?,
            );
        }
        self.scenes = scenes;
        self.default_scene = Scene { blur_people: blur_default, ..Scene::default() };
        self.taxonomy = taxonomy;
        self.rules = config.rules.clone();
        self.tracking = config.tracking.clone();
        self.background = config.background.clone();
        self.privacy = config.privacy.clone();
        self.classifier_min_score = config.taxonomy.classifier_min_score;
        self.cameras.clear();
        Ok(())
    }

    pub fn judge(&mut self, inferred: InferredFrame) -> Judgement {
        let InferredFrame { frame, results } = inferred;
        let now = frame.captured_at;
        let camera = frame.camera.to_string();
        let scene = self.scenes.get(&camera).unwrap_or(&self.default_scene);
        let (width, height) = frame.image.dimensions();
        let debris_model = self.rules.road_debris.model.as_deref();
        let found = detections_of(&results, scene, width, height, debris_model);
        let debris_found = match debris_model {
            Some(name) => {
                let own: Vec<ModelResult> = results.iter().filter(|r| r.model.name == name).cloned().collect();
                detections_of(&own, scene, width, height, None)
            }
            None => Vec::new(),
        };
        // Privacy and exclusion use every detection, also those in `ignore` zones.
        let all_detections = results.iter().flat_map(|r| match &r.findings {
            Findings::Detect { detections } => detections.as_slice(),
            Findings::Classify { .. } => &[],
        });
        let mut people = Vec::new();
        let mut not_foreground = Vec::new();
        for d in all_detections {
            if self.privacy.person_labels.contains(&d.label) {
                people.push(d.bbox);
            }
            if self.background.exclude_labels.contains(&d.label) {
                not_foreground.push(d.bbox);
            }
        }
        let (rules, tracking, background) = (&self.rules, &self.tracking, &self.background);
        let cam =
            self.cameras.entry(camera.clone()).or_insert_with(|| CameraJudge::new(rules, tracking, background, scene));
        let foreground = cam.background.as_mut().map(|model| model.update(&frame.image, now, &not_foreground));
        let view = FrameView {
            camera: &camera,
            time: now,
            image: &frame.image,
            found: &found,
            scene,
            foreground: foreground.as_ref(),
        };
        let mut transitions: Vec<(EventKind, Transition<Finding>)> = Vec::new();
        let tag = |kind: EventKind| move |t: Transition<Finding>| (kind, t);
        transitions.extend(cam.object.judge(&view, &mut cam.ids).into_iter().map(tag(EventKind::Object)));
        let mut categoriser = Categoriser {
            taxonomy: &self.taxonomy,
            classifier: self.item_classifier.as_mut(),
            min_classifier_score: self.classifier_min_score,
        };
        transitions.extend(
            cam.wrong_bin.judge(&view, &mut cam.ids, &mut categoriser).into_iter().map(tag(EventKind::WrongBin)),
        );
        transitions.extend(cam.litter.judge(&view, &self.taxonomy).into_iter().map(tag(EventKind::Litter)));
        transitions.extend(cam.overflow.judge(&view).into_iter().map(tag(EventKind::Overflow)));
        transitions.extend(
            cam.road_debris.judge(&view, &debris_found, &mut cam.ids).into_iter().map(tag(EventKind::RoadDebris)),
        );
        transitions.extend(
            cam.truck_exit
                .judge(&view, &mut cam.ids, self.cover_classifier.as_mut())
                .into_iter()
                .map(tag(EventKind::TruckExit)),
        );

        let mut private: RgbImage = (*frame.image).clone();
        let privacy_zones: Vec<&Zone> = scene.zones_with_role(ZoneRole::Privacy).collect();
        privacy::apply(&mut private, &people, scene.blur_people, &privacy_zones);
        let zones = scene.zones.clone();

        let mut events = Vec::new();
        let mut snapshots = Vec::new();
        let mut stats_to_publish = Vec::new();
        for (kind, transition) in transitions {
            let mut event = self.event_from(kind, &camera, now, (width, height), &transition);
            if transition.snapshot {
                let (frame_jpeg, crop_jpeg) = self.pictures(&private, &zones, &results, &event);
                if let Some(jpeg) = &frame_jpeg {
                    event.snapshot_sha256 = Some(chain::sha256_hex(jpeg));
                }
                self.keep_evidence(&mut event, now, frame_jpeg.as_deref(), crop_jpeg.as_deref());
                if let Some(jpeg) = frame_jpeg {
                    snapshots.push(Snapshot { event_id: event.event_id, jpeg: Arc::new(jpeg) });
                }
            } else {
                self.keep_evidence(&mut event, now, None, None);
            }
            stats_to_publish.extend(self.stats.record(&event));
            if event.state == LifecycleState::Start {
                self.run_action(&event, now);
            }
            events.push(event);
        }
        let stats_today = (!events.is_empty()).then(|| self.stats.today().clone());
        if stats_today.is_some() {
            self.save_stats();
        }
        stats_to_publish.extend(self.stats.due(now));
        self.retention_if_due(now);
        Judgement {
            frame: Frame { image: Arc::new(private), ..frame },
            results,
            events,
            snapshots,
            zones,
            stats_today,
            stats_to_publish,
        }
    }

    fn event_from(
        &self,
        kind: EventKind,
        camera: &str,
        now: DateTime<Utc>,
        (width, height): (u32, u32),
        t: &Transition<Finding>,
    ) -> Event {
        let ended = t.state == LifecycleState::End;
        let until = if ended { t.last_seen } else { now };
        let d = &t.details;
        let scene = self.scenes.get(camera).unwrap_or(&self.default_scene);
        let footprint = scene.ground.and_then(|ground| ground.footprint(&d.bbox));
        Event {
            schema_version: EVENT_SCHEMA_VERSION,
            event_id: t.event_id,
            revision: t.revision,
            state: t.state,
            reason: t.reason,
            device: self.device.clone(),
            station_id: self.station_id.clone(),
            grid_cell: self.grid_cell.clone(),
            camera: camera.to_string(),
            zone: t.zone.clone(),
            time: now,
            start_time: t.first_seen,
            end_time: ended.then_some(t.last_seen),
            duration_secs: seconds_between(t.first_seen, until),
            kind,
            label: d.label.clone(),
            category: d.category.clone(),
            bin_category: d.bin_category.clone(),
            score: t.score,
            bbox: d.bbox.into(),
            frame_width: width,
            frame_height: height,
            track_id: d.track_id,
            model: d.model.clone(),
            classifier: d.classifier.clone(),
            area_px: d.area_px,
            area_m2: d.area_m2,
            ground_position_m: footprint.map(|f| f.position_m),
            ground_width_m: footprint.map(|f| f.width_m),
            coverage: d.coverage,
            uncovered: d.uncovered,
            snapshot_sha256: None,
            evidence: None,
        }
    }

    /// The evidence frame (zones, every detection, the event's box and caption) and the crop, as
    /// JPEG, from the privacy-masked image. An `end` shows the scene without the subject: no crop.
    fn pictures(
        &self,
        private: &RgbImage,
        zones: &[Zone],
        results: &[ModelResult],
        event: &Event,
    ) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let mut canvas = private.clone();
        draw::draw_zones(&mut canvas, zones);
        let thickness = (canvas.width().max(canvas.height()) / 400).max(1);
        for result in results {
            if let Findings::Detect { detections } = &result.findings {
                for d in detections {
                    draw::draw_rectangle(&mut canvas, d.bbox, draw::DETECTION_COLOUR, thickness);
                }
            }
        }
        let bbox = BoundingBox::from(event.bbox);
        draw::draw_labelled_box(&mut canvas, bbox, &self.caption(event), draw::EVENT_COLOUR, thickness * 3);
        let encode = |image: &RgbImage| match draw::encode_jpeg(image, self.jpeg_quality) {
            Ok(jpeg) => Some(jpeg),
            Err(e) => {
                tracing::error!(event_id = %event.event_id, "cannot encode evidence JPEG: {e}");
                None
            }
        };
        let crop = if event.state == LifecycleState::End {
            None
        } else {
            rules::crop_with_margin(private, &bbox, EVIDENCE_CROP_MARGIN).and_then(|crop| encode(&crop))
        };
        (encode(&canvas), crop)
    }

    /// One line on the evidence picture: kind, label, category and score (English names: the
    /// embedded font has no Chinese glyphs).
    fn caption(&self, event: &Event) -> String {
        let mut caption = format!("{} {}", event.kind.as_str(), event.label);
        if let Some(category) = &event.category {
            caption.push_str(&format!(" [{}]", self.taxonomy.display(category).en));
        }
        if let Some(bin) = &event.bin_category {
            caption.push_str(&format!(" in {} bin", self.taxonomy.display(bin).en));
        }
        if let Some(uncovered) = event.uncovered {
            caption.push_str(if uncovered { " UNCOVERED" } else { " covered" });
        }
        match event.state {
            LifecycleState::End => caption.push_str(&format!(" cleared after {:.0} s", event.duration_secs)),
            _ => caption.push_str(&format!(" {:.2}", event.score)),
        }
        caption
    }

    fn keep_evidence(&mut self, event: &mut Event, now: DateTime<Utc>, frame: Option<&[u8]>, crop: Option<&[u8]>) {
        let Some(store) = self.evidence.as_mut() else { return };
        let mut pictures = Vec::new();
        if let Some(jpeg) = frame {
            pictures.push(Picture { role: "frame", jpeg });
        }
        if let Some(jpeg) = crop {
            pictures.push(Picture { role: "crop", jpeg });
        }
        let name = format!("{}-r{}", event.event_id, event.revision);
        let recorded = store.keep(now, &name, &pictures, |files, seq| {
            event.evidence = Some(EvidenceRef { chain_seq: seq, files: files.to_vec() });
            serde_json::to_value(&*event).unwrap_or(serde_json::Value::Null)
        });
        if let Err(e) = recorded {
            // The event still goes out; only its evidence is missing.
            tracing::error!(event_id = %event.event_id, "cannot keep evidence: {e}");
            event.evidence = None;
        }
    }

    fn retention_if_due(&mut self, now: DateTime<Utc>) {
        let Some(store) = self.evidence.as_mut() else { return };
        if self.last_retention.is_some_and(|last| seconds_between(last, now) < RETENTION_INTERVAL_SECS) {
            return;
        }
        self.last_retention = Some(now);
        if let Err(e) = store.enforce_retention(now, 0) {
            tracing::error!("evidence retention failed: {e}");
        }
    }

    fn run_action(&mut self, event: &Event, now: DateTime<Utc>) {
        let action = match event.kind {
            EventKind::Object => &self.rules.object.action,
            EventKind::WrongBin => &self.rules.wrong_bin.action,
            EventKind::Litter => &self.rules.litter.action,
            EventKind::Overflow => &self.rules.overflow.action,
            EventKind::RoadDebris => &self.rules.road_debris.action,
            EventKind::TruckExit => &self.rules.truck_exit.action,
        };
        if let Some(action) = action {
            if let Some(command) = self.actions.command_for(action, event, now) {
                tracing::info!(event_id = %event.event_id, "on-site action: {}", command.join(" "));
                actions::run(&command, event);
            }
        }
    }

    fn save_stats(&self) {
        let Some(path) = &self.stats_file else { return };
        let saved = serde_json::to_vec(self.stats.today()).map_err(|e| e.to_string()).and_then(|json| {
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, path)).map_err(|e| e.to_string())
        });
        if let Err(e) = saved {
            tracing::warn!(path = %path.display(), "cannot save today's statistics: {e}");
        }
    }

    /// The evidence folder, when evidence is kept.
    pub fn evidence_dir(&self) -> Option<&std::path::Path> {
        self.evidence.as_ref().map(|e| e.dir())
    }
}

/// The judge stage's loop: judges each inferred frame (classifiers and disk writes are blocking
/// work, so off the async workers) and passes the judgement to report.
pub async fn run_judge(
    mut judge: Judge,
    mut input: tokio::sync::mpsc::Receiver<InferredFrame>,
    output: tokio::sync::mpsc::Sender<Judgement>,
    mut settings: tokio::sync::watch::Receiver<std::sync::Arc<Config>>,
    heartbeat: std::sync::Arc<crate::liveness::Heartbeat>,
) {
    heartbeat.pause();
    settings.mark_unchanged();
    let mut settings_open = true;
    loop {
        let inferred = tokio::select! {
            inferred = input.recv() => match inferred {
                Some(inferred) => inferred,
                None => break,
            },
            changed = settings.changed(), if settings_open => {
                if changed.is_err() {
                    settings_open = false;
                    continue;
                }
                let config = settings.borrow_and_update().clone();
                // The config store validated the whole config already; a refusal here (a taxonomy
                // file gone meanwhile) keeps the old settings running. Loading a classifier blocks.
                let reconfigured = tokio::task::spawn_blocking(move || {
                    let outcome = judge.reconfigure(&config);
                    (judge, outcome)
                })
                .await;
                match reconfigured {
                    Ok((returned, outcome)) => {
                        judge = returned;
                        match outcome {
                            Ok(()) => tracing::info!("rules or zones changed; judge reconfigured"),
                            Err(e) => tracing::error!("new judge settings refused, old ones kept: {e}"),
                        }
                    }
                    Err(e) => {
                        tracing::error!("the judge stage failed while reconfiguring and stops: {e}");
                        return;
                    }
                }
                continue;
            }
        };
        heartbeat.beat();
        let judged = tokio::task::spawn_blocking(move || {
            let judgement = judge.judge(inferred);
            (judge, judgement)
        })
        .await;
        let judgement = match judged {
            Ok((returned, judgement)) => {
                judge = returned;
                judgement
            }
            Err(e) => {
                tracing::error!("the judge stage failed and stops: {e}");
                return;
            }
        };
        if output.send(judgement).await.is_err() {
            return;
        }
        heartbeat.pause();
    }
    heartbeat.retire();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::fixtures::{cup_on_pavement, detector_result, inferred, paste, sample};
    use std::path::Path;

    fn config(state_dir: &Path, extra: &str) -> Config {
        let mut text = format!("device_id = \"box-1\"\nstate_dir = {:?}\n", state_dir.display().to_string());
        for camera in ["demo", "station", "yard", "other"] {
            text.push_str(&format!(
                "[[cameras]]\nid = \"{camera}\"\nsource = {{ kind = \"replay\", path = \"frames\" }}\n"
            ));
        }
        text.push_str(extra);
        let config = Config::from_toml_str(&text, Path::new("test.toml")).unwrap();
        config.validate(Path::new("test.toml")).unwrap();
        config
    }

    fn names() -> Vec<String> {
        vec!["nanodet".into(), "efficientnet_lite0".into()]
    }

    /// Sum of differences between horizontal neighbours inside a box: how much detail it shows.
    fn detail(image: &RgbImage, b: [u32; 4]) -> u64 {
        let mut sum = 0u64;
        for y in b[1]..b[3] {
            for x in b[0]..b[2] - 1 {
                let (p, q) = (image.get_pixel(x, y), image.get_pixel(x + 1, y));
                sum += p.0.iter().zip(q.0.iter()).map(|(a, b)| u64::from(a.abs_diff(*b))).sum::<u64>();
            }
        }
        sum
    }

    #[test]
    fn the_embedded_defaults_report_the_truck_in_dog_jpg_with_evidence_in_a_good_chain() {
        let dir = tempfile::tempdir().unwrap();
        let mut judge = Judge::open(&config(dir.path(), ""), &names()).unwrap();
        let dog = Arc::new(sample("dog.jpg"));
        let results = vec![detector_result(&dog)];
        let mut events = Vec::new();
        let mut snapshots = Vec::new();
        for i in 0..6 {
            let judgement = judge.judge(inferred("demo", &dog, &results, i as f64 * 0.5));
            events.extend(judgement.events);
            snapshots.extend(judgement.snapshots);
        }
        let truck = events.iter().find(|e| e.label == "truck").expect("a truck event");
        assert_eq!((truck.kind, truck.state, truck.revision), (EventKind::Object, LifecycleState::Start, 0));
        assert_eq!(truck.schema_version, 2);
        assert_eq!(
            (truck.device.as_str(), truck.station_id.as_str(), truck.camera.as_str()),
            ("box-1", "box-1", "demo")
        );
        assert_eq!(truck.model.as_ref().map(|m| m.name.as_str()), Some("nanodet"));
        assert!(truck.track_id.is_some());
        assert_eq!(truck.duration_secs, 1.0);
        let evidence = truck.evidence.as_ref().expect("evidence kept");
        assert_eq!(evidence.files.len(), 2, "frame and crop");
        let snapshot = snapshots.iter().find(|s| s.event_id == truck.event_id).expect("a snapshot");
        assert_eq!(truck.snapshot_sha256.as_deref(), Some(chain::sha256_hex(&snapshot.jpeg).as_str()));
        assert_eq!(evidence.files[0].sha256, chain::sha256_hex(&snapshot.jpeg), "the snapshot is the evidence frame");
        let picture = image::load_from_memory(&snapshot.jpeg).unwrap().to_rgb8();
        assert_eq!(picture.dimensions(), (768, 576));
        let report = chain::verify(judge.evidence_dir().unwrap(), None).unwrap();
        assert_eq!(report.first_broken_link, None, "{report:?}");
        assert_eq!(report.events as usize, events.len());
        // The record in the chain is the event as sent.
        let chain_text = std::fs::read_to_string(judge.evidence_dir().unwrap().join(chain::CHAIN_FILE)).unwrap();
        assert!(chain_text.contains(&truck.event_id.to_string()));
        assert!(dir.path().join(signing::KEY_FILE).is_file());
    }

    #[test]
    fn a_station_camera_reports_a_wrong_bin_with_private_pictures_stats_and_an_action() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("prompts.log");
        let extra = format!(
            r#"
[site]
station_id = "station-7"
grid_cell = "grid-3"

[stats]
publish_interval_secs = 0
utc_offset = "+08:00"

[rules.wrong_bin]
action = {{ command = ["sh", "-c", "echo {{kind}} {{zone}} >> {marker}"], min_interval_secs = 60 }}

[[scenes.station.zones]]
id = "bin-recyclable"
role = "bin"
category = "recyclable"
polygon = [[0.0, 0.6], [0.4, 0.6], [0.4, 1.0], [0.0, 1.0]]

[[scenes.station.zones]]
id = "neighbour-window"
role = "privacy"
polygon = [[0.0, 0.0], [0.2, 0.0], [0.2, 0.15], [0.0, 0.15]]
"#,
            marker = marker.display()
        );
        let mut judge = Judge::open(&config(dir.path(), &extra), &names()).unwrap();
        // The girl of person.jpg standing on the pavement at the right of the cup.
        let girl = image::imageops::crop_imm(&sample("person.jpg"), 165, 85, 112, 290).to_image();
        let frame = Arc::new(paste(&cup_on_pavement(), &girl, 620, 270));
        let results = vec![detector_result(&frame)];
        let person = results[0].findings.clone();
        let Findings::Detect { detections } = person else { unreachable!() };
        let girl_box = detections.iter().find(|d| d.label == "person").expect("the detector sees the girl").bbox;
        let girl_box = [
            girl_box.x1.max(0.0) as u32 + 5,
            girl_box.y1 as u32 + 5,
            girl_box.x2.min(767.0) as u32 - 5,
            girl_box.y2.min(575.0) as u32 - 5,
        ];

        let mut judgements = Vec::new();
        for i in 0..8 {
            judgements.push(judge.judge(inferred("station", &frame, &results, i as f64 * 0.5)));
        }
        let events: Vec<&Event> = judgements.iter().flat_map(|j| &j.events).collect();
        let wrong = events.iter().find(|e| e.kind == EventKind::WrongBin).expect("a wrong_bin event");
        assert_eq!(wrong.label, "cup");
        assert_eq!(wrong.category.as_deref(), Some("residual"));
        assert_eq!(wrong.bin_category.as_deref(), Some("recyclable"));
        assert_eq!(wrong.zone.as_deref(), Some("bin-recyclable"));
        assert_eq!(wrong.station_id, "station-7");
        assert_eq!(wrong.grid_cell.as_deref(), Some("grid-3"));
        assert_eq!(wrong.classifier.as_ref().map(|m| m.name.as_str()), Some("efficientnet_lite0"));

        // Privacy: the live frame and the evidence picture show the girl blurred and the window black.
        let live = &judgements[0].frame.image;
        assert!(detail(live, girl_box) * 3 < detail(&frame, girl_box), "live frame blurs the girl");
        assert_eq!(*live.get_pixel(120, 70), image::Rgb([0, 0, 0]));
        let judgement = judgements.iter().find(|j| j.events.iter().any(|e| e.event_id == wrong.event_id)).unwrap();
        let snapshot = judgement.snapshots.iter().find(|s| s.event_id == wrong.event_id).unwrap();
        let picture = image::load_from_memory(&snapshot.jpeg).unwrap().to_rgb8();
        // Boxes drawn across her and JPEG noise add some detail back; still far less than the photo.
        assert!(
            detail(&picture, girl_box) * 2 < detail(&frame, girl_box),
            "evidence blurs the girl: {} vs {} in {girl_box:?}",
            detail(&picture, girl_box),
            detail(&frame, girl_box)
        );
        let corner = picture.get_pixel(120, 70).0;
        assert!(corner.iter().all(|&c| c < 16), "privacy zone black in evidence: {corner:?}");
        let crop_file = &wrong.evidence.as_ref().unwrap().files[1];
        assert!(crop_file.file.ends_with("-crop.jpg"));
        let crop = image::open(judge.evidence_dir().unwrap().join(&crop_file.file)).unwrap();
        assert!(crop.width() > 100 && crop.width() < 200, "the cup's crop: {}", crop.width());

        // Statistics: today has one wrong_bin of category residual, published right away.
        let published: Vec<&DailyStats> = judgements.iter().flat_map(|j| &j.stats_to_publish).collect();
        let last = published.last().expect("stats published");
        assert_eq!(last.counts[&EventKind::WrongBin].by_category["residual"], 1);
        assert_eq!(last.station_id, "station-7");
        assert_eq!(last.utc_offset, "+08:00");

        // The on-site action ran once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(&marker).unwrap_or_default().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "wrong_bin bin-recyclable");
        assert_eq!(chain::verify(judge.evidence_dir().unwrap(), None).unwrap().first_broken_link, None);
    }

    #[test]
    fn where_the_law_allows_it_a_camera_can_show_people_unblurred() {
        let dir = tempfile::tempdir().unwrap();
        let extra = "[scenes.yard]\nblur_people = false\n[evidence]\nenabled = false\n";
        let mut judge = Judge::open(&config(dir.path(), extra), &names()).unwrap();
        let picture = Arc::new(sample("person.jpg"));
        let results = vec![detector_result(&picture)];
        let judgement = judge.judge(inferred("yard", &picture, &results, 0.0));
        assert_eq!(judgement.frame.image.as_ref(), picture.as_ref(), "nothing blurred");
        let blurred = judge.judge(inferred("other", &picture, &results, 0.0));
        assert_ne!(blurred.frame.image.as_ref(), picture.as_ref(), "other cameras keep the default");
        assert!(judge.evidence_dir().is_none());
    }

    #[test]
    fn a_debris_model_that_is_not_configured_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = Judge::open(&config(dir.path(), "[rules.road_debris]\nmodel = \"muck_v2\"\n"), &names())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("rules.road_debris.model") && err.contains("nanodet"), "{err}");
    }
}
