//! The judge stage: inferred frames in; events worth reporting (the [`crate::wire::Event`] messages),
//! and what must stay private, out ([`Judgement`], to the evidence stage). Per camera: zones ([`zones`]), a background model for
//! static foreground ([`background`]), and the rules ([`rules`]) with their trackers ([`tracker`])
//! and event lifecycles ([`lifecycle`]), and camera tamper detection ([`tamper`]); per device the
//! taxonomy ([`taxonomy`]). Pure and driven by frame times: it writes no file (a tamper reference
//! it learns goes to the evidence stage to keep), draws no picture and runs no program. Imports the infer and
//! source message types and `wire`, never evidence, delivery or the side rooms.

pub mod background;
pub mod config;
pub mod control;
#[cfg(test)]
pub mod fixtures;
pub mod lifecycle;
pub mod plate_votes;
pub mod rules;
pub mod tamper;
pub mod taxonomy;
pub mod tracker;
pub mod zones;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};

use crate::base::blocking::off_the_workers;
use crate::base::liveness::Heartbeat;
use crate::infer::control::ModelRuns;
use crate::infer::plates::stage::{PlateArea, PlateAreas, VehiclePlate};
use crate::infer::{BoundingBox, Findings, InferError, InferredFrame, ModelResult};
use crate::source::Frame;
use crate::wire::{Event, EventKind, LifecycleState, EVENT_SCHEMA_VERSION};
use background::BackgroundModel;
use config::{ActionConfig, JudgeSettings, RulesConfig, ZoneRole};
use control::{ClassifierSlot, JudgeControl, SwapRefused};
use lifecycle::Transition;
use rules::litter::LitterRule;
use rules::object::ObjectRule;
use rules::overflow::{OverflowRule, StateClassifier};
use rules::road_debris::RoadDebrisRule;
use rules::truck_exit::{CoverClassifier, TruckExitRule};
use rules::unregistered_truck::UnregisteredTruckRule;
use rules::wrong_bin::{Categoriser, WrongBinRule};
use rules::{detections_of, Finding, FrameView, SecondStage};
use tamper::reference::Reference;
use tamper::TamperWatch;
use taxonomy::{Taxonomy, TaxonomyError};
use tracker::{seconds_between, TrackIds};
use zones::{Scene, Zone};

/// An event the judge decided, with what the evidence and delivery stages need to handle it.
#[derive(Debug, Clone)]
pub struct JudgedEvent {
    pub event: Event,
    /// This message gets evidence pictures (a start, and updates and ends that show something new).
    pub with_pictures: bool,
    /// One line for the evidence picture: kind, label, category and score (English names: the
    /// embedded font has no Chinese glyphs).
    pub caption: String,
    /// The on-site action of the event's rule, on `start` messages only (from the local config).
    pub action: Option<ActionConfig>,
    /// The picture of the event's plate (`plate`), kept as evidence beside the frame; not yet private.
    pub plate_picture: Option<crate::infer::plates::stage::PlatePicture>,
}

/// What must not be seen in any picture of a frame: decided here, applied by the evidence stage
/// (and by every other place that lets a picture out, through the same `evidence::privacy`).
#[derive(Debug, Clone, Default)]
pub struct PrivacyMask {
    /// Where people were found; blurred when `blur_people`.
    pub people: Vec<BoundingBox>,
    pub blur_people: bool,
    /// The camera's privacy zones: always black.
    pub zones: Vec<Zone>,
    /// With `privacy.blur_plates`: the plates of the vehicles whose plates are not read (or whole
    /// vehicles whose plates could not be looked for), always blurred.
    pub plates: Vec<BoundingBox>,
    /// `privacy.blur_plates`: a clip of this camera is masked too (between judged frames, as for people).
    pub blur_plates: bool,
}

impl PrivacyMask {
    /// The mask of `scene` with the people the models found at the privacy threshold
    /// ([`ModelResult::people`]), whatever threshold decides events.
    pub fn from_results(scene: &Scene, results: &[ModelResult]) -> Self {
        let people = results.iter().flat_map(|r| r.people.iter().copied()).collect();
        Self::with_people(scene, people)
    }

