//! The plate reader's settings: where its models are and how it decides, and the flow's plate
//! stage: which vehicles have their plate read, where, and how many reads make a track's plate.
//! The `[plates]` config section deserialises into [`PlateSettings`]; the commands fill the
//! reader's part from their options.

use std::path::PathBuf;

use serde::Deserialize;

use crate::base::section::{data_dir, Invalid};

/// The model files, under their upstream names, in the models folder.
pub const DETECTOR_320: &str = "y5fu_320x_sim.onnx";
pub const DETECTOR_640: &str = "y5fu_640x_sim.onnx";
pub const RECOGNISER: &str = "ch_PP-OCRv4_rec_infer.onnx";
pub const COLOUR: &str = "litemodel_cls_96x_r1.onnx";

/// The detector's input size for whole pictures. Crops, and the window around each plate found,
/// always go through the 320 one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(try_from = "u32")]
pub enum DetectorSize {
    /// 320×320: about a third of the 640 one's time; misses more small plates in wide views.
    #[default]
    #[value(name = "320")]
    Small,
    /// 640×640: for wide views where plates are small.
    #[value(name = "640")]
    Large,
}

impl DetectorSize {
    pub fn pixels(self) -> usize {
        match self {
            DetectorSize::Small => 320,
            DetectorSize::Large => 640,
        }
    }

    pub fn file(self) -> &'static str {
        match self {
            DetectorSize::Small => DETECTOR_320,
            DetectorSize::Large => DETECTOR_640,
        }
    }
}

