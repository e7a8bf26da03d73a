//! The infer stage: a frame in, typed model results out. A [`Model`] is a verified manifest, the
//! pre-processing it asks for, a [`Backend`] that runs the ONNX graph, and the decoder that turns
//! raw outputs into [`Detection`]s (boxes in frame pixels) or [`Classification`]s.

pub mod allocator;
pub mod classify;
pub mod config;
pub mod control;
pub mod detect;
pub mod embedding;
pub mod manifest;
#[cfg(feature = "ort")]
pub mod ort;
pub mod plates;
pub mod preprocess;
pub mod regions;
pub mod tract;
pub mod worker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::source::Frame;
use config::{BackendKind, InferenceConfig, ModelConfig};
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
    /// The backend panicked inside a run: counted as a failed run, the worker goes on.
    #[error("the {backend} backend crashed (panic) while running the model: {message}")]
    Panicked { backend: &'static str, message: String },
    #[error(
        "ONNX Runtime library {path} (from {origin}) {problem}; edge-agent needs ONNX Runtime {needed} or newer \
         (scripts/fetch-onnxruntime.sh fetches one)"
    )]
    RuntimeLibrary { path: PathBuf, origin: &'static str, problem: String, needed: String },
    #[error(
        "model manifest {manifest} has no [embedding] section naming the tensor before the logits \
         (e.g. output = \"/Reshape_output_0\", size = 1280)"
    )]
    NoEmbedding { manifest: PathBuf },
    #[error("model file {path}: cannot expose the embedding: {source}")]
    Embedding { path: PathBuf, source: embedding::GraphEditError },
    #[error("backend \"ort\" was asked for, but this edge-agent was built without the cargo feature `ort`")]
    OrtNotBuilt,
    #[error(
        "none of the execution providers {wanted:?} (`inference.execution_providers`) works with ONNX Runtime \
         {version}; it offers {available:?}. Add \"cpu\" to the list to allow running on the CPU"
    )]
    NoExecutionProvider { wanted: Vec<String>, version: String, available: Vec<String> },
}

impl InferError {
    /// The backend itself cannot start here (as opposed to a bad model or frame): the case
    /// `inference.fallback` is for.
    pub fn is_backend_unavailable(&self) -> bool {
        matches!(
            self,
            InferError::RuntimeLibrary { .. } | InferError::OrtNotBuilt | InferError::NoExecutionProvider { .. }
        )
    }
}

/// A box in pixels, (x1, y1) top left, (x2, y2) bottom right.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BoundingBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

/// An event's box is rounded to whole pixels for the wire.
impl From<BoundingBox> for crate::wire::EventBox {
    fn from(b: BoundingBox) -> Self {
        Self { x1: b.x1.round() as i32, y1: b.y1.round() as i32, x2: b.x2.round() as i32, y2: b.y2.round() as i32 }
    }
}