    pub fn with_people(scene: &Scene, people: Vec<BoundingBox>) -> Self {
        Self {
            people,
            blur_people: scene.blur_people,
            zones: scene.zones_with_role(ZoneRole::Privacy).cloned().collect(),
            plates: Vec::new(),
            blur_plates: false,
        }
    }
}

/// A judged frame: the message from judge to evidence.
#[derive(Debug, Clone)]
pub struct Judgement {
    /// The frame as captured, NOT yet private: only the evidence stage reads it, and masks it.
    pub frame: Frame,
    pub results: Vec<ModelResult>,
    pub events: Vec<JudgedEvent>,
    pub privacy: PrivacyMask,
    /// The camera's zones, for drawing.
    pub zones: Vec<Zone>,
    /// A tamper reference the judge has just learnt from this camera's view, for the evidence
    /// stage to keep with this frame's picture (privacy applied).
    pub tamper_reference: Option<Reference>,
}

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error(transparent)]
    Taxonomy(#[from] TaxonomyError),
    #[error("`{key}`: {source}")]
    Model { key: &'static str, source: InferError },
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
    unregistered_truck: UnregisteredTruckRule,
    /// None when tamper detection is off for the camera.
    tamper: Option<TamperWatch>,
}

impl CameraJudge {
    fn new(camera: &str, settings: &JudgeSettings, scene: &Scene, tamper_reference: Option<&Reference>) -> Self {
        let (rules, tracking, background) = (&settings.rules, &settings.tracking, &settings.background);
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
            truck_exit: TruckExitRule::new(&rules.truck_exit, tracking).with_plate_votes((&settings.plates).into()),
            unregistered_truck: UnregisteredTruckRule::new(&settings.plates.registered),
            tamper: tamper_watch(camera, settings, tamper_reference),
        }
    }
}

/// The camera's tamper watch, with its own settings and its saved reference; None when off.
fn tamper_watch(camera: &str, settings: &JudgeSettings, reference: Option<&Reference>) -> Option<TamperWatch> {
    // The config was validated as a whole, camera tables included; this cannot fail but is not
    // worth a panic either.
    let config = settings.tamper.for_camera(camera).unwrap_or_else(|invalid| {
        tracing::error!(camera, "`{}` {}; the [tamper] settings are used", invalid.key, invalid.problem);
        settings.tamper.clone()
    });
    config.enabled.then(|| TamperWatch::new(camera, config, reference.cloned()))
}

pub struct Judge {
    settings: JudgeSettings,
    station_id: String,
    taxonomy: Taxonomy,
    scenes: HashMap<String, Scene>,
    default_scene: Scene,
    cameras: HashMap<String, CameraJudge>,
    item_classifier: Option<SecondStage>,
    cover_classifier: Option<CoverClassifier>,
    overflow_classifier: Option<StateClassifier>,
    /// Where the second-stage classifiers count their runs (probation of a deployed head).
    runs: Option<Arc<ModelRuns>>,
    /// Each camera's tamper reference: saved ones read at open, and those learnt since.
    tamper_references: HashMap<String, Reference>,
}

/// Each rule's transitions of one frame, tagged with the rule's kind.
type Transitions = Vec<(EventKind, Transition<Finding>)>;

