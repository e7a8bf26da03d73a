//! Licence plates: find each plate in a picture (y5fu detector, found again in a window around it
//! for sharper corners), straighten it by its four corners, read it (PP-OCRv4, double-row plates row
//! by row, CTC decoded under the plate syntax) and tell its colour. `edge-agent plates` runs it on
//! pictures; the flow's plate stage ([`stage`]) runs it on vehicles, and finds (never reads) the
//! plates of other vehicles with [`PlateFinder`] to blur them (`privacy.blur_plates`).

pub mod colour;
pub mod config;
pub mod ctc;
pub mod detector;
pub mod eval;
pub mod model;
pub mod recogniser;
pub mod stage;
pub mod syntax;
pub mod warp;

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::Serialize;

use crate::infer::config::InferenceConfig;
use crate::infer::{BoundingBox, InferError, ModelId};

pub use colour::PlateColour;
pub use config::{DetectorSize, PlateSettings};
use ctc::LineReading;
use detector::{Detector, Found};
use syntax::{Line, PlateKind};
use warp::Corners;

#[derive(Debug, thiserror::Error)]
pub enum PlateError {
    #[error("plate model {path} {problem}")]
    Model { path: PathBuf, problem: String },
    #[error(
        "plate model {path} does not exist: the plate models folder {folder} must hold {files} (models/README.md \
         says where they come from)"
    )]
    MissingModel { path: PathBuf, folder: PathBuf, files: String },
    #[error(transparent)]
    Infer(#[from] InferError),
}

impl PlateError {
    fn model(path: &Path, problem: impl Into<String>) -> Self {
        PlateError::Model { path: path.to_owned(), problem: problem.into() }
    }
}

/// Where a double-row plate's rows meet, as a share of its height (HyperLPR's split): the top row
/// holds the province and office letter, the bottom one the serial.
const ROW_SPLIT: f32 = 0.4;
/// A crop is read from inside a black border of this share of its longer side, so the detector
/// sees a whole plate with room around it and finds its corners.
const CROP_BORDER: f32 = 0.5;
/// The window around a plate found in a picture reaches this many times the plate's longer side
/// beyond it on each side.
const WINDOW_MARGIN: f32 = 1.0;
/// A plate found in the window is the one found in the picture when their boxes overlap this much.
const WINDOW_MIN_IOU: f32 = 0.1;
/// The window is worth a second detection only when the detector sees the plate in it at least this
/// many times larger than in the whole picture (a plate filling much of the picture is as sharp as
/// it gets).
const WINDOW_MIN_GAIN: f32 = 1.5;

/// One plate read from a picture.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlateRead {
    /// Normalised: digits, capitals and CJK only; a double-row plate's top row first.
    pub text: String,
    /// The mean probability of its characters.
    pub score: f32,
    /// Whether the text is written as a plate's (see `syntax`).
    pub valid: bool,
    /// What the syntax says it is; None when the text is not a plate's.
    pub kind: Option<PlateKind>,
    pub colour: PlateColour,
    pub rows: u8,
    #[serde(rename = "box")]
    pub bbox: BoundingBox,
    /// Top left, top right, bottom right, bottom left, in the picture's pixels.
    pub corners: Corners,
    /// The detector's score (objectness × row score); 0 for a crop read without a detection.
    pub detection_score: f32,
}

pub struct PlateReader {
    settings: PlateSettings,
    /// The 320 detector: crops, windows around plates, and whole pictures unless 640 is asked for.
    window_detector: Detector,
    /// The 640 detector for whole pictures, when asked for.
    scene_detector: Option<Detector>,
    recogniser: recogniser::Recogniser,
    colour: colour::ColourClassifier,
}

