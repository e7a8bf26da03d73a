//! Model manifests: the `*.toml` next to each `.onnx` that says what the model expects and how to
//! read its output. The agent trusts nothing about a model file until it matches its manifest
//! (sha256, input name and shape), so a swapped or truncated file is refused with a clear error.

use std::path::{Path, PathBuf};

use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;
use tract_onnx::pb::type_proto::Value as TypeValue;
use tract_onnx::pb::{StringStringEntryProto, ValueInfoProto};

use crate::base::parse_error::describe_toml_error;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("model manifest {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("model manifest {path}: `{field}` {problem}")]
    Invalid { path: PathBuf, field: &'static str, problem: String },
    #[error("model file {path} has sha256 {found}, but its manifest {manifest} expects {expected}")]
    Sha256Mismatch { path: PathBuf, manifest: PathBuf, expected: String, found: String },
    #[error("model file {path} is not a readable ONNX model: {message}")]
    NotOnnx { path: PathBuf, message: String },
    #[error("model file {path}: {problem} (manifest {manifest} says input {expected})")]
    InputMismatch { path: PathBuf, manifest: PathBuf, expected: String, problem: String },
    #[error("labels file {path}: {problem}")]
    Labels { path: PathBuf, problem: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Classify,
    Detect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
    Nhwc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColourOrder {
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Scale each axis to the input size, ignoring the aspect ratio.
    Stretch,
    /// Keep the aspect ratio and pad the rest with `pad_value`.
    Letterbox,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    /// Batch, channels, height, width in the model's layout.
    pub shape: Vec<usize>,
    pub layout: Layout,
    pub colour_order: ColourOrder,
    pub resize: ResizeMode,
    /// `(pixel - mean) / std` per channel, in the model's colour order, pixels 0..=255.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    #[serde(default = "default_pad_value")]
    pub pad_value: u8,
}

fn default_pad_value() -> u8 {
    114
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum DecoderSpec {
    /// Classifier logits → softmax → top k.
    Softmax {
        #[serde(default = "default_top_k")]
        top_k: usize,
        #[serde(default)]
        score_threshold: f32,
    },
    /// NanoDet: per stride, sigmoid class scores [1, N, C] and side distributions [1, N, 4 * bins].
    Nanodet {
        bins: usize,
        score_threshold: f32,
        nms_iou: f32,
        #[serde(default = "default_max_detections")]
        max_detections: usize,
    },
    /// Ultralytics YOLOv5 export: one output [1, N, 5 + C] of rows (cx, cy, w, h, objectness,
    /// C class scores), sigmoid applied, boxes in model-input pixels; score = objectness × class.
    Yolov5 {
        score_threshold: f32,
        nms_iou: f32,
        #[serde(default = "default_max_detections")]
        max_detections: usize,
    },
    /// Ultralytics YOLOv8 / YOLO11 export: one output [1, 4 + C, N] (transposed: one row per
    /// value), (cx, cy, w, h) in model-input pixels then C class scores, no objectness.
    #[serde(alias = "yolo11")]
    Yolov8 {
        score_threshold: f32,
        nms_iou: f32,
        #[serde(default = "default_max_detections")]
        max_detections: usize,
    },
}

impl DecoderSpec {
    pub fn score_threshold(&self) -> f32 {
        match self {
            DecoderSpec::Softmax { score_threshold, .. }
            | DecoderSpec::Nanodet { score_threshold, .. }
            | DecoderSpec::Yolov5 { score_threshold, .. }
            | DecoderSpec::Yolov8 { score_threshold, .. } => *score_threshold,
        }
    }
}

/// `[embedding]`: a tensor inside the graph (the layer before the logits) that the agent exposes
/// as an extra output when asked for embeddings; the file on disk stays as its sha256 says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingSpec {
    /// The tensor's name in the ONNX graph, e.g. "/Reshape_output_0".
    pub output: String,
    /// How many values it holds for one picture, e.g. 1280.
    pub size: usize,
}

/// `[learned]`: the provenance and held-out figures of a head trained by `edge-agent learn`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnedSpec {
    /// The folder of labelled pictures and the labels file the crops came from.
    pub samples: String,
    pub labels_file: String,
    /// When the newest labelled picture was last changed (RFC 3339): labels after it are new.
    pub newest_sample: String,
    pub trained_at: String,
    pub backbone: String,
    pub backbone_sha256: String,
    /// Share of each class's crops held out from training and used only to check the head.
    pub held_out_share: f64,
    /// Share of held-out crops the head got right.
    pub held_out_accuracy: f64,
    /// Labelled crops per label (trained on plus held out).
    pub counts: std::collections::BTreeMap<String, usize>,
    pub held_out: std::collections::BTreeMap<String, HeldOutFigures>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldOutFigures {
    pub crops: usize,
    pub precision: f64,
    pub recall: f64,
}

fn default_top_k() -> usize {
    5
}
fn default_max_detections() -> usize {
    100
}

/// A model manifest as written in `models/*.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    /// The `.onnx` file, relative to the manifest.
    pub file: PathBuf,
    pub sha256: String,
    pub task: Task,
    /// One label per line, line k = class k; relative to the manifest.
    pub labels: PathBuf,
    pub licence: String,
    pub provenance: String,
    pub input: InputSpec,
    pub decoder: DecoderSpec,
    /// The backbone's pooled features (`edge-agent learn` trains site heads on them).
    #[serde(default)]
    pub embedding: Option<EmbeddingSpec>,
    /// For a head trained on the box (`edge-agent learn`): what it learnt from and its figures.
    #[serde(default)]
    pub learned: Option<LearnedSpec>,
    /// Where this manifest was read from; paths above are resolved against its folder.
    #[serde(skip)]
    pub path: PathBuf,
}

/// A model whose file matched its manifest: the bytes, ready for a backend (which takes them, so
/// they can be freed as soon as it has its own copy), and its labels.
#[derive(Clone)]
pub struct VerifiedModel {
    pub manifest: Manifest,
    pub onnx_path: PathBuf,
    pub bytes: Vec<u8>,
    pub labels: Vec<String>,
}

impl std::fmt::Debug for VerifiedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedModel")
            .field("name", &self.manifest.name)
            .field("onnx_path", &self.onnx_path)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ManifestError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Reads a manifest's text as if it were the file at `path` (its files are relative to it).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ManifestError> {
        let mut manifest: Manifest = toml::from_str(text)
            .map_err(|e| ManifestError::Parse { path: path.to_owned(), message: describe_toml_error(text, &e) })?;
        manifest.path = path.to_owned();
        manifest.check_fields()?;
        Ok(manifest)
    }

    fn folder(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    pub fn onnx_path(&self) -> PathBuf {
        self.folder().join(&self.file)
    }

    pub fn labels_path(&self) -> PathBuf {
        self.folder().join(&self.labels)
    }

    /// The score a finding needs unless the config sets another (`score_threshold`).
    pub fn score_threshold(&self) -> f32 {
        self.decoder.score_threshold()
    }

    fn check_fields(&self) -> Result<(), ManifestError> {
        // The value refused goes: a manifest may be any file a config names.
        let invalid = |field, problem: String| ManifestError::Invalid {
            path: self.path.clone(),
            field,
            problem: crate::base::parse_error::without_refused_value(&problem),
        };
        if self.sha256.len() != 64 || !self.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid("sha256", format!("is {:?}; expected 64 hex digits", self.sha256)));
        }
        if self.input.shape.len() != 4 || self.input.shape.iter().any(|&d| d == 0) {
            return Err(invalid(
                "input.shape",
                format!("is {:?}; expected four positive dimensions", self.input.shape),
            ));
        }
        if self.input.shape[0] != 1 {
            return Err(invalid(
                "input.shape",
                format!("has batch {}; the agent runs one frame at a time (batch 1)", self.input.shape[0]),
            ));
        }
        if self.input_channels() != 3 {
            return Err(invalid(
                "input.shape",
                format!("is {:?}; expected 3 colour channels for layout {:?}", self.input.shape, self.input.layout),
            ));
        }
        if let Some(embedding) = &self.embedding {
            if embedding.output.trim().is_empty() || embedding.size == 0 {
                return Err(invalid(
                    "embedding",
                    format!("is {embedding:?}; expected a tensor name (output) and its size above 0"),
                ));
            }
        }
        if self.input.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return Err(invalid("input.std", format!("is {:?}; expected non-zero values", self.input.std)));
        }
        match (&self.task, &self.decoder) {
            (Task::Classify, DecoderSpec::Softmax { top_k, .. }) if *top_k > 0 => Ok(()),
            (Task::Detect, DecoderSpec::Nanodet { bins, nms_iou, .. })
                if *bins > 1 && (0.0..=1.0).contains(nms_iou) =>
            {
                Ok(())
            }
            (Task::Detect, DecoderSpec::Yolov5 { nms_iou, .. } | DecoderSpec::Yolov8 { nms_iou, .. })
                if (0.0..=1.0).contains(nms_iou) =>
            {
                Ok(())
            }
            (task, decoder) => Err(invalid(
                "decoder",
                format!(
                    "{decoder:?} does not fit task {task:?} (classify takes softmax with top_k > 0; detect takes \
                     nanodet with bins > 1, yolov5 or yolov8, each with nms_iou from 0 to 1)"
                ),
            )),
        }
    }

    /// (height, width) the model takes.
    pub fn input_size(&self) -> (usize, usize) {
        let s = &self.input.shape;
        match self.input.layout {
            Layout::Nchw => (s[2], s[3]),
            Layout::Nhwc => (s[1], s[2]),
        }
    }

    fn input_channels(&self) -> usize {
        match self.input.layout {
            Layout::Nchw => self.input.shape[1],
            Layout::Nhwc => self.input.shape[3],
        }
    }

    /// Reads the model file and its labels, and refuses them unless they match this manifest.
    pub fn verify(&self) -> Result<VerifiedModel, ManifestError> {
        let onnx_path = self.onnx_path();
        let bytes =
            std::fs::read(&onnx_path).map_err(|source| ManifestError::Read { path: onnx_path.clone(), source })?;
        let found = hex::encode(Sha256::digest(&bytes));
        if !found.eq_ignore_ascii_case(&self.sha256) {
            return Err(ManifestError::Sha256Mismatch {
                path: onnx_path,
                manifest: self.path.clone(),
                expected: self.sha256.to_lowercase(),
                found,
            });
        }
        let header = OnnxHeader::decode(bytes.as_slice())
            .map_err(|e| ManifestError::NotOnnx { path: onnx_path.clone(), message: e.to_string() })?;
        self.check_input_against(&header, &onnx_path)?;
        let labels = read_labels(&self.labels_path())?;
        Ok(VerifiedModel { manifest: self.clone(), onnx_path, bytes, labels })
    }

    /// The ONNX graph's first real input (initialisers are not inputs) must have the manifest's name
    /// and shape; a symbolic dimension (e.g. "batch") accepts any manifest value.
    fn check_input_against(&self, proto: &OnnxHeader, onnx_path: &Path) -> Result<(), ManifestError> {
        let expected = format!("{:?} {:?}", self.input.name, self.input.shape);
        let mismatch = |problem: String| ManifestError::InputMismatch {
            path: onnx_path.to_owned(),
            manifest: self.path.clone(),
            expected: expected.clone(),
            problem,
        };
        let graph = proto.graph.as_ref().ok_or_else(|| mismatch("the file has no graph".into()))?;
        let initialisers: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<_> = graph.input.iter().filter(|i| !initialisers.contains(i.name.as_str())).collect();
        let input = inputs.first().ok_or_else(|| mismatch("the graph has no input".into()))?;
        if input.name != self.input.name {
            return Err(mismatch(format!("the graph's input is named {:?}", input.name)));
        }
        let dims = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(TypeValue::TensorType(tensor)) => tensor.shape.as_ref().map(|s| s.dim.clone()).unwrap_or_default(),
            None => return Err(mismatch("the graph's input has no tensor type".into())),
        };
        let described: Vec<String> = dims
            .iter()
            .map(|d| match &d.value {
                Some(DimValue::DimValue(v)) => v.to_string(),
                Some(DimValue::DimParam(p)) => p.clone(),
                None => "?".into(),
            })
            .collect();
        let fits = dims.len() == self.input.shape.len()
            && dims.iter().zip(&self.input.shape).all(|(d, &want)| match &d.value {
                Some(DimValue::DimValue(v)) => *v == want as i64,
                _ => true,
            });
        if !fits {
            return Err(mismatch(format!("the graph's input has shape [{}]", described.join(", "))));
        }
        Ok(())
    }
}