impl Judge {
    /// Builds the judge from its settings: loads the taxonomy and the second-stage classifiers the
    /// zones need. `model_names` are the infer stage's models.
    pub fn open(settings: &JudgeSettings, model_names: &[String]) -> Result<Self, JudgeError> {
        check_debris_model(&settings.rules, model_names)?;
        let (taxonomy, scenes, default_scene) = scenes_and_taxonomy(settings)?;
        let item_classifier =
            if wants_item_classifier(settings, &scenes) { Some(load_item_classifier(settings)?) } else { None };
        let rules = &settings.rules;
        let cover_classifier = match (&rules.truck_exit.cover_classifier, rules.truck_exit.enabled) {
            (Some(cover), true) => Some(CoverClassifier {
                stage: SecondStage::load(&cover.manifest, settings.backend).map_err(|source| JudgeError::Model {
                    key: "rules.truck_exit.cover_classifier.manifest",
                    source,
                })?,
                config: cover.clone(),
            }),
            _ => None,
        };
        let overflow_classifier = match (&rules.overflow.state_classifier, rules.overflow.enabled) {
            (Some(state), true) => Some(StateClassifier {
                stage: SecondStage::load(&state.manifest, settings.backend)
                    .map_err(|source| JudgeError::Model { key: "rules.overflow.state_classifier.manifest", source })?,
                config: state.clone(),
            }),
            _ => None,
        };
        Ok(Self {
            station_id: settings.site.station_id.clone().unwrap_or_else(|| settings.device_id.clone()),
            settings: settings.clone(),
            taxonomy,
            scenes,
            default_scene,
            cameras: HashMap::new(),
            item_classifier,
            cover_classifier,
            overflow_classifier,
            runs: None,
            tamper_references: tamper::reference::load_all(&settings.tamper_dir),
        })
    }

    /// Counts every second-stage classifier's runs in `runs` (by model name), also those loaded
    /// or switched in later.
    pub fn count_runs_in(&mut self, runs: Arc<ModelRuns>) {
        let stages = [
            self.item_classifier.as_mut(),
            self.overflow_classifier.as_mut().map(|c| &mut c.stage),
            self.cover_classifier.as_mut().map(|c| &mut c.stage),
        ];
        for stage in stages.into_iter().flatten() {
            stage.count_runs_in(runs.clone());
        }
        self.runs = Some(runs);
    }

    /// Puts `stage` into `slot` (None empties it) and returns what was there. The overflow and
    /// truck_exit slots need their rule on and its classifier table in the config (the labels
    /// that mean "on"); otherwise `stage` comes back refused.
    pub fn swap_classifier(
        &mut self,
        slot: ClassifierSlot,
        stage: Option<Box<SecondStage>>,
    ) -> Result<Option<Box<SecondStage>>, SwapRefused> {
        let mut stage = stage;
        if let (Some(stage), Some(runs)) = (stage.as_mut(), &self.runs) {
            stage.count_runs_in(runs.clone());
        }
        let rules = &self.settings.rules;
        match slot {
            ClassifierSlot::Taxonomy => {
                Ok(std::mem::replace(&mut self.item_classifier, stage.map(|s| *s)).map(Box::new))
            }
            ClassifierSlot::OverflowState => match (&rules.overflow.state_classifier, rules.overflow.enabled) {
                (Some(config), true) => {
                    let new = stage.map(|s| StateClassifier { stage: *s, config: config.clone() });
                    Ok(std::mem::replace(&mut self.overflow_classifier, new).map(|old| Box::new(old.stage)))
                }
                _ => Err(SwapRefused {
                    why: "`rules.overflow` is off or has no `state_classifier` table (its `on_labels`)".into(),
                    offered: stage,
                }),
            },
            ClassifierSlot::TruckCover => match (&rules.truck_exit.cover_classifier, rules.truck_exit.enabled) {
                (Some(config), true) => {
                    let new = stage.map(|s| CoverClassifier { stage: *s, config: config.clone() });
                    Ok(std::mem::replace(&mut self.cover_classifier, new).map(|old| Box::new(old.stage)))
                }
                _ => Err(SwapRefused {
                    why: "`rules.truck_exit` is off or has no `cover_classifier` table (its labels)".into(),
                    offered: stage,
                }),
            },
        }
    }

