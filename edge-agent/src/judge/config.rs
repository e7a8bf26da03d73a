//! What the user writes about judging: `[site]`, `[taxonomy]`, `[scenes.<camera>]`, `[tracking]`,
//! `[background]`, `[rules.*]`, `[tamper]` (per camera overridable) and `[privacy]`. Every key has
//! a default, so an empty file still runs the demo (the plain `object` rule, no zones).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::base::section::{absolutise, is_valid_topic_level, Invalid};
use crate::infer::config::BackendKind;

/// Where the box stands, copied into every event and the daily statistics.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SiteConfig {
    /// The garbage station or construction site this box watches; default: `device_id`.
    pub station_id: Option<String>,
    /// The city's grid cell (网格) the station belongs to.
    pub grid_cell: Option<String>,
    /// Site calibration file (`calibration/<site>.toml`, relative to this file): its zones, ground
    /// homography and per-class thresholds are merged in when the config is loaded.
    pub calibration: Option<PathBuf>,
}

/// One garbage category of the city, with its display names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryConfig {
    pub name: String,
    pub zh: String,
    pub en: String,
}

/// The city's categories and how model labels map onto them.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaxonomyConfig {
    /// Default: recyclable, hazardous, kitchen, residual (`unknown` always exists besides them).
    pub categories: Vec<CategoryConfig>,
    /// Files mapping a model's labels to categories; a model whose labels already are category
    /// names needs none. Default: the mappings shipped in `models/`.
    pub mappings: Vec<PathBuf>,
    /// Classify each item's crop with this model (manifest) to find its category.
    pub classifier: PathBuf,
    /// Set false to take the category from the detector's label alone.
    pub classify_crops: bool,
    /// Below this classifier score the crop's category is `unknown`.
    pub classifier_min_score: f32,
}

impl Default for TaxonomyConfig {
    fn default() -> Self {
        let data = crate::base::section::data_dir();
        Self {
            categories: default_categories(),
            mappings: vec![
                data.join("models/efficientnet_lite0.taxonomy.toml"),
                data.join("models/nanodet.taxonomy.toml"),
            ],
            classifier: data.join("models/efficientnet_lite0.toml"),
            classify_crops: true,
            classifier_min_score: 0.15,
        }
    }
}

pub fn default_categories() -> Vec<CategoryConfig> {
    [
        ("recyclable", "可回收物", "Recyclable"),
        ("hazardous", "有害垃圾", "Hazardous"),
        ("kitchen", "厨余垃圾", "Kitchen (wet)"),
        ("residual", "其他垃圾", "Residual (dry)"),
    ]
    .map(|(name, zh, en)| CategoryConfig { name: name.into(), zh: zh.into(), en: en.into() })
    .to_vec()
}

/// The name of the category of anything the taxonomy cannot place.
pub const UNKNOWN_CATEGORY: &str = "unknown";

/// What one camera sees: its zones, whether people are blurred, and its ground calibration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SceneConfig {
    pub zones: Vec<ZoneConfig>,
    /// Overrides `privacy.blur_people` for this camera (turn off only where the law allows it).
    pub blur_people: Option<bool>,
    /// 3×3 homography from frame pixels to metres on the ground plane (row major); with it,
    /// debris areas are also reported in m².
    pub ground_homography: Option<[[f64; 3]; 3]>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub id: String,
    pub role: ZoneRole,
    /// The bin's category; only for `role = "bin"`.
    #[serde(default)]
    pub category: Option<String>,
    /// Corners in normalised frame coordinates (0..1, x to the right, y down); closed implicitly.
    pub polygon: Vec<[f64; 2]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ZoneRole {
    /// A bin of one category: items in it are checked (`wrong_bin`), coverage is `overflow`.
    Bin,
    /// Where people drop garbage; anything left outside the bins is `litter`.
    DropArea,
    /// Watched for `road_debris`.
    Road,
    /// Trucks in it are leaving the site (`truck_exit`).
    SiteExit,
    /// Nothing in it is judged.
    Ignore,
    /// Blacked out in every stored or sent image.
    Privacy,
}