impl PlateReader {
    /// Loads the models `settings` names into the backend `inference` asks for.
    pub fn load(settings: &PlateSettings, inference: &InferenceConfig) -> Result<Self, PlateError> {
        if let Err(invalid) = settings.validate() {
            return Err(PlateError::Model {
                path: settings.models.clone(),
                problem: format!("settings: `{}` {}", invalid.key, invalid.problem),
            });
        }
        let folder = &settings.models;
        let mut needed = vec![config::DETECTOR_320, config::RECOGNISER, config::COLOUR];
        if settings.detector == DetectorSize::Large {
            needed.insert(1, config::DETECTOR_640);
        }
        if let Some(missing) = needed.iter().map(|f| folder.join(f)).find(|p| !p.is_file()) {
            return Err(PlateError::MissingModel { path: missing, folder: folder.clone(), files: needed.join(", ") });
        }
        let window_detector = Detector::load(&folder.join(config::DETECTOR_320), 320, inference)?;
        let scene_detector = match settings.detector {
            DetectorSize::Small => None,
            DetectorSize::Large => Some(Detector::load(&settings.detector_path(), 640, inference)?),
        };
        let recogniser = recogniser::Recogniser::load(&folder.join(config::RECOGNISER), inference)?;
        let colour = colour::ColourClassifier::load(&folder.join(config::COLOUR), inference)?;
        // Loading frees copies of the weights that would otherwise stay resident as free heap.
        crate::infer::allocator::release_free_memory();
        Ok(Self { settings: settings.clone(), window_detector, scene_detector, recogniser, colour })
    }

    /// The models in use, for events and reports.
    pub fn models(&self) -> Vec<ModelId> {
        let mut ids = vec![self.window_detector.model.id.clone()];
        ids.extend(self.scene_detector.iter().map(|d| d.model.id.clone()));
        ids.push(self.recogniser.model.id.clone());
        ids.push(self.colour.model.id.clone());
        ids
    }

