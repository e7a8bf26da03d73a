//! The pure-Rust backend: tract-onnx, always built, for boxes without ONNX Runtime.

use tract_onnx::prelude::*;

use super::manifest::VerifiedModel;
use super::{Backend, InferError, Output};

type Plan = Arc<TypedRunnableModel>;

pub struct TractBackend {
    plan: Plan,
    /// Kept between runs so tract reuses its scratch memory instead of allocating per frame.
    state: TypedSimpleState,
    output_names: Vec<String>,
}

impl TractBackend {
    pub fn load(model: &VerifiedModel) -> Result<Self, InferError> {
        let manifest = &model.manifest;
        let context = |e: TractError| InferError::Load {
            path: model.onnx_path.clone(),
            backend: "tract",
            message: format!("{e:#}"),
        };
        let onnx = tract_onnx::onnx();
        let proto = onnx.proto_model_for_read(&mut model.bytes.as_slice()).map_err(context)?;
        let graph = onnx.model_for_proto_model(&proto).map_err(context)?;
        let graph = graph.with_input_fact(0, f32::fact(manifest.input.shape.clone()).into()).map_err(context)?;
        let typed = graph.into_optimized().map_err(context)?;
        let output_names = typed
            .output_outlets()
            .map_err(context)?
            .iter()
            .map(|outlet| typed.node(outlet.node).name.clone())
            .collect();
        let plan = typed.into_runnable().map_err(context)?;
        let state = plan.spawn().map_err(context)?;
        Ok(Self { plan, state, output_names })
    }
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn execution_provider(&self) -> String {
        "cpu".into()
    }

    fn run(&mut self, input: &[f32], shape: &[usize]) -> Result<Vec<Output>, InferError> {
        let run_error = |e: TractError| InferError::Run { backend: "tract", message: format!("{e:#}") };
        let tensor = Tensor::from_shape::<f32>(shape, input).map_err(run_error)?;
        let results = self.state.run(tvec!(tensor.into_tvalue())).map_err(run_error)?;
        results
            .iter()
            .enumerate()
            .map(|(i, value)| {
                let data = value.try_as_plain_ram().and_then(|v| v.as_slice::<f32>().map(|s| s.to_vec()));
                Ok(Output {
                    name: self.output_names.get(i).cloned().unwrap_or_else(|| format!("output{i}")),
                    shape: value.shape().to_vec(),
                    data: data.map_err(run_error)?,
                })
            })
            .collect()
    }
}

impl std::fmt::Debug for TractBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractBackend")
            .field("outputs", &self.output_names)
            .field("plan", &Arc::as_ptr(&self.plan))
            .finish()
    }
}