/// How detections are followed from frame to frame.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackingConfig {
    /// A detection continues a track when their boxes overlap at least this much (IoU).
    pub match_iou: f32,
    /// A track not seen for this long is lost, and its event ends.
    pub max_lost_secs: f64,
    /// A lost track that reappears in (nearly) the same place within this time is the same object,
    /// so a parked truck does not trigger again.
    pub stationary_memory_secs: f64,
    /// How much a reappearing box must overlap the lost one to count as the same place.
    pub stationary_iou: f32,
    /// Scores of this many recent sightings give the median compared with a rule's `min_score`.
    pub score_window: usize,
    /// An active event sends an `update` (better snapshot, zone change) at most this often.
    pub update_interval_secs: f64,
    /// Labels a detector gives one vehicle by turns (a pickup is a car and a truck): overlapping
    /// boxes of these are one object, one track, one event, its label the one with the most score.
    pub vehicle_labels: Vec<String>,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        Self {
            match_iou: 0.3,
            max_lost_secs: 5.0,
            stationary_memory_secs: 600.0,
            stationary_iou: 0.6,
            score_window: 5,
            update_interval_secs: 10.0,
            vehicle_labels: ["car", "truck", "bus"].map(String::from).to_vec(),
        }
    }
}

/// The long/short-term background model that finds static foreground (overflow, debris, litter).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackgroundConfig {
    /// Width of the grid the model works on (the frame is scaled down to it).
    pub grid_width: u32,
    /// Time constant of the short-term background: how fast something new counts as still.
    pub short_term_secs: f64,
    /// Time constant of the long-term background: how slowly the empty scene is learnt.
    pub long_term_secs: f64,
    /// Colour difference (0-255, per channel) that counts as changed.
    pub threshold: f32,
    /// Detections of these labels are not static foreground (parked vehicles, people standing).
    pub exclude_labels: Vec<String>,
}

impl Default for BackgroundConfig {
    fn default() -> Self {
        Self {
            grid_width: 192,
            short_term_secs: 2.0,
            long_term_secs: 600.0,
            threshold: 30.0,
            exclude_labels: ["person", "truck", "car", "bus", "motorbike", "motorcycle", "bicycle", "train"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// An on-site action (宣教), e.g. a voice prompt, run when an event of a rule starts: the name of a
/// program in the actions folder (`[actions] folder`, root-owned), never a command line. The
/// program gets the event's kind, camera, zone, label, category and id as `EDGE_EVENT_*` variables.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    pub program: String,
    /// At most one run per camera in this time.
    #[serde(default = "default_action_interval")]
    pub min_interval_secs: f64,
}

/// Whether a program name is a plain file name of the actions folder (no folder, no hidden file).
pub fn is_program_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn default_action_interval() -> f64 {
    60.0
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    pub object: ObjectRuleConfig,
    pub wrong_bin: WrongBinRuleConfig,
    pub litter: LitterRuleConfig,
    pub overflow: OverflowRuleConfig,
    pub road_debris: RoadDebrisRuleConfig,
    pub truck_exit: TruckExitRuleConfig,
}

/// The plain rule: a tracked detection of these labels, in these zones, above `min_score` for
/// `min_duration_secs`, is an event.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectRuleConfig {
    pub enabled: bool,
    /// Labels to report; people are left out on purpose (privacy by default).
    pub labels: Vec<String>,
    pub min_score: f32,
    /// Zone ids the object must be in; empty: anywhere in the frame.
    pub zones: Vec<String>,
    pub min_duration_secs: f64,
    pub action: Option<ActionConfig>,
}

impl Default for ObjectRuleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            labels: ["truck", "car", "bus", "motorcycle", "bicycle", "bottle", "cup"].map(String::from).to_vec(),
            min_score: 0.3,
            zones: Vec::new(),
            min_duration_secs: 1.0,
            action: None,
        }
    }
}

/// Detector labels that are garbage items (COCO names).
fn default_item_labels() -> Vec<String> {
    [
        "bottle",
        "wine glass",
        "cup",
        "fork",
        "knife",
        "spoon",
        "bowl",
        "banana",
        "apple",
        "sandwich",
        "orange",
        "broccoli",
        "carrot",
        "hot dog",
        "pizza",
        "donut",
        "cake",
        "cell phone",
        "remote",
        "book",
        "scissors",
        "toothbrush",
        "handbag",
        "backpack",
        "suitcase",
        "umbrella",
        "vase",
        "teddy bear",
    ]
    .map(String::from)
    .to_vec()
}