impl From<crate::wire::EventBox> for BoundingBox {
    fn from(b: crate::wire::EventBox) -> Self {
        Self { x1: b.x1 as f32, y1: b.y1 as f32, x2: b.x2 as f32, y2: b.y2 as f32 }
    }
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

/// The box grown by `margin` of its size on each side, clipped to the image; None if empty.
pub fn crop_with_margin(image: &image::RgbImage, b: &BoundingBox, margin: f32) -> Option<image::RgbImage> {
    let (x1, y1, x2, y2) = crop_rect(image.width(), image.height(), b, margin)?;
    Some(image::imageops::crop_imm(image, x1, y1, x2 - x1, y2 - y1).to_image())
}

/// The pixels (x1, y1, x2, y2) that [`crop_with_margin`] cuts from a `width`×`height` image: the
/// box grown by `margin` of its size on each side, kept inside the image; None when too small.
pub fn crop_rect(width: u32, height: u32, b: &BoundingBox, margin: f32) -> Option<(u32, u32, u32, u32)> {
    let (w, h) = (width as f32, height as f32);
    let (mx, my) = (b.width() * margin, b.height() * margin);
    let x1 = (b.x1 - mx).floor().clamp(0.0, w);
    let y1 = (b.y1 - my).floor().clamp(0.0, h);
    let x2 = (b.x2 + mx).ceil().clamp(0.0, w);
    let y2 = (b.y2 + my).ceil().clamp(0.0, h);
    if x2 - x1 < 2.0 || y2 - y1 < 2.0 {
        return None;
    }
    Some((x1 as u32, y1 as u32, x2 as u32, y2 as u32))
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
    /// Runs the graph on one input tensor and writes every output into `outputs`, reusing the
    /// buffers already there so a steady stream of frames does not allocate.
    fn run(&mut self, input: &[f32], shape: &[usize], outputs: &mut Vec<Output>) -> Result<(), InferError>;
}

/// Copies one backend output into slot `index` of `outputs`, reusing that slot's buffers.
pub(crate) fn store_output(outputs: &mut Vec<Output>, index: usize, name: &str, shape: &[usize], data: &[f32]) {
    if outputs.len() <= index {
        outputs.resize_with(index + 1, || Output { name: String::new(), shape: Vec::new(), data: Vec::new() });
    }
    let slot = &mut outputs[index];
    if slot.name != name {
        slot.name = name.to_string();
    }
    slot.shape.clear();
    slot.shape.extend_from_slice(shape);
    slot.data.clear();
    slot.data.extend_from_slice(data);
}

/// Loads `model` (whose file is `bytes`) into the configured backend; when that backend cannot start
/// here and `inference.fallback` names another, says why and loads it there instead.
pub fn load_backend(
    inference: &InferenceConfig,
    model: &VerifiedModel,
    bytes: Vec<u8>,
) -> Result<Box<dyn Backend>, InferError> {
    load_graph_backend(inference, &model.manifest.name, &model.onnx_path, &model.manifest.input.shape, bytes)
}

/// As [`load_backend`] for a model without a manifest (the plate models): `name` is for the log,
/// `path` for errors, `input_shape` the first input's shape (tract fixes it when it plans the graph).
pub fn load_graph_backend(
    inference: &InferenceConfig,
    name: &str,
    path: &std::path::Path,
    input_shape: &[usize],
    bytes: Vec<u8>,
) -> Result<Box<dyn Backend>, InferError> {
    let tract = |bytes| -> Result<Box<dyn Backend>, InferError> {
        Ok(Box::new(tract::TractBackend::load_graph(path, bytes, input_shape, inference.intra_op_threads)?))
    };
    match inference.backend {
        BackendKind::Tract => tract(bytes),
        BackendKind::Ort => match load_ort(inference, path, &bytes) {
            Err(e) if e.is_backend_unavailable() => match inference.fallback {
                Some(BackendKind::Tract) => {
                    tracing::warn!(model = %name, "{e}; using backend \"tract\" instead (`inference.fallback`)");
                    tract(bytes)
                }
                _ => Err(e),
            },
            other => other,
        },
    }
}

#[cfg(feature = "ort")]
fn load_ort(inference: &InferenceConfig, path: &std::path::Path, bytes: &[u8]) -> Result<Box<dyn Backend>, InferError> {
    Ok(Box::new(ort::OrtBackend::load_graph(path, bytes, inference)?))
}

#[cfg(not(feature = "ort"))]
fn load_ort(_: &InferenceConfig, _: &std::path::Path, _: &[u8]) -> Result<Box<dyn Backend>, InferError> {
    Err(InferError::OrtNotBuilt)
}

/// What a model found in one frame.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "task", rename_all = "lowercase")]
pub enum Findings {
    Detect { detections: Vec<Detection> },
    Classify { classes: Vec<Classification> },
}

/// Name and hash that identify the exact model a result (and an event) came from.
pub use crate::wire::ModelId;

#[derive(Debug, Clone, Serialize)]
pub struct ModelResult {
    pub model: ModelId,
    pub findings: Findings,
    #[serde(serialize_with = "serialize_millis")]
    pub latency: Duration,
    /// Where people are, for privacy: found by the model's [`PeopleFinder`], whatever threshold
    /// decides events, so no event setting can make a person sharp.
    #[serde(skip)]
    pub people: Vec<BoundingBox>,
}

/// Which detections are people, for privacy: every box of these labels from `min_score` up
/// (`privacy.person_labels`, `privacy.person_min_score`, config file only). Low on purpose: a
/// box that may be a person is blurred.
#[derive(Debug, Clone, PartialEq)]
pub struct PeopleFinder {
    pub labels: Vec<String>,
    pub min_score: f32,
}

/// `privacy.person_min_score` unless the config file says otherwise.
pub const DEFAULT_PERSON_MIN_SCORE: f32 = 0.15;

impl Default for PeopleFinder {
    fn default() -> Self {
        Self { labels: vec!["person".into()], min_score: DEFAULT_PERSON_MIN_SCORE }
    }
}

fn serialize_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// A frame with every model's findings: the message from infer to judge.
#[derive(Debug, Clone)]
pub struct InferredFrame {
    pub frame: Frame,
    pub results: Vec<ModelResult>,
    /// The plates read on the vehicles the site wants read ([`plates::stage`]); empty without.
    pub plates: Vec<plates::stage::VehiclePlate>,
    /// With `privacy.blur_plates`: the plates of the other vehicles (or whole vehicles), in frame
    /// pixels, for the evidence stage to blur.
    pub plates_to_blur: Vec<BoundingBox>,
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

/// Where one inference spent its time: pre-processing, the backend, decoding. For `bench`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    pub pre: Duration,
    pub run: Duration,
    pub post: Duration,
}

/// Most people boxes one frame keeps for blurring (a crowd beyond this is blurred as far as found).
const MAX_PEOPLE: usize = 300;

pub struct Model {
    id: ModelId,
    manifest: Manifest,
    labels: Vec<String>,
    backend: Box<dyn Backend>,
    preprocessor: Preprocessor,
    /// The backend's outputs, kept between frames so their buffers are reused.
    outputs: Vec<Output>,
    score_threshold: f32,
    /// Per label, over `score_threshold` (site calibration).
    class_thresholds: BTreeMap<String, f32>,
    last_stage_times: StageTimes,
    /// Index and length of the embedding output, when loaded with [`Model::load_embedder`].
    embedding: Option<(usize, usize)>,
    people: PeopleFinder,
}

impl Model {
    /// Reads the manifest, verifies the model file against it and loads it into the backend.
    pub fn load(config: &ModelConfig, backend: BackendKind) -> Result<Self, InferError> {
        Self::load_with(config, &InferenceConfig { backend, ..InferenceConfig::default() })
    }