/// The parts of an ONNX `ModelProto` read before loading (same field tags as onnx.proto): the input
/// check here, the plate models' metadata and folding (`infer::plates::model`). Decoding only these
/// skips the weights without copying them, so checking a model costs no second copy of it.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct OnnxHeader {
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphHeader>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct GraphHeader {
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<NamedTensor>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct NamedTensor {
    #[prost(string, tag = "8")]
    pub name: String,
}

pub fn read_labels(path: &Path) -> Result<Vec<String>, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read { path: path.to_owned(), source })?;
    let labels: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    if labels.iter().all(|l| l.is_empty()) {
        return Err(ManifestError::Labels { path: path.to_owned(), problem: "holds no labels".into() });
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
    }

    /// A copy of a shipped manifest and its files in a scratch folder, so a test can break one part.
    fn scratch_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let manifest = Manifest::load(&models_dir().join(format!("{name}.toml"))).unwrap();
        for file in [manifest.file.clone(), manifest.labels.clone()] {
            std::fs::copy(models_dir().join(&file), dir.path().join(&file)).unwrap();
        }
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::copy(models_dir().join(format!("{name}.toml")), &path).unwrap();
        (dir, path)
    }

    #[test]
    fn shipped_models_match_their_manifests() {
        for name in ["nanodet", "efficientnet_lite0"] {
            let manifest = Manifest::load(&models_dir().join(format!("{name}.toml"))).unwrap();
            let model = manifest.verify().unwrap();
            assert!(!model.labels.is_empty());
        }
    }

    #[test]
    fn a_changed_model_file_is_refused_naming_file_and_hashes() {
        let (dir, manifest_path) = scratch_copy("nanodet");
        let onnx = dir.path().join("nanodet.onnx");
        let mut bytes = std::fs::read(&onnx).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&onnx, bytes).unwrap();
        let err = Manifest::load(&manifest_path).unwrap().verify().unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ManifestError::Sha256Mismatch { .. }), "{text}");
        assert!(text.contains("nanodet.onnx") && text.contains("2947bae1"), "{text}");
    }

    #[test]
    fn a_manifest_whose_input_shape_differs_from_the_model_is_refused() {
        let (_dir, manifest_path) = scratch_copy("nanodet");
        let text = std::fs::read_to_string(&manifest_path).unwrap();
        std::fs::write(&manifest_path, text.replace("[1, 3, 416, 416]", "[1, 3, 320, 320]")).unwrap();
        let err = Manifest::load(&manifest_path).unwrap().verify().unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ManifestError::InputMismatch { .. }), "{text}");
        assert!(text.contains("416") && text.contains("320") && text.contains("nanodet.onnx"), "{text}");
    }

    #[test]
    fn a_symbolic_batch_dimension_accepts_batch_one() {
        let manifest = Manifest::load(&models_dir().join("efficientnet_lite0.toml")).unwrap();
        assert!(manifest.verify().is_ok());
    }

    #[test]
    fn a_file_that_is_not_onnx_is_refused() {
        let (dir, manifest_path) = scratch_copy("nanodet");
        let garbage = b"this is a JPEG, honestly".to_vec();
        std::fs::write(dir.path().join("nanodet.onnx"), &garbage).unwrap();
        let text = std::fs::read_to_string(&manifest_path).unwrap();
        let sha = hex::encode(Sha256::digest(&garbage));
        std::fs::write(
            &manifest_path,
            text.replace("2947bae13602996b196ce1d92f3ea337ad028a4b944d6ce30af7b5ea9e454b16", &sha),
        )
        .unwrap();
        let err = Manifest::load(&manifest_path).unwrap().verify().unwrap_err();
        assert!(matches!(err, ManifestError::NotOnnx { .. }), "{err}");
        assert!(err.to_string().contains("not a readable ONNX model"), "{err}");
    }

    #[test]
    fn a_decoder_that_does_not_fit_the_task_is_refused() {
        let (_dir, manifest_path) = scratch_copy("nanodet");
        let text = std::fs::read_to_string(&manifest_path).unwrap();
        std::fs::write(&manifest_path, text.replace("task = \"detect\"", "task = \"classify\"")).unwrap();
        let err = Manifest::load(&manifest_path).unwrap_err();
        assert!(err.to_string().contains("`decoder`"), "{err}");
    }
}