/// An item inside a bin zone whose category differs from the bin's.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WrongBinRuleConfig {
    pub enabled: bool,
    pub item_labels: Vec<String>,
    pub min_score: f32,
    pub min_duration_secs: f64,
    /// Share of the item's box that must lie inside the bin zone.
    pub min_inside: f32,
    pub action: Option<ActionConfig>,
}

impl Default for WrongBinRuleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            item_labels: default_item_labels(),
            min_score: 0.3,
            min_duration_secs: 2.0,
            min_inside: 0.5,
            action: None,
        }
    }
}

/// Garbage left in a drop area outside the bins for longer than `after_secs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LitterRuleConfig {
    pub enabled: bool,
    pub item_labels: Vec<String>,
    pub min_score: f32,
    pub after_secs: f64,
    /// The area counts as clear after this long without garbage; the event then ends.
    pub clear_secs: f64,
    /// Also count static foreground (bags, boxes the detector has no label for) as garbage.
    pub static_foreground: bool,
    /// Smallest static blob that counts, in frame pixels.
    pub min_area_px: f64,
    pub action: Option<ActionConfig>,
}

impl Default for LitterRuleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            item_labels: default_item_labels(),
            min_score: 0.3,
            after_secs: 60.0,
            clear_secs: 10.0,
            static_foreground: true,
            min_area_px: 600.0,
            action: None,
        }
    }
}

/// A bin zone covered by static foreground above `min_coverage` for `after_secs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverflowRuleConfig {
    pub enabled: bool,
    pub min_coverage: f32,
    pub after_secs: f64,
    pub clear_secs: f64,
    /// Optional state classifier on each bin zone's crop (e.g. a head from `edge-agent learn`):
    /// when set, it decides whether a bin overflows, instead of the background model's coverage.
    pub state_classifier: Option<StateClassifierConfig>,
    pub action: Option<ActionConfig>,
}

impl Default for OverflowRuleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_coverage: 0.5,
            after_secs: 60.0,
            clear_secs: 10.0,
            state_classifier: None,
            action: None,
        }
    }
}

/// A classifier of a zone's state from its crop (overflowing or not, lid open or closed).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateClassifierConfig {
    /// Manifest of the classifier.
    pub manifest: PathBuf,
    /// Its labels that mean the state is on (e.g. "overflowing"); any other top label means off.
    pub on_labels: Vec<String>,
    /// The top label's score it needs to count.
    #[serde(default = "default_cover_min_score")]
    pub min_score: f32,
}

/// Something new and static on a road zone for `after_secs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoadDebrisRuleConfig {
    pub enabled: bool,
    /// Name of a configured detector trained on debris; without it the background model is used.
    pub model: Option<String>,
    /// Labels of that model that are debris; empty: all of them.
    pub labels: Vec<String>,
    pub min_score: f32,
    pub after_secs: f64,
    pub clear_secs: f64,
    /// Smallest static blob that counts, in frame pixels.
    pub min_area_px: f64,
    pub action: Option<ActionConfig>,
}

impl Default for RoadDebrisRuleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            model: None,
            labels: Vec::new(),
            min_score: 0.3,
            after_secs: 30.0,
            clear_secs: 10.0,
            min_area_px: 600.0,
            action: None,
        }
    }
}

/// A truck leaving through a site-exit zone.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TruckExitRuleConfig {
    pub enabled: bool,
    pub labels: Vec<String>,
    pub min_score: f32,
    pub min_duration_secs: f64,
    /// Way out of the frame, when the exit has one: `up`, `down`, `left` or `right`. A truck must
    /// have moved that way (by `min_travel` of the frame) before it counts as leaving.
    pub leaving_direction: Option<Direction>,
    pub min_travel: f32,
    /// Optional second-stage classifier on the truck's crop that tells whether the load is covered.
    pub cover_classifier: Option<CoverClassifierConfig>,
    pub action: Option<ActionConfig>,
}

