//! The infer stage: a frame in, typed model results out. A [`Model`] is a verified manifest, the
//! pre-processing it asks for, a [`Backend`] that runs the ONNX graph, and the decoder that turns
//! raw outputs into [`Detection`]s (boxes in frame pixels) or [`Classification`]s.

pub mod classify;
pub mod config;
pub mod control;
pub mod detect;
pub mod manifest;
pub mod preprocess;
pub mod tract;
pub mod worker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{BackendKind, ModelConfig};
use crate::source::Frame;
use manifest::{DecoderSpec, Manifest, ManifestError, Task, VerifiedModel};
use preprocess::Preprocessor;

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{backend} cannot load model {path}: {message}")]
    Load { path: PathBuf, backend: &'static str, message: String },
    #[error("{backend} inference failed: {message}")]
    Run { backend: &'static str, message: String },
    #[error("unexpected model output: {message}")]
    Output { message: String },
}

/// A box in pixels, (x1, y1) top left, (x2, y2) bottom right.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BoundingBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BoundingBox {
    pub fn width(&self) -> f32 {
        (self.x2 - self.x1).max(0.0)
    }
    pub fn height(&self) -> f32 {
        (self.y2 - self.y1).max(0.0)
    }
    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    pub class_id: usize,
    pub label: String,
    pub score: f32,
    /// In frame pixels once it leaves [`Model::infer`].
    pub bbox: BoundingBox,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    pub class_id: usize,
    pub label: String,
    pub score: f32,
}

/// One raw output tensor of a model, always f32.
#[derive(Debug, Clone)]
pub struct Output {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Output {
    fn last_dim(&self) -> usize {
        self.shape.last().copied().unwrap_or(0)
    }
    /// Number of rows of a `[1, rows, last]` output.
    fn rows(&self) -> usize {
        self.data.len() / self.last_dim().max(1)
    }
}

/// Runs an ONNX graph. Implementations: tract (always), ONNX Runtime (cargo feature `ort`).
pub trait Backend: Send {
    fn name(&self) -> &'static str;
    /// The execution provider actually in use, e.g. "cpu" or "cuda".
    fn execution_provider(&self) -> String;
    fn run(&mut self, input: &[f32], shape: &[usize]) -> Result<Vec<Output>, InferError>;
}

pub fn load_backend(kind: BackendKind, model: &VerifiedModel) -> Result<Box<dyn Backend>, InferError> {
    match kind {
        BackendKind::Tract => Ok(Box::new(tract::TractBackend::load(model)?)),
    }
}

/// What a model found in one frame.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "task", rename_all = "lowercase")]
pub enum Findings {
    Detect { detections: Vec<Detection> },
    Classify { classes: Vec<Classification> },
}

/// Name and hash that identify the exact model an event came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ModelId {
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelResult {
    pub model: ModelId,
    pub findings: Findings,
    #[serde(serialize_with = "serialize_millis")]
    pub latency: Duration,
}

fn serialize_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// A frame with every model's findings: the message from infer to judge.
#[derive(Debug, Clone)]
pub struct InferredFrame {
    pub frame: Frame,
    pub results: Vec<ModelResult>,
}

/// What the status page and MQTT status say about a loaded model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub sha256: String,
    pub task: Task,
    pub backend: &'static str,
    pub execution_provider: String,
}

pub struct Model {
    id: ModelId,
    manifest: Manifest,
    labels: Vec<String>,
    backend: Box<dyn Backend>,
    preprocessor: Preprocessor,
    score_threshold: f32,
    /// Per label, over `score_threshold` (site calibration).
    class_thresholds: BTreeMap<String, f32>,
}

impl Model {
    /// Reads the manifest, verifies the model file against it and loads it into the backend.
    pub fn load(config: &ModelConfig, backend: BackendKind) -> Result<Self, InferError> {
        let manifest = Manifest::load(&config.manifest)?;
        let verified = manifest.verify()?;
        let backend = load_backend(backend, &verified)?;
        Ok(Self::with_backend(verified, backend, config.score_threshold)
            .with_class_thresholds(config.class_thresholds.clone()))
    }