    /// Takes new rules, zones, tracking, background, tamper and privacy settings from
    /// `set`/`reload` between two frames. The loaded classifiers stay; each camera's rule state
    /// starts afresh, so an incident open under the old rules is reported again under the new ones
    /// (with a new `event_id`). Tamper references are read again (an installer may have set one).
    pub fn reconfigure(&mut self, settings: &JudgeSettings) -> Result<(), JudgeError> {
        let (taxonomy, scenes, default_scene) = scenes_and_taxonomy(settings)?;
        // The first bin zone drawn on a running box needs the crop classifier the start skipped.
        if wants_item_classifier(settings, &scenes) && self.item_classifier.is_none() {
            let mut stage = load_item_classifier(settings)?;
            if let Some(runs) = &self.runs {
                stage.count_runs_in(runs.clone());
            }
            self.item_classifier = Some(stage);
        }
        self.scenes = scenes;
        self.default_scene = default_scene;
        self.taxonomy = taxonomy;
        self.station_id = settings.site.station_id.clone().unwrap_or_else(|| settings.device_id.clone());
        self.settings = settings.clone();
        self.cameras.clear();
        // A reference learnt but not yet on disk stays; one on disk wins.
        let learnt = std::mem::take(&mut self.tamper_references);
        self.tamper_references = tamper::reference::load_all(&settings.tamper_dir);
        for (camera, reference) in learnt {
            self.tamper_references.entry(camera).or_insert(reference);
        }
        Ok(())
    }

    /// Decides one frame: what must stay private, what each rule saw, and the events that follow.
    pub fn judge(&mut self, inferred: InferredFrame) -> Judgement {
        let InferredFrame { frame, results, plates, plates_to_blur } = inferred;
        let camera = frame.camera.to_string();
        let scene = self.scenes.get(&camera).unwrap_or(&self.default_scene);
        let privacy = PrivacyMask {
            plates: plates_to_blur,
            blur_plates: self.settings.privacy.blur_plates,
            ..PrivacyMask::from_results(scene, &results)
        };
        let zones = scene.zones.clone();
        let mut transitions = self.run_rules(&camera, &frame, &results, &plates);
        let tamper_reference = self.watch_tamper(&camera, &frame, &mut transitions);
        let (width, height) = frame.image.dimensions();
        let events = transitions
            .into_iter()
            .map(|(kind, transition)| {
                let event = self.event_from(kind, &camera, frame.captured_at, (width, height), &transition);
                let action = (event.state == LifecycleState::Start).then(|| self.action_of(kind).clone()).flatten();
                let plate_picture = transition.details.plate_picture.filter(|_| event.plate.is_some());
                JudgedEvent {
                    caption: self.caption(&event),
                    with_pictures: transition.snapshot,
                    action,
                    plate_picture,
                    event,
                }
            })
            .collect();
        Judgement { frame, results, events, privacy, zones, tamper_reference }
    }

    /// Runs the camera's tamper watch on the frame; returns a reference it has just learnt.
    fn watch_tamper(&mut self, camera: &str, frame: &Frame, transitions: &mut Transitions) -> Option<Reference> {
        let watch = self.cameras.get_mut(camera)?.tamper.as_mut()?;
        let outcome = watch.observe(frame);
        transitions.extend(outcome.transitions.into_iter().map(|t| (EventKind::Tamper, t)));
        let learnt = outcome.learnt?;
        self.tamper_references.insert(camera.to_string(), learnt.clone());
        Some(learnt)
    }