impl Default for TruckExitRuleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            labels: vec!["truck".into()],
            min_score: 0.3,
            min_duration_secs: 1.0,
            leaving_direction: None,
            min_travel: 0.05,
            cover_classifier: None,
            action: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Up,
    Down,
    Left,
    Right,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoverClassifierConfig {
    /// Manifest of the classifier.
    pub manifest: PathBuf,
    /// Its labels that mean an uncovered load.
    pub uncovered_labels: Vec<String>,
    /// Its labels that mean a covered load; any other top label leaves `uncovered` null.
    pub covered_labels: Vec<String>,
    #[serde(default = "default_cover_min_score")]
    pub min_score: f32,
}

fn default_cover_min_score() -> f32 {
    0.5
}

/// Camera tamper detection (`[tamper]`): a view that is no longer what the installer set up is an
/// event of kind `tamper` with the condition as its label. Each condition must hold for its
/// `after_secs` before the event starts, and be gone for `clear_secs` before it ends.
/// `[tamper.cameras.<id>]` overrides any of these keys for one camera.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TamperConfig {
    pub enabled: bool,
    /// Without a saved reference, the first stable stretch this long becomes the reference.
    pub learn_secs: f64,
    /// A condition gone this long ends its event.
    pub clear_secs: f64,
    pub covered: CoveredConfig,
    pub defocused: DefocusedConfig,
    pub turned_away: TurnedAwayConfig,
    pub frozen: FrozenConfig,
    pub action: Option<ActionConfig>,
    /// Per camera: a table of the keys above that differ for it.
    #[serde(skip_serializing)]
    pub cameras: BTreeMap<String, toml::Table>,
}

impl Default for TamperConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            learn_secs: 60.0,
            clear_secs: 5.0,
            covered: CoveredConfig::default(),
            defocused: DefocusedConfig::default(),
            turned_away: TurnedAwayConfig::default(),
            frozen: FrozenConfig::default(),
            action: None,
            cameras: BTreeMap::new(),
        }
    }
}

/// Lens covered or blacked out: a picture darker than `max_brightness`, or more uniform than
/// `max_spread` (grey levels across a 64×36 grid).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoveredConfig {
    pub enabled: bool,
    pub max_brightness: f32,
    pub max_spread: f32,
    pub after_secs: f64,
}

impl Default for CoveredConfig {
    fn default() -> Self {
        Self { enabled: true, max_brightness: 10.0, max_spread: 4.0, after_secs: 10.0 }
    }
}

/// Out of focus: fine detail below `min_sharpness` of the reference's.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DefocusedConfig {
    pub enabled: bool,
    pub min_sharpness: f32,
    pub after_secs: f64,
}

impl Default for DefocusedConfig {
    fn default() -> Self {
        Self { enabled: true, min_sharpness: 0.5, after_secs: 10.0 }
    }
}

/// Turned away or moved: the view's edges match the reference's less than `min_similarity` (0-1).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnedAwayConfig {
    pub enabled: bool,
    pub min_similarity: f32,
    pub after_secs: f64,
}

impl Default for TurnedAwayConfig {
    fn default() -> Self {
        Self { enabled: true, min_similarity: 0.4, after_secs: 10.0 }
    }
}

/// Frozen: frames keep arriving but differ by at most `max_change` of the camera's own noise
/// (learnt with the reference).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FrozenConfig {
    pub enabled: bool,
    pub max_change: f32,
    pub after_secs: f64,
}

impl Default for FrozenConfig {
    fn default() -> Self {
        Self { enabled: true, max_change: 0.1, after_secs: 10.0 }
    }
}

impl TamperConfig {
    /// The settings of one camera: these, with its `[tamper.cameras.<id>]` table laid over them.
    pub fn for_camera(&self, camera: &str) -> Result<TamperConfig, Invalid> {
        let key = format!("tamper.cameras.{camera}");
        let Some(overrides) = self.cameras.get(camera) else {
            return Ok(TamperConfig { cameras: BTreeMap::new(), ..self.clone() });
        };
        if overrides.contains_key("cameras") {
            return Err(Invalid::new(format!("{key}.cameras"), "is not allowed in a camera's own table"));
        }
        let mut merged = toml::Table::try_from(self)
            .map_err(|e| Invalid::new(key.clone(), format!("cannot be combined with [tamper]: {e}")))?;
        overlay(&mut merged, overrides);
        merged.try_into::<TamperConfig>().map_err(|e| Invalid::new(key, e.message().to_string()))
    }