    /// As [`Model::load`], with the whole `[inference]` section (threads, library, fallback).
    pub fn load_with(config: &ModelConfig, inference: &InferenceConfig) -> Result<Self, InferError> {
        let manifest = Manifest::load(&config.manifest)?;
        let mut verified = manifest.verify()?;
        let bytes = std::mem::take(&mut verified.bytes);
        let backend = load_backend(inference, &verified, bytes)?;
        Ok(Self::with_backend(verified, backend, config.score_threshold)
            .with_class_thresholds(config.class_thresholds.clone()))
    }

    pub fn with_backend(verified: VerifiedModel, backend: Box<dyn Backend>, threshold: Option<f32>) -> Self {
        let manifest = verified.manifest;
        let preprocessor = Preprocessor::new(manifest.input.clone(), manifest.input_size());
        Self {
            id: ModelId { name: manifest.name.clone(), sha256: manifest.sha256.to_lowercase() },
            labels: verified.labels,
            backend,
            preprocessor,
            outputs: Vec::new(),
            score_threshold: threshold.unwrap_or(manifest.decoder.score_threshold()),
            class_thresholds: BTreeMap::new(),
            manifest,
            last_stage_times: StageTimes::default(),
            embedding: None,
            people: PeopleFinder::default(),
        }
    }