    /// Runs every rule of the camera on the frame's findings (and its background model).
    fn run_rules(
        &mut self,
        camera: &str,
        frame: &Frame,
        results: &[ModelResult],
        plates: &[VehiclePlate],
    ) -> Transitions {
        let now = frame.captured_at;
        let scene = self.scenes.get(camera).unwrap_or(&self.default_scene);
        let (width, height) = frame.image.dimensions();
        let debris_model = self.settings.rules.road_debris.model.as_deref();
        let found = detections_of(results, scene, width, height, debris_model);
        let debris_found = match debris_model {
            Some(name) => {
                let own: Vec<ModelResult> = results.iter().filter(|r| r.model.name == name).cloned().collect();
                detections_of(&own, scene, width, height, None)
            }
            None => Vec::new(),
        };
        // Exclusion from the background model uses every detection, also those in `ignore` zones.
        let exclude = &self.settings.background.exclude_labels;
        let not_foreground: Vec<BoundingBox> =
            all_detections(results).filter(|d| exclude.contains(&d.label)).map(|d| d.bbox).collect();
        let (settings, references) = (&self.settings, &self.tamper_references);
        let cam = self
            .cameras
            .entry(camera.to_string())
            .or_insert_with(|| CameraJudge::new(camera, settings, scene, references.get(camera)));
        let foreground = cam.background.as_mut().map(|model| model.update(&frame.image, now, &not_foreground));
        let view =
            FrameView { camera, time: now, image: &frame.image, found: &found, scene, foreground: foreground.as_ref() };
        let mut transitions: Transitions = Vec::new();
        let tag = |kind: EventKind| move |t: Transition<Finding>| (kind, t);
        transitions.extend(cam.object.judge(&view, &mut cam.ids).into_iter().map(tag(EventKind::Object)));
        let mut categoriser = Categoriser {
            taxonomy: &self.taxonomy,
            classifier: self.item_classifier.as_mut(),
            min_classifier_score: self.settings.taxonomy.classifier_min_score,
        };
        transitions.extend(
            cam.wrong_bin.judge(&view, &mut cam.ids, &mut categoriser).into_iter().map(tag(EventKind::WrongBin)),
        );
        transitions.extend(cam.litter.judge(&view, &self.taxonomy).into_iter().map(tag(EventKind::Litter)));
        transitions.extend(
            cam.overflow.judge(&view, self.overflow_classifier.as_mut()).into_iter().map(tag(EventKind::Overflow)),
        );
        // Trucks first: debris on a spot a truck just covered carries its plate.
        let exits = cam.truck_exit.judge(&view, &mut cam.ids, self.cover_classifier.as_mut(), plates);
        let truck_exit = &cam.truck_exit;
        let truck_on_spot = |spot: &BoundingBox| truck_exit.plate_that_passed(spot);
        transitions.extend(
            cam.road_debris
                .judge(&view, &debris_found, &mut cam.ids, &truck_on_spot)
                .into_iter()
                .map(tag(EventKind::RoadDebris)),
        );
        let unregistered = cam.unregistered_truck.follow(&exits);
        transitions.extend(exits.into_iter().map(tag(EventKind::TruckExit)));
        transitions.extend(unregistered.into_iter().map(tag(EventKind::UnregisteredTruck)));
        transitions
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
        // A tamper event's box is the whole frame: it stands nowhere on the ground.
        let footprint = match kind {
            EventKind::Tamper => None,
            _ => scene.ground.and_then(|ground| ground.footprint(&d.bbox)),
        };
        Event {
            schema_version: EVENT_SCHEMA_VERSION,
            event_id: t.event_id,
            revision: t.revision,
            state: t.state,
            reason: t.reason,
            device: self.settings.device_id.clone(),
            station_id: self.station_id.clone(),
            grid_cell: self.settings.site.grid_cell.clone(),
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
            chain: None,
            plate: d.plate.clone(),
        }
    }

    /// The evidence picture's caption (see [`JudgedEvent::caption`]).
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

    fn action_of(&self, kind: EventKind) -> &Option<ActionConfig> {
        let rules = &self.settings.rules;
        match kind {
            EventKind::Object => &rules.object.action,
            EventKind::WrongBin => &rules.wrong_bin.action,
            EventKind::Litter => &rules.litter.action,
            EventKind::Overflow => &rules.overflow.action,
            EventKind::RoadDebris => &rules.road_debris.action,
            EventKind::TruckExit => &rules.truck_exit.action,
            // No action of its own yet: the event goes to the platform.
            EventKind::UnregisteredTruck => &NO_ACTION,
            EventKind::Tamper => &self.settings.tamper.action,
        }
    }
}

static NO_ACTION: Option<ActionConfig> = None;

/// Every detection of every detector, also those in `ignore` zones.
fn all_detections(results: &[ModelResult]) -> impl Iterator<Item = &crate::infer::Detection> {
    results.iter().flat_map(|r| match &r.findings {
        Findings::Detect { detections } => detections.as_slice(),
        Findings::Classify { .. } => &[],
    })
}