    /// Checks the section and each camera's settings; `cameras` are the configured camera ids.
    pub fn validate(&self, cameras: &HashSet<&str>) -> Result<(), Invalid> {
        self.check_values("tamper")?;
        for camera in self.cameras.keys() {
            let key = format!("tamper.cameras.{camera}");
            if !cameras.contains(camera.as_str()) {
                let mut known: Vec<&str> = cameras.iter().copied().collect();
                known.sort_unstable();
                return Err(Invalid::new(
                    key,
                    format!("names no configured camera; expected one of: {}", known.join(", ")),
                ));
            }
            self.for_camera(camera)?.check_values(&key)?;
        }
        Ok(())
    }

    /// `prefix` is where these settings sit in the file (`tamper`, `tamper.cameras.gate`).
    fn check_values(&self, prefix: &str) -> Result<(), Invalid> {
        let key = |name: &str| format!("{prefix}.{name}");
        if !(self.learn_secs.is_finite() && self.learn_secs >= 1.0) {
            return Err(Invalid::new(key("learn_secs"), format!("is {}; expected 1 second or more", self.learn_secs)));
        }
        check_secs(&key("clear_secs"), self.clear_secs)?;
        for (name, level) in
            [("covered.max_brightness", self.covered.max_brightness), ("covered.max_spread", self.covered.max_spread)]
        {
            if !(0.0..=255.0).contains(&level) {
                return Err(Invalid::new(key(name), format!("is {level}; expected a grey level from 0 to 255")));
            }
        }
        check_unit(&key("defocused.min_sharpness"), self.defocused.min_sharpness)?;
        check_unit(&key("turned_away.min_similarity"), self.turned_away.min_similarity)?;
        check_unit(&key("frozen.max_change"), self.frozen.max_change)?;
        for (name, secs) in [
            ("covered.after_secs", self.covered.after_secs),
            ("defocused.after_secs", self.defocused.after_secs),
            ("turned_away.after_secs", self.turned_away.after_secs),
            ("frozen.after_secs", self.frozen.after_secs),
        ] {
            check_secs(&key(name), secs)?;
        }
        check_action(&key("action"), &self.action)
    }
}

/// Lays `over` onto `base`, table into table, so a camera's table need name only what differs.
fn overlay(base: &mut toml::Table, over: &toml::Table) {
    for (name, value) in over {
        match (base.get_mut(name), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(over_inner)) => overlay(inner, over_inner),
            _ => {
                base.insert(name.clone(), value.clone());
            }
        }
    }
}

/// Privacy by default: people blurred and privacy zones blacked out in every stored or sent image.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    pub blur_people: bool,
    /// Detector labels that are people.
    pub person_labels: Vec<String>,
    /// A detection of a person label from this score up is blurred, whatever threshold decides
    /// events: low, so a box that may be a person is blurred. Set in this file only.
    pub person_min_score: f32,
    /// Blur the plates of every vehicle whose plate is not read (`plates.labels` in `plates.zones`):
    /// the plate detector of `plates.models` finds them (a vehicle it cannot search is blurred whole).
    pub blur_plates: bool,
    /// Detector labels that are vehicles with plates, for `blur_plates`.
    pub vehicle_labels: Vec<String>,
}

impl PrivacyConfig {
    /// The people finder every detector runs with (see [`crate::infer::PeopleFinder`]).
    pub fn people_finder(&self) -> crate::infer::PeopleFinder {
        crate::infer::PeopleFinder { labels: self.person_labels.clone(), min_score: self.person_min_score }
    }
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            blur_people: true,
            person_labels: vec!["person".into()],
            person_min_score: crate::infer::DEFAULT_PERSON_MIN_SCORE,
            blur_plates: false,
            vehicle_labels: ["car", "truck", "bus", "motorcycle"].map(String::from).to_vec(),
        }
    }
}