    /// As [`Model::load_with`], with the manifest's `[embedding]` tensor exposed as an extra
    /// output, for [`Model::embed`]. Only offline tools ask for it: the agent runs the file as is.
    pub fn load_embedder(config: &ModelConfig, inference: &InferenceConfig) -> Result<Self, InferError> {
        let manifest = Manifest::load(&config.manifest)?;
        let spec =
            manifest.embedding.clone().ok_or_else(|| InferError::NoEmbedding { manifest: manifest.path.clone() })?;
        let mut verified = manifest.verify()?;
        let bytes = std::mem::take(&mut verified.bytes);
        let (bytes, index) = embedding::expose_output(&bytes, &spec.output, spec.size)
            .map_err(|source| InferError::Embedding { path: verified.onnx_path.clone(), source })?;
        let backend = load_backend(inference, &verified, bytes)?;
        let mut model = Self::with_backend(verified, backend, config.score_threshold);
        model.embedding = Some((index, spec.size));
        Ok(model)
    }

    /// One run on `image`: the embedding (the pooled features) and what the model itself found.
    pub fn embed(&mut self, image: &image::RgbImage) -> Result<(Vec<f32>, Findings), InferError> {
        let (index, size) =
            self.embedding.ok_or_else(|| InferError::NoEmbedding { manifest: self.manifest.path.clone() })?;
        let (tensor, transform) = self.preprocessor.run(image);
        self.backend.run(tensor, &self.manifest.input.shape, &mut self.outputs)?;
        let output = self.outputs.get(index).ok_or_else(|| InferError::Output {
            message: format!("the embedding is output {index}, but the model gave {} outputs", self.outputs.len()),
        })?;
        if output.data.len() != size {
            return Err(InferError::Output {
                message: format!(
                    "embedding output {:?} has {} values (shape {:?}); the manifest's [embedding] size is {size}",
                    output.name,
                    output.data.len(),
                    output.shape
                ),
            });
        }
        let features = output.data.clone();
        Ok((features, self.decode(transform)?))
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

    /// Sets who counts as a person for privacy (from the config file's `[privacy]`).
    pub fn set_people(&mut self, people: PeopleFinder) {
        self.people = people;
    }

    pub fn people(&self) -> &PeopleFinder {
        &self.people
    }

    /// Overrides the manifest's score threshold; None returns to it (the `set` command).
    pub fn set_score_threshold(&mut self, threshold: Option<f32>) {
        self.score_threshold = threshold.unwrap_or(self.manifest.decoder.score_threshold());
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

    /// How the last [`Model::infer`] split its time.
    pub fn last_stage_times(&self) -> StageTimes {
        self.last_stage_times
    }

    /// The input tensor this model makes of `image` (a copy, for `bench`).
    pub fn input_tensor(&mut self, image: &image::RgbImage) -> Vec<f32> {
        self.preprocessor.run(image).0.to_vec()
    }

    /// Runs the backend alone on a ready input tensor: what `bench` times as inference, the
    /// counterpart of a bare `session.run`.
    pub fn run_backend(&mut self, tensor: &[f32]) -> Result<Duration, InferError> {
        let started = Instant::now();
        self.backend.run(tensor, &self.manifest.input.shape, &mut self.outputs)?;
        Ok(started.elapsed())
    }

    /// Pre-process, run, decode; boxes come back in the frame's pixels.
    pub fn infer(&mut self, image: &image::RgbImage) -> Result<ModelResult, InferError> {
        let started = Instant::now();
        let (tensor, transform) = self.preprocessor.run(image);
        let pre_done = Instant::now();
        self.backend.run(tensor, &self.manifest.input.shape, &mut self.outputs)?;
        let run_done = Instant::now();
        let (findings, people) = self.decode_with_people(transform)?;
        let finished = Instant::now();
        self.last_stage_times =
            StageTimes { pre: pre_done - started, run: run_done - pre_done, post: finished - run_done };
        Ok(ModelResult { model: self.id.clone(), findings, latency: finished - started, people })
    }

    fn decode(&self, transform: preprocess::FrameTransform) -> Result<Findings, InferError> {
        Ok(self.decode_with_people(transform)?.0)
    }

    /// The findings, and the boxes of people at the privacy threshold (none for a classifier).
    fn decode_with_people(
        &self,
        transform: preprocess::FrameTransform,
    ) -> Result<(Findings, Vec<BoundingBox>), InferError> {
        let outputs = &self.outputs;
        let labels = &self.labels;
        // Decoding keeps everything a class threshold or the privacy threshold might still want;
        // `keeps` and the people finder then decide.
        let threshold = self.decode_threshold();
        let detect_threshold = threshold.min(self.people.min_score);
        let (raw, nms_iou, max_detections) = match &self.manifest.decoder {
            DecoderSpec::Softmax { top_k, .. } => {
                let mut classes = classify::top_k(outputs, labels, *top_k, threshold)?;
                classes.retain(|c| self.keeps(&c.label, c.score));
                return Ok((Findings::Classify { classes }, Vec::new()));
            }
            DecoderSpec::Nanodet { bins, nms_iou, max_detections, .. } => {
                let raw = detect::decode_nanodet(outputs, self.manifest.input_size(), *bins, labels, detect_threshold)?;
                (raw, *nms_iou, *max_detections)
            }
            DecoderSpec::Yolov5 { nms_iou, max_detections, .. } => {
                (detect::decode_yolov5(outputs, labels, detect_threshold)?, *nms_iou, *max_detections)
            }
            DecoderSpec::Yolov8 { nms_iou, max_detections, .. } => {
                (detect::decode_yolov8(outputs, labels, detect_threshold)?, *nms_iou, *max_detections)
            }
        };
        let people: Vec<Detection> = raw
            .iter()
            .filter(|d| d.score >= self.people.min_score && self.people.labels.contains(&d.label))
            .cloned()
            .collect();
        let people = detect::non_maximum_suppression(people, nms_iou, MAX_PEOPLE)
            .into_iter()
            .map(|d| transform.to_frame(d.bbox))
            .collect();
        // Class-aware NMS only lets a box suppress a better-scoring one of its class, so filtering
        // per class before it gives what filtering after it would.
        let raw = raw.into_iter().filter(|d| self.keeps(&d.label, d.score)).collect();
        let mut detections = detect::non_maximum_suppression(raw, nms_iou, max_detections);
        for d in &mut detections {
            d.bbox = transform.to_frame(d.bbox);
        }
        Ok((Findings::Detect { detections }, people))
    }
}

/// Loads every configured model; the first failure names the model file and what is wrong.
pub fn load_models(configs: &[ModelConfig], inference: &InferenceConfig) -> Result<Vec<Model>, InferError> {
    let models = configs.iter().map(|c| Model::load_with(c, inference)).collect();
    // Loading frees copies of the weights that would otherwise stay resident as free heap.
    allocator::release_free_memory();
    models
}

/// One model's run on a frame; a panic inside the backend (a hostile or broken model) becomes a
/// failed run instead of ending the inference task for good.
fn run_catching_panics(model: &mut Model, image: &image::RgbImage) -> Result<ModelResult, InferError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.infer(image))) {
        Ok(outcome) => outcome,
        Err(payload) => Err(InferError::Panicked { backend: model.info().backend, message: panic_message(&*payload) }),
    }
}

