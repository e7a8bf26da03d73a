//! Embeddings: a classifier's pooled features for a picture, read from a tensor inside its graph
//! (`[embedding] output` in the manifest). The verified file is rewritten in memory so that tensor
//! is also a graph output; both backends then run the same graph, pre-processing and all.

use prost::Message;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::{type_proto, ModelProto, TensorShapeProto, TypeProto, ValueInfoProto};

/// ONNX `TensorProto.DataType.FLOAT`.
pub const ONNX_FLOAT: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum GraphEditError {
    #[error("the model is not a readable ONNX file: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the model has no graph")]
    NoGraph,
    #[error("no node of the graph produces a tensor named {name:?} (manifest `[embedding] output`){hint}")]
    NoSuchTensor { name: String, hint: String },
}

/// `bytes` (an ONNX model) with `tensor` appended to the graph's outputs, and that output's index.
/// An existing output of that name is used as it is.
pub fn expose_output(bytes: &[u8], tensor: &str, size: usize) -> Result<(Vec<u8>, usize), GraphEditError> {
    let mut model = ModelProto::decode(bytes)?;
    let graph = model.graph.as_mut().ok_or(GraphEditError::NoGraph)?;
    if let Some(index) = graph.output.iter().position(|o| o.name == tensor) {
        return Ok((bytes.to_vec(), index));
    }
    if !graph.node.iter().any(|n| n.output.iter().any(|o| o == tensor)) {
        // The names nearest the end of the graph are the likely ones (pooling, flatten).
        let last: Vec<&str> =
            graph.node.iter().rev().take(4).flat_map(|n| n.output.iter().map(String::as_str)).collect();
        return Err(GraphEditError::NoSuchTensor {
            name: tensor.to_string(),
            hint: format!("; the last nodes produce {last:?}"),
        });
    }
    graph.output.push(float_value(tensor, size));
    let index = graph.output.len() - 1;
    Ok((model.encode_to_vec(), index))
}

/// A graph value of f32 elements, shape [batch, `width`] (ONNX's checker wants a shape on outputs).
pub fn float_value(name: &str, width: usize) -> ValueInfoProto {
    let dim = |value| Dimension { value: Some(value), ..Default::default() };
    let shape = TensorShapeProto {
        dim: vec![dim(dimension::Value::DimParam("batch".into())), dim(dimension::Value::DimValue(width as i64))],
    };
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: ONNX_FLOAT,
                shape: Some(shape),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::config::{BackendKind, InferenceConfig, ModelConfig};
    use crate::infer::{Findings, Model};
    use std::path::Path;

    fn models_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
    }

    fn config() -> ModelConfig {
        ModelConfig {
            manifest: models_dir().join("efficientnet_lite0.toml"),
            score_threshold: None,
            class_thresholds: Default::default(),
        }
    }

    fn picture(name: &str) -> image::RgbImage {
        image::open(models_dir().join("samples").join(name)).unwrap().to_rgb8()
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (norm(a) * norm(b))
    }

    #[test]
    fn a_tensor_no_node_makes_is_refused_naming_the_last_ones() {
        let bytes = std::fs::read(models_dir().join("efficientnet_lite0.onnx")).unwrap();
        let err = expose_output(&bytes, "/no/such/tensor", 1280).unwrap_err().to_string();
        assert!(err.contains("/no/such/tensor") && err.contains("/Reshape_output_0"), "{err}");
        let (_, index) = expose_output(&bytes, "logits", 1000).unwrap();
        assert_eq!(index, 0, "an existing output is used as it is");
    }

    /// The real backbone on real pictures: 1280 pooled features, the same classification as the
    /// plain model, and two crops of the same cup closer to each other than to the dog.
    #[test]
    fn efficientnet_on_tract_gives_pooled_features_and_its_usual_classes() {
        let mut embedder =
            Model::load_embedder(&config(), &InferenceConfig { backend: BackendKind::Tract, ..Default::default() })
                .unwrap();
        let coffee = picture("coffee.png");
        let (features, findings) = embedder.embed(&coffee).unwrap();
        assert_eq!(features.len(), 1280);
        // After the swish clip and the average pool every feature is at least -0.3 or so.
        assert!(features.iter().all(|v| v.is_finite() && *v > -1.0), "{:?}", &features[..8]);
        let Findings::Classify { classes } = findings else { panic!("classifier gave boxes") };
        assert_eq!(classes[0].label, "espresso", "{classes:?}");
        let cup_a = image::imageops::crop_imm(&coffee, 100, 0, 300, 300).to_image();
        let cup_b = image::imageops::crop_imm(&coffee, 140, 20, 320, 290).to_image();
        let (a, _) = embedder.embed(&cup_a).unwrap();
        let (b, _) = embedder.embed(&cup_b).unwrap();
        let (dog, _) = embedder.embed(&picture("dog.jpg")).unwrap();
        assert!(cosine(&a, &b) > cosine(&a, &dog) + 0.1, "cups {} cup-dog {}", cosine(&a, &b), cosine(&a, &dog));
    }

    #[test]
    fn a_model_without_an_embedding_section_says_so() {
        let nanodet = ModelConfig { manifest: models_dir().join("nanodet.toml"), ..config() };
        let err = Model::load_embedder(&nanodet, &InferenceConfig::default()).err().expect("refused").to_string();
        assert!(err.contains("nanodet.toml") && err.contains("[embedding]"), "{err}");
    }

    /// ONNX Runtime gives the same features as tract (CI has the library; elsewhere it is skipped).
    #[cfg(feature = "ort")]
    #[test]
    fn efficientnet_on_ort_gives_the_same_features_as_tract() {
        let Some(path) = std::env::var_os("ORT_DYLIB_PATH").map(std::path::PathBuf::from).filter(|p| p.is_file())
        else {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
                "ONNX Runtime is required in CI; set ORT_DYLIB_PATH"
            );
            eprintln!("SKIPPED: ORT_DYLIB_PATH not set");
            return;
        };
        let on_ort = InferenceConfig { backend: BackendKind::Ort, ort_library: Some(path), ..Default::default() };
        let on_tract = InferenceConfig { backend: BackendKind::Tract, ..Default::default() };
        let dog = picture("dog.jpg");
        let mut ort = Model::load_embedder(&config(), &on_ort).unwrap();
        assert_eq!(ort.info().backend, "ort");
        let (from_ort, _) = ort.embed(&dog).unwrap();
        let (from_tract, _) = Model::load_embedder(&config(), &on_tract).unwrap().embed(&dog).unwrap();
        assert_eq!(from_ort.len(), 1280);
        let worst = from_ort.iter().zip(&from_tract).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-3, "largest difference {worst}");
    }
}