/// The judge's sections borrowed from the whole configuration, for validation.
pub struct JudgeSections<'a> {
    pub site: &'a SiteConfig,
    pub taxonomy: &'a TaxonomyConfig,
    pub scenes: &'a BTreeMap<String, SceneConfig>,
    pub tracking: &'a TrackingConfig,
    pub background: &'a BackgroundConfig,
    pub rules: &'a RulesConfig,
    pub tamper: &'a TamperConfig,
    pub privacy: &'a PrivacyConfig,
}

/// The judge's own copy of its sections, as it runs and as `set`/`reload` hand them over: built by
/// the config loader (`Config::judge_settings`), so the judge never sees the whole configuration.
#[derive(Debug, Clone)]
pub struct JudgeSettings {
    /// The box's name in events.
    pub device_id: String,
    /// The backend the second-stage classifiers run on (`inference.backend`).
    pub backend: BackendKind,
    pub site: SiteConfig,
    pub taxonomy: TaxonomyConfig,
    pub scenes: BTreeMap<String, SceneConfig>,
    pub tracking: TrackingConfig,
    pub background: BackgroundConfig,
    pub rules: RulesConfig,
    pub tamper: TamperConfig,
    /// Where the cameras' tamper references are kept (`state_dir/tamper`); the judge reads them
    /// when it opens.
    pub tamper_dir: PathBuf,
    pub privacy: PrivacyConfig,
    /// `[plates]`: how many reads make a track's plate (the reading itself is the infer stage's).
    pub plates: crate::infer::plates::PlateSettings,
}

fn check_unit(key: &str, value: f32) -> Result<(), Invalid> {
    if !(0.0..=1.0).contains(&value) {
        return Err(Invalid::new(key, format!("is {value}; expected a value from 0 to 1")));
    }
    Ok(())
}

fn check_secs(key: &str, value: f64) -> Result<(), Invalid> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(Invalid::new(key, format!("is {value}; expected seconds, 0 or more")));
    }
    Ok(())
}

fn check_action(key: &str, action: &Option<ActionConfig>) -> Result<(), Invalid> {
    if let Some(action) = action {
        if !is_program_name(&action.program) {
            return Err(Invalid::new(
                format!("{key}.program"),
                "is not a program name; expected the name of a file in the actions folder (letters, digits, \
                 '.', '_', '-'), not a path or a command line",
            ));
        }
        check_secs(&format!("{key}.min_interval_secs"), action.min_interval_secs)?;
    }
    Ok(())
}

impl TaxonomyConfig {
    pub fn resolve_paths(&mut self, base: &Path) {
        for mapping in &mut self.mappings {
            absolutise(mapping, base);
        }
        absolutise(&mut self.classifier, base);
    }

    pub fn category_names(&self) -> impl Iterator<Item = &str> {
        self.categories.iter().map(|c| c.name.as_str())
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        if self.categories.is_empty() {
            return Err(Invalid::new("taxonomy.categories", "is empty; expected at least one category"));
        }
        let mut names = HashSet::new();
        for (i, category) in self.categories.iter().enumerate() {
            let key = format!("taxonomy.categories[{i}].name");
            if !is_valid_topic_level(&category.name) || category.name.contains(char::is_whitespace) {
                return Err(Invalid::new(key, format!("is {:?}; expected a short name without spaces", category.name)));
            }
            if category.name == UNKNOWN_CATEGORY {
                return Err(Invalid::new(key, "is \"unknown\", which always exists; choose another name"));
            }
            if !names.insert(category.name.as_str()) {
                return Err(Invalid::new(key, format!("{:?} is used twice", category.name)));
            }
        }
        check_unit("taxonomy.classifier_min_score", self.classifier_min_score)
    }
}