/// What a caught panic said, for [`InferError::Panicked`].
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// Runs every model on the whole of a frame: the infer stage's unit of work.
pub fn infer_frame(models: &mut [Model], frame: Frame) -> (InferredFrame, Vec<(ModelId, InferError)>) {
    let (inferred, failures, _) = infer_frame_where(models, frame, None);
    (inferred, failures)
}

/// Runs every model on a frame; detectors on the crops around `wanted` (frame pixels) when given
/// ([`regions`]), classifiers on the whole frame. The last value says whether every detector
/// looked at crops only (false where a plan or a cut object took it to the whole frame).
pub fn infer_frame_where(
    models: &mut [Model],
    frame: Frame,
    wanted: Option<&[BoundingBox]>,
) -> (InferredFrame, Vec<(ModelId, InferError)>, bool) {
    let mut results = Vec::with_capacity(models.len());
    let mut failures = Vec::new();
    let image: Arc<image::RgbImage> = frame.image.clone();
    let size = image.dimensions();
    let mut by_region = wanted.is_some();
    for model in models.iter_mut() {
        let crops = match (model.task(), wanted) {
            (Task::Detect, Some(wanted)) => {
                let (height, width) = model.manifest().input_size();
                let input = (u32::try_from(width).unwrap_or(u32::MAX), u32::try_from(height).unwrap_or(u32::MAX));
                match regions::plan(size, input, wanted) {
                    regions::Plan::Crops(crops) => Some(crops),
                    regions::Plan::Whole => None,
                }
            }
            _ => None,
        };
        let outcome = match crops {
            Some(crops) => match run_on_crops(model, &image, &crops) {
                Ok(Some(merged)) => Ok(merged),
                // An object reaches beyond a crop: the whole frame finds it whole, once.
                Ok(None) => {
                    by_region = false;
                    run_catching_panics(model, &image)
                }
                Err(e) => Err(e),
            },
            None => {
                by_region &= model.task() != Task::Detect;
                run_catching_panics(model, &image)
            }
        };
        match outcome {
            Ok(result) => results.push(result),
            Err(e) => failures.push((model.id().clone(), e)),
        }
    }
    (InferredFrame { frame, results, plates: Vec::new(), plates_to_blur: Vec::new() }, failures, by_region)
}