    pub fn with_backend(verified: VerifiedModel, backend: Box<dyn Backend>, threshold: Option<f32>) -> Self {
        let manifest = verified.manifest;
        let preprocessor = Preprocessor::new(manifest.input.clone(), manifest.input_size());
        let manifest_threshold = match manifest.decoder {
            DecoderSpec::Softmax { score_threshold, .. } | DecoderSpec::Nanodet { score_threshold, .. } => {
                score_threshold
            }
        };
        Self {
            id: ModelId { name: manifest.name.clone(), sha256: manifest.sha256.to_lowercase() },
            labels: verified.labels,
            backend,
            preprocessor,
            score_threshold: threshold.unwrap_or(manifest_threshold),
            class_thresholds: BTreeMap::new(),
            manifest,
        }
    }

    /// Keeps a finding of a listed label only from its own threshold up (other labels keep the
    /// model's threshold).
    pub fn with_class_thresholds(mut self, class_thresholds: BTreeMap<String, f32>) -> Self {
        self.class_thresholds = class_thresholds;
        self
    }

    /// The labels the model can give, in its output order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn task(&self) -> Task {
        self.manifest.task
    }

    /// The score a finding needs when its label has no threshold of its own.
    pub fn score_threshold(&self) -> f32 {
        self.score_threshold
    }

    fn keeps(&self, label: &str, score: f32) -> bool {
        score >= self.class_thresholds.get(label).copied().unwrap_or(self.score_threshold)
    }

    /// Decoding keeps everything a class threshold might still want; `keeps` then decides.
    fn decode_threshold(&self) -> f32 {
        self.class_thresholds.values().copied().fold(self.score_threshold, f32::min)
    }

    pub fn id(&self) -> &ModelId {
        &self.id
    }

    /// Overrides the manifest's score threshold; None returns to it (the `set` command).
    pub fn set_score_threshold(&mut self, threshold: Option<f32>) {
        let manifest_threshold = match self.manifest.decoder {
            DecoderSpec::Softmax { score_threshold, .. } | DecoderSpec::Nanodet { score_threshold, .. } => {
                score_threshold
            }
        };
        self.score_threshold = threshold.unwrap_or(manifest_threshold);
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            name: self.id.name.clone(),
            sha256: self.id.sha256.clone(),
            task: self.manifest.task,
            backend: self.backend.name(),
            execution_provider: self.backend.execution_provider(),
        }
    }

    /// Pre-process, run, decode; boxes come back in the frame's pixels.
    pub fn infer(&mut self, image: &image::RgbImage) -> Result<ModelResult, InferError> {
        let started = Instant::now();
        let shape = self.manifest.input.shape.clone();
        let (tensor, transform) = self.preprocessor.run(image);
        let outputs = self.backend.run(tensor, &shape)?;
        let findings = match &self.manifest.decoder {
            DecoderSpec::Softmax { top_k, .. } => {
                let mut classes = classify::top_k(&outputs, &self.labels, *top_k, self.decode_threshold())?;
                classes.retain(|c| self.keeps(&c.label, c.score));
                Findings::Classify { classes }
            }
            DecoderSpec::Nanodet { bins, nms_iou, max_detections, .. } => {
                let raw = detect::decode_nanodet(
                    &outputs,
                    self.manifest.input_size(),
                    *bins,
                    &self.labels,
                    self.decode_threshold(),
                )?;
                // Class-aware NMS only lets a box suppress a better-scoring one of its class, so
                // filtering per class before it gives what filtering after it would.
                let raw = raw.into_iter().filter(|d| self.keeps(&d.label, d.score)).collect();
                let mut detections = detect::non_maximum_suppression(raw, *nms_iou, *max_detections);
                for d in &mut detections {
                    d.bbox = transform.to_frame(d.bbox);
                }
                Findings::Detect { detections }
            }
        };
        Ok(ModelResult { model: self.id.clone(), findings, latency: started.elapsed() })
    }
}

/// Loads every configured model; the first failure names the model file and what is wrong.
pub fn load_models(configs: &[ModelConfig], backend: BackendKind) -> Result<Vec<Model>, InferError> {
    configs.iter().map(|c| Model::load(c, backend)).collect()
}