impl RulesConfig {
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(cover) = &mut self.truck_exit.cover_classifier {
            absolutise(&mut cover.manifest, base);
        }
        if let Some(state) = &mut self.overflow.state_classifier {
            absolutise(&mut state.manifest, base);
        }
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        let r = self;
        check_unit("rules.object.min_score", r.object.min_score)?;
        check_secs("rules.object.min_duration_secs", r.object.min_duration_secs)?;
        check_action("rules.object.action", &r.object.action)?;
        check_unit("rules.wrong_bin.min_score", r.wrong_bin.min_score)?;
        check_unit("rules.wrong_bin.min_inside", r.wrong_bin.min_inside)?;
        check_secs("rules.wrong_bin.min_duration_secs", r.wrong_bin.min_duration_secs)?;
        check_action("rules.wrong_bin.action", &r.wrong_bin.action)?;
        check_unit("rules.litter.min_score", r.litter.min_score)?;
        check_secs("rules.litter.after_secs", r.litter.after_secs)?;
        check_secs("rules.litter.clear_secs", r.litter.clear_secs)?;
        check_secs("rules.litter.min_area_px", r.litter.min_area_px)?;
        check_action("rules.litter.action", &r.litter.action)?;
        check_unit("rules.overflow.min_coverage", r.overflow.min_coverage)?;
        check_secs("rules.overflow.after_secs", r.overflow.after_secs)?;
        check_secs("rules.overflow.clear_secs", r.overflow.clear_secs)?;
        check_action("rules.overflow.action", &r.overflow.action)?;
        if let Some(state) = &r.overflow.state_classifier {
            check_unit("rules.overflow.state_classifier.min_score", state.min_score)?;
            if state.on_labels.is_empty() {
                return Err(Invalid::new(
                    "rules.overflow.state_classifier.on_labels",
                    "is empty; expected the classifier's labels for an overflowing bin, e.g. [\"overflowing\"]",
                ));
            }
        }
        check_unit("rules.road_debris.min_score", r.road_debris.min_score)?;
        check_secs("rules.road_debris.after_secs", r.road_debris.after_secs)?;
        check_secs("rules.road_debris.clear_secs", r.road_debris.clear_secs)?;
        check_secs("rules.road_debris.min_area_px", r.road_debris.min_area_px)?;
        check_action("rules.road_debris.action", &r.road_debris.action)?;
        check_unit("rules.truck_exit.min_score", r.truck_exit.min_score)?;
        check_unit("rules.truck_exit.min_travel", r.truck_exit.min_travel)?;
        check_secs("rules.truck_exit.min_duration_secs", r.truck_exit.min_duration_secs)?;
        check_action("rules.truck_exit.action", &r.truck_exit.action)?;
        if r.truck_exit.labels.is_empty() {
            return Err(Invalid::new("rules.truck_exit.labels", "is empty; expected the detector's truck labels"));
        }
        if let Some(cover) = &r.truck_exit.cover_classifier {
            check_unit("rules.truck_exit.cover_classifier.min_score", cover.min_score)?;
            if cover.uncovered_labels.is_empty() {
                return Err(Invalid::new(
                    "rules.truck_exit.cover_classifier.uncovered_labels",
                    "is empty; expected the classifier's labels for an uncovered load",
                ));
            }
        }
        Ok(())
    }
}

impl SceneConfig {
    /// `key` is where the scene sits in the file, e.g. `scenes.gate`.
    pub fn validate(&self, key: &str, categories: &HashSet<&str>) -> Result<(), Invalid> {
        let mut ids = HashSet::new();
        for (i, zone) in self.zones.iter().enumerate() {
            let zone_key = format!("{key}.zones[{i}]");
            if !is_valid_topic_level(&zone.id) {
                return Err(Invalid::new(
                    format!("{zone_key}.id"),
                    format!("is {:?}; expected a non-empty name without '/', '+', '#'", zone.id),
                ));
            }
            if !ids.insert(zone.id.as_str()) {
                return Err(Invalid::new(
                    format!("{zone_key}.id"),
                    format!("{:?} is used twice; zone ids must be unique per camera", zone.id),
                ));
            }
            match (zone.role, &zone.category) {
                (ZoneRole::Bin, None) => {
                    return Err(Invalid::new(
                        format!("{zone_key}.category"),
                        "is missing; a bin zone needs the category of its bin",
                    ))
                }
                (ZoneRole::Bin, Some(category)) if !categories.contains(category.as_str()) => {
                    let mut known: Vec<&str> = categories.iter().copied().collect();
                    known.sort_unstable();
                    return Err(Invalid::new(
                        format!("{zone_key}.category"),
                        format!("is {category:?}; expected one of the taxonomy's categories: {}", known.join(", ")),
                    ));
                }
                (ZoneRole::Bin, Some(_)) | (_, None) => {}
                (_, Some(_)) => {
                    return Err(Invalid::new(format!("{zone_key}.category"), "is only for zones with role = \"bin\""))
                }
            }
            super::zones::Polygon::new(&zone.polygon)
                .map_err(|problem| Invalid::new(format!("{zone_key}.polygon"), problem))?;
        }
        if let Some(h) = &self.ground_homography {
            super::zones::Homography::new(*h)
                .map_err(|problem| Invalid::new(format!("{key}.ground_homography"), problem))?;
        }
        Ok(())
    }
}