    /// "tract" or "ort" (after any fallback).
    pub fn backend(&self) -> &'static str {
        self.recogniser.model.backend_name()
    }

    pub fn settings(&self) -> &PlateSettings {
        &self.settings
    }

    /// Where the plates in `picture` are (the 320 detector), best first; nothing is read.
    pub fn find(&mut self, picture: &RgbImage) -> Result<Vec<BoundingBox>, PlateError> {
        find_with(&mut self.window_detector, &self.settings, picture)
    }

    /// Every plate in `picture` with some text read, best detection first.
    pub fn read(&mut self, picture: &RgbImage) -> Result<Vec<PlateRead>, PlateError> {
        let s = &self.settings;
        let (objectness, nms_iou, max_plates) = (s.objectness, s.nms_iou, s.max_plates);
        let detector = self.scene_detector.as_mut().unwrap_or(&mut self.window_detector);
        let found = detector.detect(picture, objectness, nms_iou, max_plates)?;
        let scene_size = detector.size();
        let mut reads = Vec::with_capacity(found.len());
        for plate in found {
            let plate = if self.settings.refine { self.refine(picture, plate, scene_size)? } else { plate };
            if let Some(read) = self.read_found(picture, &plate)? {
                reads.push(read);
            }
        }
        Ok(reads)
    }

    /// Reads `picture` as one plate already cut out: found again inside a border (for its corners),
    /// else read as it is. None when no text could be read.
    pub fn read_crop(&mut self, picture: &RgbImage) -> Result<Option<PlateRead>, PlateError> {
        let (w, h) = picture.dimensions();
        let border = (w.max(h) as f32 * CROP_BORDER) as u32;
        let mut framed = RgbImage::new(w + 2 * border, h + 2 * border);
        image::imageops::replace(&mut framed, picture, border as i64, border as i64);
        let s = &self.settings;
        let found = self.window_detector.detect(&framed, s.objectness, s.nms_iou, 1)?;
        if let Some(plate) = found.into_iter().next() {
            let shift = -(border as f32);
            return Ok(self.read_found(&framed, &plate)?.map(|read| moved(read, shift, shift, w, h)));
        }
        let corners = [[0.0, 0.0], [w as f32, 0.0], [w as f32, h as f32], [0.0, h as f32]];
        let plate = Found {
            bbox: BoundingBox { x1: 0.0, y1: 0.0, x2: w as f32, y2: h as f32 },
            corners,
            score: 0.0,
            double_row: false,
        };
        self.read_plate(picture.clone(), &plate)
    }

    /// The same plate found again in a window around it, where it is larger for the detector; the
    /// plate as first found when the window would not show it much larger than the picture did to a
    /// detector of `scene_size`, or shows none that overlaps it.
    fn refine(&mut self, picture: &RgbImage, plate: Found, scene_size: usize) -> Result<Found, PlateError> {
        let b = plate.bbox;
        let margin = b.width().max(b.height()) * WINDOW_MARGIN;
        let (pw, ph) = (picture.width() as f32, picture.height() as f32);
        let x1 = (b.x1 - margin).clamp(0.0, pw) as u32;
        let y1 = (b.y1 - margin).clamp(0.0, ph) as u32;
        let x2 = (b.x2 + margin).clamp(0.0, pw) as u32;
        let y2 = (b.y2 + margin).clamp(0.0, ph) as u32;
        if x2 < x1 + 4 || y2 < y1 + 4 {
            return Ok(plate);
        }
        let window_scale = self.window_detector.size() as f32 / (x2 - x1).max(y2 - y1) as f32;
        let scene_scale = scene_size as f32 / pw.max(ph);
        if window_scale < WINDOW_MIN_GAIN * scene_scale {
            return Ok(plate);
        }
        let window = image::imageops::crop_imm(picture, x1, y1, x2 - x1, y2 - y1).to_image();
        let s = &self.settings;
        let found = self.window_detector.detect(&window, s.objectness, s.nms_iou, s.max_plates)?;
        let (dx, dy) = (x1 as f32, y1 as f32);
        let within = BoundingBox { x1: b.x1 - dx, y1: b.y1 - dy, x2: b.x2 - dx, y2: b.y2 - dy };
        let best = found
            .into_iter()
            .filter(|f| crate::infer::detect::iou(&f.bbox, &within) >= WINDOW_MIN_IOU)
            .max_by(|a, b| a.score.total_cmp(&b.score));
        Ok(match best {
            Some(f) => Found {
                bbox: BoundingBox { x1: f.bbox.x1 + dx, y1: f.bbox.y1 + dy, x2: f.bbox.x2 + dx, y2: f.bbox.y2 + dy },
                corners: f.corners.map(|[x, y]| [x + dx, y + dy]),
                score: f.score,
                double_row: f.double_row,
            },
            None => plate,
        })
    }

    fn read_found(&mut self, picture: &RgbImage, plate: &Found) -> Result<Option<PlateRead>, PlateError> {
        match warp::straighten(picture, &plate.corners) {
            Some(straight) => self.read_plate(straight, plate),
            None => Ok(None),
        }
    }

    /// Reads a straightened plate: colour first (a green plate may be a new-energy one), then the
    /// text, row by row for a double-row plate.
    fn read_plate(&mut self, straight: RgbImage, plate: &Found) -> Result<Option<PlateRead>, PlateError> {
        let colour = self.colour.classify(&straight)?;
        let floor = self.settings.min_char_probability;
        let (w, h) = straight.dimensions();
        let split = (h as f32 * ROW_SPLIT) as u32;
        let double_row = plate.double_row && split > 0 && split < h;
        let (reading, rows) = if double_row {
            let top = image::imageops::crop_imm(&straight, 0, 0, w, split).to_image();
            let bottom = image::imageops::crop_imm(&straight, 0, split, w, h - split).to_image();
            let top = self.recogniser.read(&top, Line::Top, floor)?;
            let bottom = self.recogniser.read(&bottom, Line::Bottom, floor)?;
            (join_rows(top, bottom), 2)
        } else {
            let line = if colour == PlateColour::Green { Line::WholeGreen } else { Line::Whole };
            (self.recogniser.read(&straight, line, floor)?, 1)
        };
        if reading.text.is_empty() {
            return Ok(None);
        }
        // The text is surer than the classifier where it tells the colour: police plates are
        // white (the classifier has no white), new-energy ones green.
        let colour = match reading.kind {
            Some(PlateKind::Police) => PlateColour::White,
            Some(PlateKind::NewEnergy) => PlateColour::Green,
            _ => colour,
        };
        Ok(Some(PlateRead {
            score: reading.score(),
            text: reading.text,
            valid: reading.kind.is_some(),
            kind: reading.kind,
            colour,
            rows,
            bbox: plate.bbox,
            corners: plate.corners,
            detection_score: plate.score,
        }))
    }
}

/// The plate detector alone, for blurring the plates of vehicles whose plates are not read: where
/// plates are, never what they say. Loaded when `privacy.blur_plates` is on and the plate reader
/// is not (the reader finds them with its own detector).
pub struct PlateFinder {
    detector: Detector,
    settings: PlateSettings,
}

impl PlateFinder {
    pub fn load(settings: &PlateSettings, inference: &InferenceConfig) -> Result<Self, PlateError> {
        let path = settings.models.join(config::DETECTOR_320);
        if !path.is_file() {
            return Err(PlateError::MissingModel {
                path,
                folder: settings.models.clone(),
                files: config::DETECTOR_320.to_string(),
            });
        }
        let detector = Detector::load(&path, 320, inference)?;
        Ok(Self { detector, settings: settings.clone() })
    }