/// Runs every model on a frame: the infer stage's unit of work.
pub fn infer_frame(models: &mut [Model], frame: Frame) -> (InferredFrame, Vec<(ModelId, InferError)>) {
    let mut results = Vec::with_capacity(models.len());
    let mut failures = Vec::new();
    let image: Arc<image::RgbImage> = frame.image.clone();
    for model in models.iter_mut() {
        match model.infer(&image) {
            Ok(result) => results.push(result),
            Err(e) => failures.push((model.id().clone(), e)),
        }
    }
    (InferredFrame { frame, results }, failures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn model(name: &str) -> Model {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../models/{name}.toml"));
        Model::load(
            &ModelConfig { manifest, score_threshold: None, class_thresholds: Default::default() },
            BackendKind::Tract,
        )
        .unwrap()
    }

    fn sample(name: &str) -> image::RgbImage {
        image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/samples").join(name)).unwrap().to_rgb8()
    }

    #[test]
    fn nanodet_on_tract_finds_the_truck_in_dog_jpg() {
        let mut detector = model("nanodet");
        let result = detector.infer(&sample("dog.jpg")).unwrap();
        let Findings::Detect { detections } = result.findings else { panic!("detector gave classes") };
        let truck = detections.iter().find(|d| d.label == "truck").expect("a truck");
        // ONNX Runtime on the same model: truck 0.37, box x 457–685, y 79–159.
        let reference = BoundingBox { x1: 457.0, y1: 79.0, x2: 685.0, y2: 159.0 };
        assert!(detect::iou(&truck.bbox, &reference) >= 0.8, "{truck:?}");
        assert!((truck.score - 0.37).abs() < 0.05, "{truck:?}");
        assert!(detections.iter().any(|d| d.label == "bicycle"));
        assert!(detections.iter().any(|d| d.label == "dog"));
    }

    /// A site's per-class thresholds: above the model's 0.3 they hide a class, below it they let
    /// weaker finds of that class through, and other classes keep 0.3.
    #[test]
    fn class_thresholds_raise_and_lower_single_labels() {
        let image = sample("dog.jpg");
        let labels_scores = |thresholds: &[(&str, f32)]| {
            let map = thresholds.iter().map(|(l, t)| (l.to_string(), *t)).collect();
            let mut detector = model("nanodet").with_class_thresholds(map);
            let Findings::Detect { detections } = detector.infer(&image).unwrap().findings else {
                panic!("detector gave classes")
            };
            detections.into_iter().map(|d| (d.label, d.score)).collect::<Vec<_>>()
        };
        let plain = labels_scores(&[]);
        assert!(plain.iter().all(|(_, s)| *s >= 0.3), "{plain:?}");
        assert!(plain.iter().any(|(l, _)| l == "truck"), "{plain:?}");
        let stricter = labels_scores(&[("truck", 0.5)]);
        assert!(!stricter.iter().any(|(l, _)| l == "truck"), "{stricter:?}");
        assert_eq!(stricter.len(), plain.len() - 1, "only the truck goes: {stricter:?}");
        let looser = labels_scores(&[("bicycle", 0.15)]);
        let bicycles: Vec<f32> = looser.iter().filter(|(l, _)| l == "bicycle").map(|(_, s)| *s).collect();
        assert!(bicycles.len() >= 3 && bicycles.iter().any(|s| *s < 0.3), "{looser:?}");
        assert!(looser.iter().all(|(l, s)| l == "bicycle" || *s >= 0.3), "{looser:?}");
    }

    #[test]
    fn efficientnet_on_tract_sees_an_espresso_in_coffee_png() {
        let mut classifier = model("efficientnet_lite0");
        let result = classifier.infer(&sample("coffee.png")).unwrap();
        let Findings::Classify { classes } = result.findings else { panic!("classifier gave boxes") };
        assert_eq!(classes[0].label, "espresso", "{classes:?}");
        assert!(classes[0].score > 0.8, "{classes:?}");
    }
}