/// A detector on each crop of a frame, the boxes back in frame pixels; None when a box touches
/// a crop's edge inside the frame.
fn run_on_crops(
    model: &mut Model,
    image: &image::RgbImage,
    crops: &[regions::Crop],
) -> Result<Option<ModelResult>, InferError> {
    let mut parts = Vec::with_capacity(crops.len());
    for crop in crops {
        let part = image::imageops::crop_imm(image, crop.x, crop.y, crop.width, crop.height).to_image();
        parts.push((*crop, run_catching_panics(model, &part)?));
    }
    Ok(regions::merge(parts, image.dimensions()))
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// The ONNX Runtime library to test with: required in CI, skipped with a message elsewhere.
    #[cfg(feature = "ort")]
    pub(crate) fn ort_inference() -> Option<InferenceConfig> {
        match std::env::var_os("ORT_DYLIB_PATH").map(std::path::PathBuf::from) {
            Some(path) if path.is_file() => Some(InferenceConfig {
                backend: BackendKind::Ort,
                ort_library: Some(path),
                ..InferenceConfig::default()
            }),
            _ if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
                panic!("ONNX Runtime is required in CI; set ORT_DYLIB_PATH (scripts/fetch-onnxruntime.sh prints it)")
            }
            _ => {
                eprintln!(
                    "SKIPPED: ORT_DYLIB_PATH not set; run `export ORT_DYLIB_PATH=$(scripts/fetch-onnxruntime.sh)`"
                );
                None
            }
        }
    }

    #[cfg(feature = "ort")]
    #[test]
    fn nanodet_on_ort_finds_the_same_truck_as_tract() {
        let Some(inference) = ort_inference() else { return };
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/nanodet.toml");
        let mut on_ort = Model::load_with(
            &ModelConfig { manifest, score_threshold: None, class_thresholds: Default::default() },
            &inference,
        )
        .unwrap();
        assert_eq!((on_ort.info().backend, on_ort.info().execution_provider.as_str()), ("ort", "cpu"));
        let dog = sample("dog.jpg");
        let Findings::Detect { detections: from_ort } = on_ort.infer(&dog).unwrap().findings else { panic!() };
        let Findings::Detect { detections: from_tract } = model("nanodet").infer(&dog).unwrap().findings else {
            panic!()
        };
        assert_eq!(from_ort.len(), from_tract.len(), "{from_ort:?}\n{from_tract:?}");
        for (a, b) in from_ort.iter().zip(&from_tract) {
            assert_eq!(a.label, b.label);
            assert!((a.score - b.score).abs() < 1e-3 && detect::iou(&a.bbox, &b.bbox) > 0.98, "{a:?} vs {b:?}");
        }
    }

    #[cfg(feature = "ort")]
    #[test]
    fn a_second_ort_library_in_one_process_is_refused_naming_the_first() {
        let Some(inference) = ort_inference() else { return };
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/efficientnet_lite0.toml");
        let config = ModelConfig { manifest, score_threshold: None, class_thresholds: Default::default() };
        Model::load_with(&config, &inference).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("libonnxruntime.so.1.99.0");
        std::fs::write(&other, b"not loaded: the process already has a library").unwrap();
        let second = InferenceConfig { ort_library: Some(other.clone()), ..inference.clone() };
        let err = Model::load_with(&config, &second).err().expect("refused");
        let text = err.to_string();
        assert!(err.is_backend_unavailable(), "{text}");
        assert!(text.contains("already runs ONNX Runtime") && text.contains("1.99.0"), "{text}");
        let fallback = InferenceConfig { fallback: Some(BackendKind::Tract), ..second };
        assert_eq!(Model::load_with(&config, &fallback).unwrap().info().backend, "tract");
    }

    /// Hands back fixed outputs: for testing decoding and box mapping without a YOLO model file
    /// (none is reachable here); the backends themselves are tested on the real models above.
    struct CannedOutputs(Vec<Output>);

    impl Backend for CannedOutputs {
        fn name(&self) -> &'static str {
            "canned"
        }
        fn execution_provider(&self) -> String {
            "cpu".into()
        }
        fn run(&mut self, _: &[f32], _: &[usize], outputs: &mut Vec<Output>) -> Result<(), InferError> {
            outputs.clone_from(&self.0);
            Ok(())
        }
    }

    fn yolo_model(decoder: &str, output: Output) -> Model {
        let text = format!(
            "name = \"yolo\"\nfile = \"yolo.onnx\"\nsha256 = \"{}\"\ntask = \"detect\"\nlabels = \"labels.txt\"\n\
             licence = \"AGPL-3.0\"\nprovenance = \"hand-built outputs\"\n\
             [input]\nname = \"images\"\nshape = [1, 3, 640, 640]\nlayout = \"nchw\"\ncolour_order = \"rgb\"\n\
             resize = \"letterbox\"\nmean = [0.0, 0.0, 0.0]\nstd = [255.0, 255.0, 255.0]\n\
             [decoder]\nkind = \"{decoder}\"\nscore_threshold = 0.25\nnms_iou = 0.45\n",
            "0".repeat(64)
        );
        let manifest: Manifest = toml::from_str(&text).unwrap();
        let labels = vec!["person".to_string(), "truck".to_string(), "bottle".to_string()];
        let verified = VerifiedModel { manifest, onnx_path: "yolo.onnx".into(), bytes: Vec::new(), labels };
        Model::with_backend(verified, Box::new(CannedOutputs(vec![output])), None)
    }

    /// A 1280×960 frame letterboxed into 640×640: scale 0.5, 80 rows of padding above and below.
    /// A truck at model (100, 180)–(300, 280) is at frame (200, 200)–(600, 400).
    #[test]
    fn yolo_boxes_come_back_through_the_letterbox_in_frame_pixels() {
        let frame = image::RgbImage::new(1280, 960);
        let truck_v5 = [200.0, 230.0, 200.0, 100.0, 0.9, 0.05, 0.95, 0.0];
        let v5 = Output { name: "output0".into(), shape: vec![1, 1, 8], data: truck_v5.to_vec() };
        // YOLOv8: one row per value (cx, cy, w, h, 3 classes), one anchor.
        let v8 = Output {
            name: "output0".into(),
            shape: vec![1, 7, 1],
            data: vec![200.0, 230.0, 200.0, 100.0, 0.0, 0.9, 0.1],
        };
        for (decoder, output) in [("yolov5", v5), ("yolov8", v8.clone()), ("yolo11", v8)] {
            let mut model = yolo_model(decoder, output);
            let Findings::Detect { detections } = model.infer(&frame).unwrap().findings else { panic!() };
            assert_eq!(detections.len(), 1, "{decoder}: {detections:?}");
            assert_eq!(detections[0].label, "truck");
            let b = detections[0].bbox;
            let expected = BoundingBox { x1: 200.0, y1: 200.0, x2: 600.0, y2: 400.0 };
            assert!(detect::iou(&b, &expected) > 0.999, "{decoder}: {b:?}");
        }
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
