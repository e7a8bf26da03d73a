//! Loading one plate model by path: read the file, keep its metadata (the recogniser's dictionary),
//! turn weights stored as graph inputs with initialisers into plain initialisers (ONNX Runtime then
//! folds them; both backends see the same graph) and hand it to the configured backend.

use std::path::{Path, PathBuf};

use prost::Message;
use sha2::{Digest, Sha256};
use tract_onnx::pb::ModelProto;

use crate::infer::config::InferenceConfig;
use crate::infer::manifest::{ColourOrder, InputSpec, Layout, OnnxHeader as Header, ResizeMode};
use crate::infer::preprocess::Preprocessor;
use crate::infer::{load_graph_backend, Backend, InferError, ModelId, Output};

use super::PlateError;

/// A plate model loaded into a backend, with its input shape and reused output buffers.
pub struct PlateModel {
    pub id: ModelId,
    pub path: PathBuf,
    backend: Box<dyn Backend>,
    input_shape: Vec<usize>,
    outputs: Vec<Output>,
}

impl PlateModel {
    /// Loads `path` for inputs of `input_shape`; `metadata_key`, when given, must be in the file's
    /// metadata and its value is returned.
    pub fn load(
        path: &Path,
        input_shape: &[usize],
        inference: &InferenceConfig,
        metadata_key: Option<&str>,
    ) -> Result<(Self, Option<String>), PlateError> {
        let bytes = std::fs::read(path).map_err(|e| PlateError::model(path, format!("cannot be read: {e}")))?;
        let header = Header::decode(bytes.as_slice())
            .map_err(|e| PlateError::model(path, format!("is not a readable ONNX model: {e}")))?;
        let graph = header.graph.as_ref().ok_or_else(|| PlateError::model(path, "has no graph"))?;
        let metadata = match metadata_key {
            Some(key) => {
                let entry = header.metadata_props.iter().find(|p| p.key == key).ok_or_else(|| {
                    PlateError::model(
                        path,
                        format!("has no `{key}` entry in its metadata (the recogniser's dictionary)"),
                    )
                })?;
                Some(entry.value.clone())
            }
            None => None,
        };
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let id = ModelId { name: name.clone(), sha256: hex::encode(Sha256::digest(&bytes)) };
        let initialised: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let bytes = if graph.input.iter().any(|i| initialised.contains(i.name.as_str())) {
            fold_initialised_inputs(&bytes).map_err(|e| PlateError::model(path, e))?
        } else {
            bytes
        };
        let backend = load_graph_backend(inference, &name, path, input_shape, bytes)?;
        let model = Self { id, path: path.to_owned(), backend, input_shape: input_shape.to_vec(), outputs: Vec::new() };
        Ok((model, metadata))
    }

    /// Runs the model on one input tensor of its input shape; returns its first output, which must
    /// have `values_per_row` values per row (the last dimension).
    pub fn run(&mut self, input: &[f32], values_per_row: usize) -> Result<&Output, PlateError> {
        self.backend.run(input, &self.input_shape, &mut self.outputs)?;
        let output = self.outputs.first().ok_or_else(|| InferError::Output {
            message: format!("plate model {} gave no output", self.path.display()),
        })?;
        if output.shape.last() != Some(&values_per_row) || output.data.is_empty() {
            return Err(InferError::Output {
                message: format!(
                    "plate model {}: output {:?} has shape {:?}; expected {values_per_row} values per row",
                    self.path.display(),
                    output.name,
                    output.shape
                ),
            }
            .into());
        }
        Ok(output)
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }
}

/// `bytes` with every graph input that has an initialiser removed from the inputs: the initialiser
/// alone then holds the weights, as a constant.
fn fold_initialised_inputs(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut model = ModelProto::decode(bytes).map_err(|e| format!("is not a readable ONNX model: {e}"))?;
    let graph = model.graph.as_mut().ok_or("has no graph")?;
    let initialised: std::collections::HashSet<String> = graph.initializer.iter().map(|t| t.name.clone()).collect();
    graph.input.retain(|i| !initialised.contains(&i.name));
    Ok(model.encode_to_vec())
}

/// The preprocessor of a plate model's square NCHW input with pixels scaled to 0..1: the models
/// differ only in the input's name, colour order and how a picture is fitted.
pub(super) fn unit_scaled_square_input(
    name: &str,
    size: usize,
    colour_order: ColourOrder,
    resize: ResizeMode,
) -> Preprocessor {
    let spec = InputSpec {
        name: name.into(),
        shape: vec![1, 3, size, size],
        layout: Layout::Nchw,
        colour_order,
        resize,
        mean: [0.0; 3],
        std: [255.0; 3],
        pad_value: 0,
    };
    Preprocessor::new(spec, (size, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_stored_as_inputs_become_constants() {
        let path = super::super::tests::lpr_models().join("litemodel_cls_96x_r1.onnx");
        let bytes = std::fs::read(&path).unwrap();
        let before = Header::decode(bytes.as_slice()).unwrap().graph.unwrap();
        assert!(before.input.len() > 1, "the colour model keeps its weights as inputs");
        let folded = fold_initialised_inputs(&bytes).unwrap();
        let after = Header::decode(folded.as_slice()).unwrap().graph.unwrap();
        assert_eq!(after.input.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["data"]);
        assert_eq!(after.initializer.len(), before.initializer.len());
    }
}
