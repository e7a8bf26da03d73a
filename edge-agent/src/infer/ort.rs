//! The ONNX Runtime backend (cargo feature `ort`). The C library is loaded at run time from
//! `inference.ort_library`, else `$ORT_DYLIB_PATH`; a missing or too old library is an error that
//! names the path, the version found and the version needed. One library, one environment and one
//! thread pool (`inference.intra_op_threads`, set by the first model loaded) per process.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::ep::{self, ExecutionProvider};
use ort::session::builder::SessionBuilder;
use ort::session::Session;
use ort::value::TensorRef;

use super::config::{ExecutionProviderKind, InferenceConfig};
use super::manifest::VerifiedModel;
use super::{store_output, Backend, InferError, Output};

/// The oldest ONNX Runtime whose C API this build uses (ort's `api-31` feature).
pub fn needed_version() -> String {
    format!("1.{}", ort::MINOR_VERSION)
}

/// The loaded library and the environment every session of this process shares (ONNX Runtime
/// allows one environment per process).
struct Runtime {
    environment: Environment,
    library: PathBuf,
    version: String,
}

static RUNTIME: Mutex<Option<Arc<Runtime>>> = Mutex::new(None);

fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// Loads the library named by the config (once per process) and starts the environment.
fn runtime(inference: &InferenceConfig) -> Result<Arc<Runtime>, InferError> {
    let (path, origin) = inference.ort_library_path();
    let library_error =
        |problem: String| InferError::RuntimeLibrary { path: path.clone(), origin, problem, needed: needed_version() };
    let mut slot = RUNTIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(runtime) = slot.as_ref() {
        if same_file(&runtime.library, &path) {
            return Ok(runtime.clone());
        }
        return Err(library_error(format!(
            "cannot be loaded: this process already runs ONNX Runtime {} from {}",
            runtime.version,
            runtime.library.display()
        )));
    }
    // A bare file name is left to the loader's search path; anything else must exist.
    if path.components().count() > 1 && !path.exists() {
        return Err(library_error("does not exist".into()));
    }
    let builder = ort::init_from(&path).map_err(|e| {
        library_error(match e {
            ort::LoadDynamicError::BadVersion { version_str, .. } => format!("is version {version_str}, too old"),
            ort::LoadDynamicError::Dlopen { error, .. } => match std::error::Error::source(&error) {
                // libloading keeps dlerror()'s words (e.g. "No such file") in the source.
                Some(reason) => format!("cannot be loaded: {reason}"),
                None => format!("cannot be loaded: {error}"),
            },
            ort::LoadDynamicError::MissingApi { .. } => {
                "is not an ONNX Runtime library (it does not export OrtGetApiBase)".into()
            }
            ort::LoadDynamicError::InvalidVersionString => "reports a malformed version string".into(),
        })
    })?;
    let start_error = |e: ort::Error| library_error(format!("loaded, but its environment did not start: {e}"));
    // One pool of `intra_op_threads` for all models: they run one after another on a frame, so
    // per-model pools would only add threads.
    let threads = GlobalThreadPoolOptions::default()
        .with_intra_threads(inference.intra_op_threads)
        .and_then(|options| options.with_inter_threads(1))
        // No busy-waiting between operators unless asked: on a box that also decodes frames (and on
        // the shared test machine) spinning threads take the cores the camera and the next operator
        // need; bench/RESULTS.md has figures both ways.
        .and_then(|options| options.with_spin_control(inference.ort_allow_spinning))
        .map_err(start_error)?;
    let environment = builder
        .with_name("edge-agent")
        .with_telemetry(false)
        .with_global_thread_pool(threads)
        .build()
        .map_err(start_error)?;
    let runtime = Arc::new(Runtime { environment, library: path.clone(), version: library_version(&path) });
    tracing::info!(library = %path.display(), version = %runtime.version, "ONNX Runtime loaded");
    *slot = Some(runtime.clone());
    Ok(runtime)
}

/// The version the library reports about itself, e.g. "1.32.0".
fn library_version(path: &Path) -> String {
    // SAFETY: ort has just loaded this file and checked it exports OrtGetApiBase; that function
    // takes no arguments and returns a static table whose GetVersionString returns a static string.
    let version = unsafe {
        libloading::Library::new(path).ok().and_then(|library| {
            let get_base =
                library.get::<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase>(b"OrtGetApiBase").ok()?;
            let base = get_base();
            let text = if base.is_null() { std::ptr::null() } else { ((*base).GetVersionString)() };
            (!text.is_null()).then(|| std::ffi::CStr::from_ptr(text).to_string_lossy().into_owned())
        })
    };
    version.unwrap_or_else(|| format!(">= {} (it does not say which)", needed_version()))
}