    pub fn find(&mut self, picture: &RgbImage) -> Result<Vec<BoundingBox>, PlateError> {
        find_with(&mut self.detector, &self.settings, picture)
    }

    /// "tract" or "ort" (after any fallback).
    pub fn backend(&self) -> &'static str {
        self.detector.model.backend_name()
    }
}

/// The boxes of the plates `detector` finds in `picture`, best first, at most `max_plates`.
fn find_with(detector: &mut Detector, s: &PlateSettings, picture: &RgbImage) -> Result<Vec<BoundingBox>, PlateError> {
    Ok(detector.detect(picture, s.objectness, s.nms_iou, s.max_plates)?.into_iter().map(|f| f.bbox).collect())
}

/// A double-row plate's reading: its rows one after the other; a plate when both rows are.
fn join_rows(top: LineReading, bottom: LineReading) -> LineReading {
    let kind = match (top.kind, bottom.kind) {
        (Some(_), Some(kind)) => Some(kind),
        _ => None,
    };
    let mut probabilities = top.probabilities;
    probabilities.extend(bottom.probabilities);
    LineReading { text: top.text + &bottom.text, probabilities, kind }
}

/// `read` with its box and corners moved by (dx, dy), the box kept inside a w×h picture.
fn moved(mut read: PlateRead, dx: f32, dy: f32, w: u32, h: u32) -> PlateRead {
    let b = read.bbox;
    let (w, h) = (w as f32, h as f32);
    read.bbox = BoundingBox {
        x1: (b.x1 + dx).clamp(0.0, w),
        y1: (b.y1 + dy).clamp(0.0, h),
        x2: (b.x2 + dx).clamp(0.0, w),
        y2: (b.y2 + dy).clamp(0.0, h),
    };
    read.corners = read.corners.map(|[x, y]| [x + dx, y + dy]);
    read
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::infer::config::BackendKind;

    /// The licence-plate set beside the checkout (`../shared/lpr`, or $EDGE_AGENT_LPR): required in
    /// CI, skipped with a message elsewhere.
    pub(crate) fn lpr_dir() -> Option<PathBuf> {
        let dir = std::env::var_os("EDGE_AGENT_LPR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/lpr"));
        if dir.join("labels.csv").is_file() {
            return Some(dir);
        }
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("the licence-plate set is required in CI: {} has no labels.csv", dir.display());
        }
        eprintln!("SKIPPED: no licence-plate set at {} (set EDGE_AGENT_LPR)", dir.display());
        None
    }

    pub(crate) fn lpr_models() -> PathBuf {
        lpr_dir().map(|d| d.join("models")).unwrap_or_else(|| PathBuf::from("/nonexistent"))
    }

    fn picture(dir: &Path, name: &str) -> RgbImage {
        image::open(dir.join("images").join(name)).unwrap().to_rgb8()
    }

    fn reader(models: &Path, detector: DetectorSize, inference: &InferenceConfig) -> PlateReader {
        let settings = PlateSettings { models: models.to_owned(), detector, ..PlateSettings::default() };
        PlateReader::load(&settings, inference).unwrap()
    }

    fn tract() -> InferenceConfig {
        InferenceConfig { backend: BackendKind::Tract, ..InferenceConfig::default() }
    }

    /// Pictures from each source and kind, with their labelled text: yellow truck plates at a toll
    /// gate, a double-row plate, blue plates in street scenes.
    const SCENES: &[(&str, &str)] = &[
        ("scene_hlprbad2_003.png", "沪B14292"),
        ("scene_hlpr_02.jpg", "蒙A70531"),
        ("scene_easypr_099.jpg", "湘AY4936"),
    ];

    fn check_scenes(reader: &mut PlateReader, dir: &Path) -> Vec<Vec<String>> {
        let mut texts = Vec::new();
        for (name, _) in SCENES {
            let reads = reader.read(&picture(dir, name)).unwrap();
            texts.push(reads.iter().map(|r| r.text.clone()).collect::<Vec<_>>());
        }
        texts
    }

    #[test]
    fn tract_reads_a_yellow_truck_plate_and_a_double_row_one() {
        let Some(dir) = lpr_dir() else { return };
        let mut reader = reader(&dir.join("models"), DetectorSize::Small, &tract());
        assert_eq!(reader.backend(), "tract");
        let reads = reader.read(&picture(&dir, "scene_hlprbad2_003.png")).unwrap();
        let plate = reads.iter().find(|r| r.text == "沪B14292").unwrap_or_else(|| panic!("{reads:?}"));
        assert_eq!((plate.colour, plate.rows, plate.kind), (PlateColour::Yellow, 1, Some(PlateKind::Standard)));
        assert!(plate.score > 0.8, "{plate:?}");
        // The labelled box of this plate: 138 335 339 421.
        let labelled = BoundingBox { x1: 138.0, y1: 335.0, x2: 339.0, y2: 421.0 };
        assert!(crate::infer::detect::iou(&plate.bbox, &labelled) > 0.5, "{plate:?}");
        let reads = reader.read(&picture(&dir, "scene_hlpr_02.jpg")).unwrap();
        let plate = reads.iter().find(|r| r.text == "蒙A70531").unwrap_or_else(|| panic!("{reads:?}"));
        assert_eq!((plate.colour, plate.rows), (PlateColour::Yellow, 2));
    }

    #[test]
    fn a_crop_is_read_through_the_detector_and_a_tiny_one_as_it_is() {
        let Some(dir) = lpr_dir() else { return };
        let mut reader = reader(&dir.join("models"), DetectorSize::Small, &tract());
        let crop = picture(&dir, "crop_hlprbad2_003.png");
        let read = reader.read_crop(&crop).unwrap().expect("a plate");
        assert_eq!(read.text, "沪B14292");
        assert!(read.detection_score > 0.0, "found by the detector: {read:?}");
        assert!(read.bbox.x2 <= crop.width() as f32 && read.bbox.x1 >= 0.0, "{read:?}");
        // 1×1: nothing to find, nothing to read.
        assert_eq!(reader.read_crop(&RgbImage::new(1, 1)).unwrap(), None);
        assert_eq!(reader.read(&RgbImage::new(1, 1)).unwrap(), Vec::new());
    }

    #[test]
    fn a_picture_without_plates_gives_none() {
        let Some(dir) = lpr_dir() else { return };
        let mut reader = reader(&dir.join("models"), DetectorSize::Small, &tract());
        let coffee =
            image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/samples/coffee.png")).unwrap().to_rgb8();
        assert_eq!(reader.read(&coffee).unwrap(), Vec::new());
    }

    #[test]
    fn a_missing_or_corrupt_model_file_is_named() {
        let Some(dir) = lpr_dir() else { return };
        let empty = tempfile::tempdir().unwrap();
        let settings = PlateSettings { models: empty.path().to_owned(), ..PlateSettings::default() };
        let err = PlateReader::load(&settings, &tract()).err().expect("refused").to_string();
        assert!(err.contains("y5fu_320x_sim.onnx") && err.contains("does not exist"), "{err}");
        for file in [config::DETECTOR_320, config::RECOGNISER, config::COLOUR] {
            std::fs::copy(dir.join("models").join(file), empty.path().join(file)).unwrap();
        }
        // The recogniser cut short: the file is named and the reader does not load.
        let recogniser = empty.path().join(config::RECOGNISER);
        let bytes = std::fs::read(&recogniser).unwrap();
        std::fs::write(&recogniser, &bytes[..bytes.len() / 2]).unwrap();
        let err = PlateReader::load(&settings, &tract()).err().expect("refused").to_string();
        assert!(err.contains(&recogniser.display().to_string()), "{err}");
        // Garbage in place of the colour model.
        std::fs::write(&recogniser, &bytes).unwrap();
        let colour = empty.path().join(config::COLOUR);
        std::fs::write(&colour, b"not a model at all").unwrap();
        let err = PlateReader::load(&settings, &tract()).err().expect("refused").to_string();
        assert!(err.contains(&colour.display().to_string()), "{err}");
    }

    #[cfg(feature = "ort")]
    #[test]
    fn ort_and_tract_read_the_same_texts() {
        let Some(dir) = lpr_dir() else { return };
        let Some(inference) = crate::infer::tests::ort_inference() else { return };
        for size in [DetectorSize::Small, DetectorSize::Large] {
            let mut on_ort = reader(&dir.join("models"), size, &inference);
            assert_eq!(on_ort.backend(), "ort");
            let from_ort = check_scenes(&mut on_ort, &dir);
            let from_tract = check_scenes(&mut reader(&dir.join("models"), size, &tract()), &dir);
            assert_eq!(from_ort, from_tract, "{size:?}");
            for ((_, label), texts) in SCENES.iter().zip(&from_ort) {
                assert!(texts.iter().any(|t| t == label), "{size:?}: {label} not in {texts:?}");
            }
        }
    }
}
