//! Real pictures and real model output for the judge's tests (compiled for tests only): the sample
//! photos in `models/samples`, composites made from them (a cup pasted into a bin zone), the real
//! detector and classifier, and simulated frame times so a minute of camera time takes no time.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, TimeZone, Utc};
use image::RgbImage;

use crate::infer::config::{BackendKind, ModelConfig};
use crate::infer::{BoundingBox, Detection, Findings, InferredFrame, Model, ModelResult};
use crate::judge::config::ZoneRole;
use crate::judge::zones::{Polygon, Zone};
use crate::source::Frame;
use crate::wire::LifecycleState;
use crate::wire::{Event, EventBox, EventKind, EVENT_SCHEMA_VERSION};

pub fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

pub fn sample(name: &str) -> RgbImage {
    let path = models_dir().join("samples").join(name);
    image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
}

/// coffee.png (the cup on its saucer, on a table) scaled to 300×200 and put down on the pavement
/// at the lower left of dog.jpg; the detector finds the cup at about x 77–198, y 379–493.
pub fn cup_on_pavement() -> RgbImage {
    let coffee = image::imageops::resize(&sample("coffee.png"), 300, 200, image::imageops::FilterType::Triangle);
    paste(&sample("dog.jpg"), &coffee, 2, 374)
}

/// A dark brown patch, 120×60 px, from the table corner of coffee.png: wet muck, a dropped load.
pub fn muck() -> RgbImage {
    image::imageops::crop_imm(&sample("coffee.png"), 10, 10, 120, 60).to_image()
}

/// The truck of dog.jpg (x 457–686, y 80–161).
pub fn dog_jpg_truck() -> RgbImage {
    image::imageops::crop_imm(&sample("dog.jpg"), 452, 74, 240, 94).to_image()
}

/// `base` with `patch` pasted at (x, y).
pub fn paste(base: &RgbImage, patch: &RgbImage, x: u32, y: u32) -> RgbImage {
    let mut out = base.clone();
    image::imageops::replace(&mut out, patch, i64::from(x), i64::from(y));
    out
}

/// A fixed instant plus `secs`: frame times for tests.
pub fn at(secs: f64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_700_000_000_000 + (secs * 1000.0).round() as i64)
        .single()
        .unwrap_or_else(|| unreachable!("a fixed valid timestamp"))
}

pub fn load_model(name: &str) -> Model {
    let manifest = models_dir().join(format!("{name}.toml"));
    Model::load(
        &ModelConfig { manifest, score_threshold: None, class_thresholds: Default::default() },
        BackendKind::Tract,
    )
    .unwrap()
}

/// The real detector, loaded once per test binary.
fn detector() -> &'static Mutex<Model> {
    static DETECTOR: OnceLock<Mutex<Model>> = OnceLock::new();
    DETECTOR.get_or_init(|| Mutex::new(load_model("nanodet")))
}

pub fn detector_result(image: &RgbImage) -> ModelResult {
    let mut detector = detector().lock().unwrap_or_else(|p| p.into_inner());
    detector.infer(image).unwrap()
}

pub fn detect(image: &RgbImage) -> Vec<Detection> {
    match detector_result(image).findings {
        Findings::Detect { detections } => detections,
        Findings::Classify { .. } => unreachable!("nanodet is a detector"),
    }
}

/// One camera frame at `secs` with the real detector's results on `image` (computed by the caller
/// once per picture and reused: the detector is deterministic).
pub fn inferred(camera: &str, image: &Arc<RgbImage>, results: &[ModelResult], secs: f64) -> InferredFrame {
    InferredFrame {
        plates: Vec::new(),
        plates_to_blur: Vec::new(),
        frame: Frame {
            camera: camera.into(),
            sequence: 1,
            captured_at: at(secs),
            image: image.clone(),
            video: None,
            motion: None,
        },
        results: results.to_vec(),
    }
}

/// A rectangular zone from normalised corners.
pub fn zone(id: &str, role: ZoneRole, category: Option<&str>, [x1, y1, x2, y2]: [f64; 4]) -> Zone {
    Zone {
        id: id.into(),
        role,
        category: category.map(String::from),
        polygon: Polygon::new(&[[x1, y1], [x2, y1], [x2, y2], [x1, y2]]).unwrap(),
    }
}

/// How much a picture shows inside a box (pixels, clamped to the picture): the sum of the
/// differences between horizontal neighbours. Blurring lowers it, a copy keeps it.
pub fn detail(image: &RgbImage, [x1, y1, x2, y2]: [u32; 4]) -> u64 {
    let (x2, y2) = (x2.min(image.width()), y2.min(image.height()));
    let mut sum = 0u64;
    for y in y1..y2 {
        for x in x1..x2.saturating_sub(1) {
            let (p, q) = (image.get_pixel(x, y), image.get_pixel(x + 1, y));
            sum += p.0.iter().zip(q.0.iter()).map(|(a, b)| u64::from(a.abs_diff(*b))).sum::<u64>();
        }
    }
    sum
}

/// A box's whole pixels, for [`detail`].
pub fn pixels(b: &BoundingBox) -> [u32; 4] {
    [b.x1.max(0.0) as u32, b.y1.max(0.0) as u32, b.x2.max(0.0) as u32, b.y2.max(0.0) as u32]
}

pub fn test_event(kind: EventKind, state: LifecycleState, time: DateTime<Utc>) -> Event {
    Event {
        schema_version: EVENT_SCHEMA_VERSION,
        event_id: uuid::Uuid::now_v7(),
        revision: 0,
        state,
        reason: None,
        device: "box-1".into(),
        station_id: "station-7".into(),
        grid_cell: None,
        camera: "gate".into(),
        zone: None,
        time,
        start_time: time,
        end_time: None,
        duration_secs: 0.0,
        kind,
        label: "cup".into(),
        category: None,
        bin_category: None,
        score: 0.5,
        bbox: EventBox::from(BoundingBox { x1: 1.0, y1: 2.0, x2: 30.0, y2: 40.0 }),
        frame_width: 768,
        frame_height: 576,
        track_id: None,
        model: None,
        classifier: None,
        area_px: None,
        area_m2: None,
        ground_position_m: None,
        ground_width_m: None,
        coverage: None,
        uncovered: None,
        snapshot_sha256: None,
        evidence: None,
        chain: None,
        plate: None,
    }
}

/// A whole config for stage tests: box `box-1` with state in `state_dir`, replay cameras `demo`,
/// `station`, `yard` and `other`, and `extra` TOML; validated as a start would.
pub fn test_config(state_dir: &Path, extra: &str) -> crate::config::Config {
    let mut text = format!("device_id = \"box-1\"\nstate_dir = {:?}\n", state_dir.display().to_string());
    for camera in ["demo", "station", "yard", "other"] {
        text.push_str(&format!(
            "[[cameras]]\nid = \"{camera}\"\nsource = {{ kind = \"replay\", path = \"frames\" }}\n"
        ));
    }
    text.push_str(extra);
    let config = crate::config::Config::from_toml_str(&text, Path::new("test.toml")).unwrap();
    config.validate(Path::new("test.toml")).unwrap();
    config
}