pub struct OrtBackend {
    session: Session,
    execution_provider: &'static str,
    /// Output shapes as usize, kept to avoid a per-frame allocation.
    shape_scratch: Vec<usize>,
}

impl OrtBackend {
    pub fn load(model: &VerifiedModel, bytes: &[u8], inference: &InferenceConfig) -> Result<Self, InferError> {
        Self::load_graph(&model.onnx_path, bytes, inference)
    }

    /// As [`OrtBackend::load`] for a model without a manifest (the plate models); `path` names the
    /// file in errors.
    pub fn load_graph(path: &Path, bytes: &[u8], inference: &InferenceConfig) -> Result<Self, InferError> {
        let runtime = runtime(inference)?;
        let load_error = |message: String| InferError::Load { path: path.to_owned(), backend: "ort", message };
        // Threads come from the environment's pool, shared by every model (see `runtime`). No memory
        // pattern: it keeps a block for every intermediate tensor of the last run, about 20 MB more
        // resident for the two default models, and on this machine made no measurable difference in speed.
        let builder = Session::builder(&runtime.environment)
            .and_then(|b| b.with_memory_pattern(false).map_err(ort::Error::from))
            .map_err(|e| load_error(e.to_string()))?;
        let (mut builder, execution_provider) = register_execution_providers(builder, inference, &runtime)?;
        let session = builder.commit_from_memory(bytes).map_err(|e| load_error(e.to_string()))?;
        Ok(Self { session, execution_provider, shape_scratch: Vec::with_capacity(4) })
    }
}

/// Registers every configured provider this library has, in the configured order (ONNX Runtime
/// gives each node to the first that takes it); "cpu" ends the list. Returns the first one
/// registered: the provider that runs the model.
fn register_execution_providers(
    mut builder: SessionBuilder,
    inference: &InferenceConfig,
    runtime: &Runtime,
) -> Result<(SessionBuilder, &'static str), InferError> {
    let mut used: Option<&'static str> = None;
    let mut available = Vec::new();
    for &kind in &inference.execution_providers {
        let (is_available, dispatch) = match kind {
            ExecutionProviderKind::Cpu => {
                available.push("cpu".to_string());
                used = used.or(Some("cpu"));
                break;
            }
            ExecutionProviderKind::Cuda => (ep::CUDA::is_available(), ep::CUDA::default().build()),
            ExecutionProviderKind::Tensorrt => (ep::TensorRT::is_available(), ep::TensorRT::default().build()),
        };
        if !is_available.unwrap_or(false) {
            tracing::info!(provider = kind.name(), version = %runtime.version, "execution provider is not in this ONNX Runtime build");
            continue;
        }
        available.push(kind.name().to_string());
        match builder.with_execution_providers([dispatch.error_on_failure()]) {
            Ok(registered) => {
                builder = registered;
                used = used.or(Some(kind.name()));
            }
            Err(e) => {
                tracing::warn!(provider = kind.name(), "execution provider did not start: {e}");
                builder = e.recover();
            }
        }
    }
    match used {
        Some(provider) => Ok((builder, provider)),
        None => Err(InferError::NoExecutionProvider {
            wanted: inference.execution_providers.iter().map(|k| k.name().to_string()).collect(),
            version: format!("{} ({})", runtime.version, runtime.library.display()),
            available: if available.is_empty() { vec!["cpu".into()] } else { available },
        }),
    }
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn execution_provider(&self) -> String {
        self.execution_provider.to_string()
    }

    fn run(&mut self, input: &[f32], shape: &[usize], outputs: &mut Vec<Output>) -> Result<(), InferError> {
        let run_error = |e: ort::Error| InferError::Run { backend: "ort", message: e.to_string() };
        // A view of the pre-processed buffer: no copy of the input.
        let tensor = TensorRef::from_array_view((shape, input)).map_err(run_error)?;
        let results = self.session.run(ort::inputs![tensor]).map_err(run_error)?;
        outputs.truncate(results.len());
        for (i, (name, value)) in results.iter().enumerate() {
            let (dims, data) = value.try_extract_tensor::<f32>().map_err(|e| InferError::Output {
                message: format!("ONNX Runtime output {name:?} is not a float32 tensor: {e}"),
            })?;
            self.shape_scratch.clear();
            self.shape_scratch.extend(dims.iter().map(|&d| d.max(0) as usize));
            store_output(outputs, i, name, &self.shape_scratch, data);
        }
        Ok(())
    }
}