fn check_debris_model(rules: &RulesConfig, model_names: &[String]) -> Result<(), JudgeError> {
    if let Some(model) = &rules.road_debris.model {
        if !model_names.contains(model) {
            return Err(JudgeError::Invalid {
                key: "rules.road_debris.model",
                problem: format!("is {model:?}; expected the name of a configured model: {}", model_names.join(", ")),
            });
        }
    }
    Ok(())
}

/// Where each camera's plates are read (`[plates]`): vehicles reaching into one of its zones named
/// in `plates.zones`, or its site-exit zones when none is named. A camera without such a zone has
/// none read.
pub fn plate_areas(settings: &JudgeSettings) -> PlateAreas {
    let mut areas = PlateAreas::new();
    for (camera, config) in &settings.scenes {
        let scene = Scene::from_config(camera, config, settings.privacy.blur_people);
        let named = &settings.plates.zones;
        let zones: Vec<zones::Zone> = scene
            .zones
            .into_iter()
            .filter(|z| if named.is_empty() { z.role == ZoneRole::SiteExit } else { named.contains(&z.id) })
            .collect();
        if zones.is_empty() {
            continue;
        }
        let area: PlateArea = Arc::new(move |vehicle: &BoundingBox, width: u32, height: u32| {
            zones.iter().any(|z| z.share_of_box_inside(vehicle, width, height) > 0.0)
        });
        areas.insert(camera.clone(), area);
    }
    areas
}

/// The taxonomy, each configured camera's scene, and the scene of cameras without one.
fn scenes_and_taxonomy(settings: &JudgeSettings) -> Result<(Taxonomy, HashMap<String, Scene>, Scene), JudgeError> {
    let taxonomy = Taxonomy::load(&settings.taxonomy)?;
    let blur_default = settings.privacy.blur_people;
    let scenes = settings
        .scenes
        .iter()
        .map(|(camera, scene)| (camera.clone(), Scene::from_config(camera, scene, blur_default)))
        .collect();
    Ok((taxonomy, scenes, Scene { blur_people: blur_default, ..Scene::default() }))
}

fn wants_item_classifier(settings: &JudgeSettings, scenes: &HashMap<String, Scene>) -> bool {
    settings.rules.wrong_bin.enabled
        && settings.taxonomy.classify_crops
        && scenes.values().any(|s| s.has_role(ZoneRole::Bin))
}

fn load_item_classifier(settings: &JudgeSettings) -> Result<SecondStage, JudgeError> {
    SecondStage::load(&settings.taxonomy.classifier, settings.backend)
        .map_err(|source| JudgeError::Model { key: "taxonomy.classifier", source })
}