impl JudgeSections<'_> {
    /// Checks what the types cannot; `cameras` are the configured camera ids.
    pub fn validate(&self, cameras: &HashSet<&str>) -> Result<(), Invalid> {
        if let Some(station) = &self.site.station_id {
            if !is_valid_topic_level(station) {
                return Err(Invalid::new(
                    "site.station_id",
                    format!("is {station:?}; expected a non-empty name without '/', '+', '#'"),
                ));
            }
        }
        self.taxonomy.validate()?;
        let categories: HashSet<&str> = self.taxonomy.category_names().collect();
        for (camera, scene) in self.scenes {
            let key = format!("scenes.{camera}");
            if !cameras.contains(camera.as_str()) {
                let mut known: Vec<&str> = cameras.iter().copied().collect();
                known.sort_unstable();
                return Err(Invalid::new(
                    key,
                    format!("names no configured camera; expected one of: {}", known.join(", ")),
                ));
            }
            scene.validate(&key, &categories)?;
        }
        // Zero would blur every box of a person label, however unsure; still privacy, never less.
        if !(0.0..=1.0).contains(&self.privacy.person_min_score) {
            return Err(Invalid::new("privacy.person_min_score", "is out of range; expected a score from 0 to 1"));
        }
        let t = &self.tracking;
        if t.vehicle_labels.iter().any(|l| l.trim().is_empty()) {
            return Err(Invalid::new("tracking.vehicle_labels", "holds an empty label; expected detector labels"));
        }
        check_unit("tracking.match_iou", t.match_iou)?;
        check_unit("tracking.stationary_iou", t.stationary_iou)?;
        check_secs("tracking.max_lost_secs", t.max_lost_secs)?;
        check_secs("tracking.stationary_memory_secs", t.stationary_memory_secs)?;
        check_secs("tracking.update_interval_secs", t.update_interval_secs)?;
        if t.score_window == 0 {
            return Err(Invalid::new("tracking.score_window", "is 0; expected 1 or more sightings"));
        }
        let b = self.background;
        if !(16..=1024).contains(&b.grid_width) {
            return Err(Invalid::new("background.grid_width", format!("is {}; expected 16 to 1024", b.grid_width)));
        }
        for (key, secs) in
            [("background.short_term_secs", b.short_term_secs), ("background.long_term_secs", b.long_term_secs)]
        {
            if !(secs.is_finite() && secs > 0.0) {
                return Err(Invalid::new(key, format!("is {secs}; expected seconds above 0")));
            }
        }
        if b.long_term_secs <= b.short_term_secs {
            return Err(Invalid::new(
                "background.long_term_secs",
                format!(
                    "is {}; expected more than background.short_term_secs ({})",
                    b.long_term_secs, b.short_term_secs
                ),
            ));
        }
        if !(b.threshold > 0.0 && b.threshold < 255.0) {
            return Err(Invalid::new("background.threshold", format!("is {}; expected 1 to 254", b.threshold)));
        }
        self.rules.validate()?;
        self.tamper.validate(cameras)?;
        let known_zone = |id: &str| self.scenes.values().any(|s| s.zones.iter().any(|z| z.id == id));
        for (i, zone_id) in self.rules.object.zones.iter().enumerate() {
            if !known_zone(zone_id) {
                return Err(Invalid::new(
                    format!("rules.object.zones[{i}]"),
                    format!("is {zone_id:?}, which no scene defines; expected the id of a zone in [scenes.*]"),
                ));
            }
        }
        Ok(())
    }
}
