//! What the user writes about inference: `[inference]` (backend, ONNX Runtime library, fallback,
//! execution providers, threads) and `[[models]]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::base::section::{absolutise, Invalid};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceConfig {
    #[serde(default)]
    pub backend: BackendKind,
    /// Threads one model may use for one inference; 0 lets the backend choose (all cores).
    #[serde(default)]
    pub intra_op_threads: usize,
    /// The ONNX Runtime shared library (`libonnxruntime.so.1.x`); default `$ORT_DYLIB_PATH`, else
    /// `libonnxruntime.so` from the system's library path.
    #[serde(default)]
    pub ort_library: Option<PathBuf>,
    /// The backend to use when the configured one cannot start (e.g. no ONNX Runtime library).
    #[serde(default)]
    pub fallback: Option<BackendKind>,
    /// ONNX Runtime execution providers in order of preference; the first one that works is used.
    #[serde(default = "default_execution_providers")]
    pub execution_providers: Vec<ExecutionProviderKind>,
    /// Let ONNX Runtime's threads busy-wait for the next operator instead of sleeping: a little
    /// lower latency on an idle machine, much higher when the cores are shared, and more power.
    #[serde(default)]
    pub ort_allow_spinning: bool,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::default(),
            intra_op_threads: 0,
            ort_library: None,
            fallback: None,
            execution_providers: default_execution_providers(),
            ort_allow_spinning: false,
        }
    }
}

fn default_execution_providers() -> Vec<ExecutionProviderKind> {
    vec![ExecutionProviderKind::Cpu]
}

impl InferenceConfig {
    /// The same settings with another backend, e.g. from `--backend`.
    pub fn with_backend(&self, backend: BackendKind) -> Self {
        Self { backend, ..self.clone() }
    }

    /// The library path to load: the config key, else `$ORT_DYLIB_PATH`, else the loader's search.
    pub fn ort_library_path(&self) -> (PathBuf, &'static str) {
        if let Some(path) = &self.ort_library {
            return (path.clone(), "config `inference.ort_library`");
        }
        match std::env::var_os("ORT_DYLIB_PATH") {
            Some(path) if !path.is_empty() => (PathBuf::from(path), "$ORT_DYLIB_PATH"),
            _ => (
                PathBuf::from("libonnxruntime.so"),
                "the system library path; neither `inference.ort_library` nor $ORT_DYLIB_PATH is set",
            ),
        }
    }

    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(path) = &mut self.ort_library {
            absolutise(path, base);
        }
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        if self.execution_providers.is_empty() {
            return Err(Invalid::new(
                "inference.execution_providers",
                "is empty; expected a list such as [\"cuda\", \"cpu\"]",
            ));
        }
        if self.fallback == Some(self.backend) {
            return Err(Invalid::new(
                "inference.fallback",
                format!("is {:?}, the backend itself; expected another backend or no fallback", self.backend.name()),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// tract-onnx: pure Rust, always built.
    #[default]
    Tract,
    /// ONNX Runtime, loaded at run time (cargo feature `ort`).
    Ort,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Tract => "tract",
            BackendKind::Ort => "ort",
        }
    }
}

/// ONNX Runtime execution providers the agent knows how to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProviderKind {
    Cpu,
    Cuda,
    Tensorrt,
}

impl ExecutionProviderKind {
    pub fn name(self) -> &'static str {
        match self {
            ExecutionProviderKind::Cpu => "cpu",
            ExecutionProviderKind::Cuda => "cuda",
            ExecutionProviderKind::Tensorrt => "tensorrt",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Path of the model's manifest (`*.toml` next to the `.onnx`).
    pub manifest: PathBuf,
    /// Overrides the manifest's score threshold.
    #[serde(default)]
    pub score_threshold: Option<f32>,
    /// Score threshold per label, e.g. `{ truck = 0.4 }`, over `score_threshold` for those labels;
    /// a site calibration file's `[thresholds.<model>]` fills it in (`calibrate thresholds`).
    #[serde(default)]
    pub class_thresholds: BTreeMap<String, f32>,
}

/// The detector shipped in `models/`. The classifier shipped beside it is not run on every full
/// frame: no rule reads a whole-frame class, and it cost as much CPU as the detector. It runs where
/// a rule needs it, on the crops of items in bin zones (`taxonomy.classifier`); list it under
/// `[[models]]` to see whole-frame classes on the page.
pub fn default_models(data_dir: &Path) -> Vec<ModelConfig> {
    ["models/nanodet.toml"]
        .iter()
        .map(|m| ModelConfig { manifest: data_dir.join(m), score_threshold: None, class_thresholds: BTreeMap::new() })
        .collect()
}

impl ModelConfig {
    pub fn resolve_paths(&mut self, base: &Path) {
        absolutise(&mut self.manifest, base);
    }

    pub fn validate(&self, key: &str) -> Result<(), Invalid> {
        if let Some(t) = self.score_threshold {
            if !(0.0..=1.0).contains(&t) {
                return Err(Invalid::new(
                    format!("{key}.score_threshold"),
                    format!("is {t}; expected a value from 0 to 1"),
                ));
            }
        }
        for (label, t) in &self.class_thresholds {
            if !(0.0..=1.0).contains(t) {
                return Err(Invalid::new(
                    format!("{key}.class_thresholds.{label}"),
                    format!("is {t}; expected a value from 0 to 1"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<InferenceConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn defaults_are_tract_on_the_cpu_without_fallback() {
        let config = parse("").unwrap();
        assert_eq!(config.backend, BackendKind::Tract);
        assert_eq!(config.execution_providers, vec![ExecutionProviderKind::Cpu]);
        assert_eq!(config.fallback, None);
    }

    #[test]
    fn a_jetson_section_parses() {
        let config = parse(
            "backend = \"ort\"\nfallback = \"tract\"\nort_library = \"/opt/ort/libonnxruntime.so.1.32.0\"\n\
             execution_providers = [\"tensorrt\", \"cuda\", \"cpu\"]\nintra_op_threads = 2\n",
        )
        .unwrap();
        assert_eq!(config.backend, BackendKind::Ort);
        assert_eq!(config.fallback, Some(BackendKind::Tract));
        assert_eq!(config.execution_providers.len(), 3);
        assert_eq!(config.ort_library_path().0, PathBuf::from("/opt/ort/libonnxruntime.so.1.32.0"));
        config.validate().unwrap();
    }

    #[test]
    fn an_unknown_execution_provider_is_refused_naming_the_choices() {
        let err = parse("execution_providers = [\"npu\"]").unwrap_err().to_string();
        assert!(err.contains("npu") && err.contains("cuda"), "{err}");
    }

    #[test]
    fn an_empty_provider_list_and_a_fallback_to_itself_are_refused() {
        let err = parse("execution_providers = []").unwrap().validate().unwrap_err();
        assert_eq!(err.key, "inference.execution_providers");
        let err = parse("backend = \"ort\"\nfallback = \"ort\"").unwrap().validate().unwrap_err();
        assert_eq!(err.key, "inference.fallback");
    }
}