/// The judge stage's loop: judges each inferred frame (classifiers are blocking work, so off the
/// async workers) and passes the judgement to the evidence stage. `settings` brings new rules and
/// zones from `set`/`reload`; `control` switches its classifiers (a site head deployed).
pub async fn run_judge(
    mut judge: Judge,
    mut input: mpsc::Receiver<InferredFrame>,
    output: mpsc::Sender<Judgement>,
    mut settings: watch::Receiver<Arc<JudgeSettings>>,
    mut control: mpsc::Receiver<JudgeControl>,
    heartbeat: Arc<Heartbeat>,
) {
    heartbeat.pause();
    settings.mark_unchanged();
    let mut settings_open = true;
    let mut control_open = true;
    loop {
        let inferred = tokio::select! {
            inferred = input.recv() => match inferred {
                Some(inferred) => inferred,
                None => break,
            },
            request = control.recv(), if control_open => {
                match request {
                    Some(JudgeControl::SwapClassifier { slot, stage, reply }) => {
                        let _ = reply.send(judge.swap_classifier(slot, stage));
                    }
                    None => control_open = false,
                }
                continue;
            }
            changed = settings.changed(), if settings_open => {
                if changed.is_err() {
                    settings_open = false;
                    continue;
                }
                let new_settings = settings.borrow_and_update().clone();
                // The config store validated the whole config already; a refusal here (a taxonomy
                // file gone meanwhile) keeps the old settings running. Loading a classifier blocks.
                match off_the_workers(judge, move |judge| judge.reconfigure(&new_settings)).await {
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
        let judgement = match off_the_workers(judge, move |judge| judge.judge(inferred)).await {
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
    use crate::config::Config;
    use crate::judge::fixtures::{detector_result, inferred, sample, test_config};
    use std::path::Path;

    fn config(state_dir: &Path, extra: &str) -> Config {
        test_config(state_dir, extra)
    }

    fn names() -> Vec<String> {
        vec!["nanodet".into(), "efficientnet_lite0".into()]
    }

    #[test]
    fn plates_are_read_only_where_a_camera_has_the_zones_plates_asks_for() {
        let dir = tempfile::tempdir().unwrap();
        let zones = r#"
[[scenes.station.zones]]
id = "exit"
role = "site_exit"
polygon = [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]
[[scenes.station.zones]]
id = "weighbridge"
role = "road"
polygon = [[0.0, 0.0], [0.2, 0.0], [0.2, 0.2], [0.0, 0.2]]
[[scenes.yard.zones]]
id = "road"
role = "road"
polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
"#;
        let vehicle = |x1: f32, x2: f32| BoundingBox { x1, y1: 100.0, x2, y2: 200.0 };
        let areas = plate_areas(&config(dir.path(), zones).judge_settings());
        assert_eq!(areas.keys().collect::<Vec<_>>(), ["station"], "the site-exit zones by default");
        let exit = &areas["station"];
        assert!(exit(&vehicle(700.0, 900.0), 1000, 500), "inside the exit");
        assert!(exit(&vehicle(400.0, 600.0), 1000, 500), "reaching into it");
        assert!(!exit(&vehicle(100.0, 300.0), 1000, 500), "outside");
        // Named zones instead: the weighbridge only (top left corner).
        let named = config(
            dir.path(),
            &format!(
                "{zones}
[plates]
zones = [\"weighbridge\"]
"
            ),
        );
        let areas = plate_areas(&named.judge_settings());
        let weighbridge = &areas["station"];
        assert!(weighbridge(&BoundingBox { x1: 10.0, y1: 10.0, x2: 90.0, y2: 60.0 }, 1000, 500));
        assert!(!weighbridge(&vehicle(700.0, 900.0), 1000, 500), "the exit is not named");
        assert!(!areas.contains_key("yard"));
    }

    #[test]
    fn the_embedded_defaults_decide_a_truck_event_in_dog_jpg_with_pictures_and_no_action() {
        let dir = tempfile::tempdir().unwrap();
        let mut judge = Judge::open(&config(dir.path(), "").judge_settings(), &names()).unwrap();
        let dog = Arc::new(sample("dog.jpg"));
        let results = vec![detector_result(&dog)];
        let mut events = Vec::new();
        for i in 0..6 {
            events.extend(judge.judge(inferred("demo", &dog, &results, i as f64 * 0.5)).events);
        }
        let truck = events.iter().find(|e| e.event.label == "truck").expect("a truck event");
        assert_eq!(
            (truck.event.kind, truck.event.state, truck.event.revision),
            (EventKind::Object, LifecycleState::Start, 0)
        );
        assert!(truck.with_pictures, "a start has pictures");
        assert!(truck.caption.starts_with("object truck"), "{}", truck.caption);
        assert!(truck.action.is_none());
        assert_eq!(truck.event.evidence, None, "the judge keeps no evidence");
        assert!(std::fs::read_dir(dir.path()).map(|d| d.count()).unwrap_or(0) == 0, "the judge writes no file");
    }

    #[test]
    fn a_debris_model_that_is_not_configured_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            Judge::open(&config(dir.path(), "[rules.road_debris]\nmodel = \"muck_v2\"\n").judge_settings(), &names())
                .err()
                .unwrap()
                .to_string();
        assert!(err.contains("rules.road_debris.model") && err.contains("nanodet"), "{err}");
    }
}