impl TryFrom<u32> for DetectorSize {
    type Error = String;
    fn try_from(value: u32) -> Result<Self, String> {
        match value {
            320 => Ok(DetectorSize::Small),
            640 => Ok(DetectorSize::Large),
            other => Err(format!("detector size {other}; expected 320 or 640")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlateSettings {
    /// The folder holding the plate models (models/README.md): default `models/plates` in the data
    /// folder (`/usr/share/edge-agent/models/plates` for the Debian package).
    #[serde(default = "default_models")]
    pub models: PathBuf,
    #[serde(default)]
    pub detector: DetectorSize,
    /// A detector anchor is a plate from this objectness up (HyperLPR: 0.25).
    #[serde(default = "default_objectness")]
    pub objectness: f32,
    /// Overlapping finds above this IoU are one plate.
    #[serde(default = "default_nms_iou")]
    pub nms_iou: f32,
    /// Find each plate again in a window three times its size around it, for sharper corners.
    #[serde(default = "default_refine")]
    pub refine: bool,
    /// Where the syntax picks another reading than the recogniser's first choice, each of its
    /// characters needs at least this probability at its frames.
    #[serde(default = "default_min_char_probability")]
    pub min_char_probability: f32,
    /// At most this many plates per picture, best first.
    #[serde(default = "default_max_plates")]
    pub max_plates: usize,
    /// The flow reads plates (the models must be in `models`); off by default.
    #[serde(default)]
    pub enabled: bool,
    /// The detector labels whose plate is read: only these vehicles' plates ever become text.
    #[serde(default = "default_labels")]
    pub labels: Vec<String>,
    /// The zones (ids, per camera's scene) where plates are read; empty: the site-exit zones.
    #[serde(default)]
    pub zones: Vec<String>,
    /// A track's plate is confirmed after this many reads of the same text...
    #[serde(default = "default_min_reads")]
    pub min_reads: u32,
    /// ...when at least this share of the track's valid reads say it.
    #[serde(default = "default_min_agreement")]
    pub min_agreement: f32,
    /// The site's registered trucks (plate texts, `京A12345`): a leaving truck whose plate is not
    /// among them is an `unregistered_truck` event. Empty: no such events.
    #[serde(default)]
    pub registered: Vec<String>,
}

/// Most registered plates a site may list.
pub const MAX_REGISTERED: usize = 4096;

/// Whether `text` is written as a plate (the separator dot and spaces allowed).
pub fn is_plate_text(text: &str) -> bool {
    text.chars().count() <= 16 && super::syntax::check(&super::syntax::normalise(text)).is_some()
}

fn default_models() -> PathBuf {
    data_dir().join("models/plates")
}
fn default_objectness() -> f32 {
    0.25
}
fn default_nms_iou() -> f32 {
    0.5
}
fn default_refine() -> bool {
    true
}
fn default_min_char_probability() -> f32 {
    0.2
}
fn default_max_plates() -> usize {
    8
}
fn default_labels() -> Vec<String> {
    vec!["truck".into()]
}
fn default_min_reads() -> u32 {
    3
}
fn default_min_agreement() -> f32 {
    0.6
}

impl Default for PlateSettings {
    fn default() -> Self {
        Self {
            models: default_models(),
            detector: DetectorSize::default(),
            objectness: default_objectness(),
            nms_iou: default_nms_iou(),
            refine: default_refine(),
            min_char_probability: default_min_char_probability(),
            max_plates: default_max_plates(),
            enabled: false,
            labels: default_labels(),
            zones: Vec::new(),
            min_reads: default_min_reads(),
            min_agreement: default_min_agreement(),
            registered: Vec::new(),
        }
    }
}

impl PlateSettings {
    pub fn detector_path(&self) -> PathBuf {
        self.models.join(self.detector.file())
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        let unit = |key: &str, value: f32| -> Result<(), Invalid> {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(Invalid::new(format!("plates.{key}"), format!("is {value}; expected a value from 0 to 1")))
            }
        };
        unit("objectness", self.objectness)?;
        unit("nms_iou", self.nms_iou)?;
        unit("min_char_probability", self.min_char_probability)?;
        unit("min_agreement", self.min_agreement)?;
        if self.min_reads == 0 {
            return Err(Invalid::new("plates.min_reads", "is 0; expected at least 1 read"));
        }
        if self.registered.len() > MAX_REGISTERED {
            return Err(Invalid::new(
                "plates.registered",
                format!("lists {} plates; expected at most {MAX_REGISTERED}", self.registered.len()),
            ));
        }
        if let Some(at) = self.registered.iter().position(|p| !is_plate_text(p)) {
            return Err(Invalid::new(
                format!("plates.registered[{at}]"),
                "is not written as a plate; expected a province character, a letter and 5 or 6 characters (京A12345)",
            ));
        }
        if self.enabled && self.labels.is_empty() {
            return Err(Invalid::new(
                "plates.labels",
                "is empty with plates enabled; expected the vehicle labels to read",
            ));
        }
        if self.max_plates == 0 {
            return Err(Invalid::new("plates.max_plates", "is 0; expected at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_reads_with_defaults_and_refuses_what_it_does_not_know() {
        let settings: PlateSettings = toml::from_str("models = \"/m\"\ndetector = 640\n").unwrap();
        assert_eq!(settings.detector, DetectorSize::Large);
        assert_eq!(settings.detector_path(), PathBuf::from("/m/y5fu_640x_sim.onnx"));
        assert_eq!(settings.objectness, 0.25);
        assert!(settings.validate().is_ok());
        let err = toml::from_str::<PlateSettings>("detector = 416\n").unwrap_err().to_string();
        assert!(err.contains("416") && err.contains("320 or 640"), "{err}");
        assert!(toml::from_str::<PlateSettings>("threshold = 0.3\n").is_err());
        let bad = PlateSettings { min_char_probability: 1.5, ..PlateSettings::default() };
        assert_eq!(bad.validate().unwrap_err().key, "plates.min_char_probability");
        let registered = PlateSettings {
            registered: vec!["浙EA3262".into(), "京A·12345".into(), "rm -rf /".into()],
            ..PlateSettings::default()
        };
        let refused = registered.validate().unwrap_err();
        assert_eq!(refused.key, "plates.registered[2]");
        assert!(!refused.problem.contains("rm"), "no error quotes input: {}", refused.problem);
        assert!(PlateSettings { registered: vec!["浙EA3262".into()], ..PlateSettings::default() }.validate().is_ok());
    }
}
