//! The pure-Rust backend: tract-onnx, always built, for boxes without ONNX Runtime. Its matrix
//! products run on a thread pool of `inference.intra_op_threads` threads, shared by every model
//! that asks for the same count.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use super::manifest::VerifiedModel;
use super::{store_output, Backend, InferError, Output};

type Plan = Arc<TypedRunnableModel>;

pub struct TractBackend {
    plan: Plan,
    /// Kept between runs so tract reuses its scratch memory instead of allocating per frame.
    state: TypedSimpleState,
    output_names: Vec<String>,
    executor: Executor,
}

/// One pool per thread count, so two models with the same setting do not double the threads.
fn executor_with_threads(threads: usize) -> Executor {
    static POOLS: Mutex<Option<HashMap<usize, Executor>>> = Mutex::new(None);
    if threads <= 1 {
        return Executor::SingleThread;
    }
    let mut pools = POOLS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    pools.get_or_insert_with(HashMap::new).entry(threads).or_insert_with(|| Executor::multithread(threads)).clone()
}

/// `intra_op_threads`, with 0 meaning every core the process may use.
pub fn effective_threads(intra_op_threads: usize) -> usize {
    if intra_op_threads > 0 {
        return intra_op_threads;
    }
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

impl TractBackend {
    /// Builds the plan from the model file's `bytes`, freeing them (and each intermediate form) as
    /// soon as the next exists: several copies of the weights at once would set the agent's peak memory.
    pub fn load(model: &VerifiedModel, bytes: Vec<u8>, intra_op_threads: usize) -> Result<Self, InferError> {
        Self::load_graph(&model.onnx_path, bytes, &model.manifest.input.shape, intra_op_threads)
    }

    /// As [`TractBackend::load`] for a model without a manifest (the plate models): `path` names the
    /// file in errors, `input_shape` fixes the graph's first input.
    pub fn load_graph(
        path: &Path,
        bytes: Vec<u8>,
        input_shape: &[usize],
        intra_op_threads: usize,
    ) -> Result<Self, InferError> {
        let context =
            |e: TractError| InferError::Load { path: path.to_owned(), backend: "tract", message: format!("{e:#}") };
        let onnx = tract_onnx::onnx();
        let proto = <tract_onnx::pb::ModelProto as prost::Message>::decode(bytes.as_slice())
            .map_err(|e| InferError::Load { path: path.to_owned(), backend: "tract", message: e.to_string() })?;
        drop(bytes);
        let graph = onnx.model_for_proto_model(&proto).map_err(context)?;
        drop(proto);
        let graph = graph.with_input_fact(0, f32::fact(input_shape).into()).map_err(context)?;
        let typed = graph.into_optimized().map_err(context)?;
        let output_names = typed
            .output_outlets()
            .map_err(context)?
            .iter()
            .map(|outlet| typed.node(outlet.node).name.clone())
            .collect();
        let plan = typed.into_runnable().map_err(context)?;
        let state = plan.spawn().map_err(context)?;
        let executor = executor_with_threads(effective_threads(intra_op_threads));
        Ok(Self { plan, state, output_names, executor })
    }
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn execution_provider(&self) -> String {
        "cpu".into()
    }

    fn run(&mut self, input: &[f32], shape: &[usize], outputs: &mut Vec<Output>) -> Result<(), InferError> {
        let run_error = |e: TractError| InferError::Run { backend: "tract", message: format!("{e:#}") };
        let tensor = Tensor::from_shape::<f32>(shape, input).map_err(run_error)?;
        let state = &mut self.state;
        let results = multithread_tract_scope(self.executor.clone(), || state.run(tvec!(tensor.into_tvalue())))
            .map_err(run_error)?;
        outputs.truncate(results.len());
        for (i, value) in results.iter().enumerate() {
            let data = value.try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).map_err(run_error)?;
            let name = self.output_names.get(i).map(String::as_str).unwrap_or("output");
            store_output(outputs, i, name, value.shape(), data);
        }
        Ok(())
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
