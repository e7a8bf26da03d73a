//! Models: each model the agent would load (the `[[models]]`, and the second-stage classifiers its
//! rules need) is loaded as the agent loads it (manifest read, file checked against its sha256 and
//! input, graph handed to the backend), then run on the self-test pictures a model update must pass
//! and on every camera's frame, with latency and what it found.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::camera::GrabbedFrame;
use super::{ConfigName, Finding};
use crate::config::{Config, InferenceConfig, ModelConfig};
use crate::control::switch::self_test;
use crate::infer::manifest::ManifestError;
use crate::infer::{Findings, InferError, Model, ModelResult};
use crate::judge::config::ZoneRole;

/// A model and the config key that names its manifest.
#[derive(Debug, Clone)]
pub struct ModelToCheck {
    pub key: String,
    pub config: ModelConfig,
}

/// The `[[models]]`, then the classifiers the judge loads for this config (once each).
pub fn models_to_check(config: &Config) -> Vec<ModelToCheck> {
    let mut list: Vec<ModelToCheck> = config
        .models
        .iter()
        .enumerate()
        .map(|(i, model)| ModelToCheck { key: format!("models[{i}].manifest"), config: model.clone() })
        .collect();
    let has_bins = config.scenes.values().any(|scene| scene.zones.iter().any(|zone| zone.role == ZoneRole::Bin));
    let mut second_stage: Vec<(&str, PathBuf)> = Vec::new();
    if config.rules.wrong_bin.enabled && config.taxonomy.classify_crops && has_bins {
        second_stage.push(("taxonomy.classifier", config.taxonomy.classifier.clone()));
    }
    if let (true, Some(cover)) = (config.rules.truck_exit.enabled, &config.rules.truck_exit.cover_classifier) {
        second_stage.push(("rules.truck_exit.cover_classifier.manifest", cover.manifest.clone()));
    }
    if let (true, Some(state)) = (config.rules.overflow.enabled, &config.rules.overflow.state_classifier) {
        second_stage.push(("rules.overflow.state_classifier.manifest", state.manifest.clone()));
    }
    for (key, manifest) in second_stage {
        if list.iter().any(|m| same_file(&m.config.manifest, &manifest)) {
            continue;
        }
        let config = ModelConfig { manifest, score_threshold: None, class_thresholds: Default::default() };
        list.push(ModelToCheck { key: key.to_string(), config });
    }
    list
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// Loads and runs every model, noting on each frame the people the detectors found (to blur them
/// before it is saved); a `road_debris.model` that names none of them fails as the judge would.
pub fn check_models(config: &Config, name: &ConfigName, frames: &mut [GrabbedFrame]) -> Vec<Finding> {
    let samples = config.model_update.self_test_folder();
    let mut findings = Vec::new();
    let mut loaded_names = Vec::new();
    let mut all_loaded = true;
    for (index, model) in models_to_check(config).iter().enumerate() {
        let people = config.privacy.people_finder();
        let (finding, loaded) = check_model(model, &config.inference, &samples, frames, &people, name);
        findings.push(finding);
        match loaded {
            Some(model_name) if index < config.models.len() => loaded_names.push(model_name),
            Some(_) => {}
            None => all_loaded = false,
        }
    }
    if let (Some(wanted), true) = (&config.rules.road_debris.model, all_loaded) {
        if !loaded_names.contains(wanted) {
            findings.push(Finding::fail(
                "rules",
                format!("`rules.road_debris.model` is {wanted:?}, but the models are {}", loaded_names.join(", ")),
                format!("set {} to the `name` of one of the models' manifests", name.key("rules.road_debris.model")),
            ));
        }
    }
    findings
}

/// The check's verdict and, when the model loaded, its name.
pub fn check_model(
    model: &ModelToCheck,
    inference: &InferenceConfig,
    samples: &Path,
    frames: &mut [GrabbedFrame],
    people: &crate::infer::PeopleFinder,
    name: &ConfigName,
) -> (Finding, Option<String>) {
    let manifest = &model.config.manifest;
    let stem = manifest.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| model.key.clone());
    let check = format!("model {stem}");
    let started = Instant::now();
    let mut loaded = match Model::load_with(&model.config, inference) {
        Ok(loaded) => loaded,
        Err(error) => {
            let fix = load_fix(&error, manifest, &model.key, inference, name);
            return (Finding::fail(check, error.to_string(), fix), None);
        }
    };
    loaded.set_people(people.clone());
    let id = loaded.id().clone();
    // The backend actually used: `inference.fallback` may have stood in for the configured one.
    let info = loaded.info();
    let mut seen = vec![format!(
        "{} (sha256 {}…) loaded on {} ({}) in {:.1} s",
        id.name,
        id.sha256.get(..12).unwrap_or(&id.sha256),
        info.backend,
        info.execution_provider,
        started.elapsed().as_secs_f64()
    )];
    let runs_fix = || {
        format!(
            "the model file does not behave as manifest {} describes (input, decoder, labels): use the model \
             the manifest was written for, or correct the manifest",
            manifest.display()
        )
    };
    let mut no_samples = None;
    if has_pictures(samples) {
        match self_test(&mut loaded, samples) {
            Ok(summary) => seen.push(format!(
                "self-test on {} pictures of {}: {} findings, {} ms each",
                summary["pictures"],
                samples.display(),
                summary["findings"],
                summary["mean_inference_ms"]
            )),
            Err(why) => {
                return (Finding::fail(check, format!("loads, but fails its self-test: {why}"), runs_fix()), None)
            }
        }
    } else {
        no_samples = Some(format!("no .jpg/.png self-test pictures in {}", samples.display()));
    }
    for frame in frames.iter_mut() {
        match loaded.infer(&frame.image) {
            Ok(result) => {
                if let Findings::Detect { .. } = &result.findings {
                    frame.people.get_or_insert_with(Vec::new).extend(result.people.iter().copied());
                }
                seen.push(format!("camera {}: {}", frame.camera, summarise(&result)));
            }
            Err(e) => {
                let detail = format!("loads, but fails on camera {}'s frame: {e}", frame.camera);
                return (Finding::fail(check, detail, runs_fix()), None);
            }
        }
    }
    if no_samples.is_some() && frames.is_empty() {
        // Nothing to show it: a grey picture still proves the graph runs.
        let grey = image::RgbImage::from_pixel(640, 480, image::Rgb([128, 128, 128]));
        match loaded.infer(&grey) {
            Ok(result) => seen.push(format!("a grey picture: {}", summarise(&result))),
            Err(e) => return (Finding::fail(check, format!("loads, but does not run: {e}"), runs_fix()), None),
        }
    }
    let finding = match no_samples {
        None => Finding::pass(check, seen.join("; ")),
        Some(missing) => Finding::warn(
            check,
            format!("{}; {missing}, so model updates will be refused", seen.join("; ")),
            format!("set {} to a folder of sample pictures", name.key("model_update.self_test_images")),
        ),
    };
    (finding, Some(id.name))
}

fn has_pictures(folder: &Path) -> bool {
    std::fs::read_dir(folder).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|entry| {
            entry
                .path()
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_ascii_lowercase().as_str()))
        })
    })
}

/// "3 detections (truck 0.37, dog 0.52, bicycle 0.41) in 320 ms", "espresso 0.87 in 90 ms".
pub fn summarise(result: &ModelResult) -> String {
    let ms = result.latency.as_secs_f64() * 1000.0;
    match &result.findings {
        Findings::Detect { detections } => {
            let mut best: Vec<_> = detections.iter().collect();
            best.sort_by(|a, b| b.score.total_cmp(&a.score));
            let named: Vec<String> = best.iter().take(3).map(|d| format!("{} {:.2}", d.label, d.score)).collect();
            let more = if detections.len() > 3 { ", …" } else { "" };
            match detections.len() {
                0 => format!("no detections in {ms:.0} ms"),
                1 => format!("1 detection ({}) in {ms:.0} ms", named.join(", ")),
                n => format!("{n} detections ({}{more}) in {ms:.0} ms", named.join(", ")),
            }
        }
        Findings::Classify { classes } => match classes.first() {
            Some(top) => format!("{} {:.2} in {ms:.0} ms", top.label, top.score),
            None => format!("no class above the threshold in {ms:.0} ms"),
        },
    }
}

/// What to change when a model does not load, naming the config key, manifest or model file.
pub fn load_fix(
    error: &InferError,
    manifest: &Path,
    key: &str,
    inference: &InferenceConfig,
    name: &ConfigName,
) -> String {
    match error {
        InferError::Manifest(ManifestError::Read { path, .. }) if path == manifest => {
            format!(
                "{} names a manifest that cannot be read: correct the path, or put the manifest there",
                name.key(key)
            )
        }
        InferError::Manifest(ManifestError::Read { path, .. }) => format!(
            "put {} where manifest {} says (its `file` or `labels`), or correct the manifest",
            path.display(),
            manifest.display()
        ),
        InferError::Manifest(ManifestError::Parse { path, .. }) => format!("correct manifest {}", path.display()),
        InferError::Manifest(ManifestError::Invalid { path, field, .. }) => {
            format!("correct `{field}` in manifest {}", path.display())
        }
        InferError::Manifest(ManifestError::Sha256Mismatch { path, manifest, .. }) => format!(
            "copy {} again: it is damaged, or another version than manifest {} pins with `sha256` \
             (a new model comes with its own manifest)",
            path.display(),
            manifest.display()
        ),
        InferError::Manifest(ManifestError::NotOnnx { path, .. }) => {
            format!("copy {} again: it is not an ONNX model", path.display())
        }
        InferError::Manifest(ManifestError::InputMismatch { manifest, .. }) => {
            format!("use the model manifest {} was written for, or correct its `[input]`", manifest.display())
        }
        InferError::Manifest(ManifestError::Labels { path, .. }) => {
            format!("correct labels file {} (one label per line, one per class)", path.display())
        }
        InferError::NoEmbedding { manifest } => {
            format!("add an `[embedding]` section (output, size) to manifest {}", manifest.display())
        }
        InferError::Embedding { .. } => {
            format!(
                "correct `[embedding] output` in manifest {}: it must name a tensor of the graph",
                manifest.display()
            )
        }
        InferError::Load { .. } | InferError::Run { .. } | InferError::Output { .. } | InferError::Panicked { .. } => {
            format!(
                "the model does not run on `inference.backend` {}: use a model from models/ (see models/README.md) \
             or one exported the same way, with its manifest {}",
                inference.backend.name(),
                manifest.display()
            )
        }
        InferError::RuntimeLibrary { .. } => format!(
            "set {} to an ONNX Runtime library of the version named (scripts/fetch-onnxruntime.sh), \
             or `inference.backend = \"tract\"` (or `inference.fallback = \"tract\"`)",
            name.key("inference.ort_library")
        ),
        InferError::OrtNotBuilt => format!(
            "set {} to \"tract\", or install an edge-agent built with the `ort` feature",
            name.key("inference.backend")
        ),
        InferError::NoExecutionProvider { .. } => format!(
            "list providers this ONNX Runtime offers in {}, ending with \"cpu\"",
            name.key("inference.execution_providers")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
    }

    fn name() -> ConfigName {
        ConfigName::new(Some(Path::new("site.toml")))
    }

    fn nanodet_at(manifest: PathBuf) -> ModelToCheck {
        ModelToCheck {
            key: "models[0].manifest".into(),
            config: ModelConfig { manifest, score_threshold: None, class_thresholds: Default::default() },
        }
    }

    #[test]
    fn the_real_detector_runs_on_the_self_test_pictures_and_the_frames_and_finds_people() {
        let frame = |camera: &str, picture: &str| GrabbedFrame {
            camera: camera.into(),
            image: image::open(repo("models/samples").join(picture)).unwrap().to_rgb8(),
            people: None,
        };
        let mut frames = [frame("gate", "dog.jpg"), frame("path", "person.jpg")];
        let model = nanodet_at(repo("models/nanodet.toml"));
        let people = crate::infer::PeopleFinder::default();
        let (finding, loaded) =
            check_model(&model, &InferenceConfig::default(), &repo("models/samples"), &mut frames, &people, &name());
        assert_eq!(finding.outcome, crate::ops::check::Outcome::Pass, "{finding:?}");
        assert_eq!(loaded.as_deref(), Some("nanodet"));
        assert!(finding.detail.contains("self-test on 3 pictures"), "{}", finding.detail);
        assert!(finding.detail.contains("camera gate:") && finding.detail.contains("truck"), "{}", finding.detail);
        assert!(frames[0].people.is_some(), "the detector looked at the gate's frame");
        assert!(frames[1].people.as_ref().is_some_and(|p| !p.is_empty()), "a person on person.jpg");
    }

    #[test]
    fn a_flipped_byte_fails_the_sha256_naming_the_file_and_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = std::fs::read(repo("models/nanodet.onnx")).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(dir.path().join("nanodet.onnx"), bytes).unwrap();
        std::fs::copy(repo("models/coco_labels.txt"), dir.path().join("coco_labels.txt")).unwrap();
        std::fs::copy(repo("models/nanodet.toml"), dir.path().join("nanodet.toml")).unwrap();
        let model = nanodet_at(dir.path().join("nanodet.toml"));
        let (finding, loaded) = check_model(
            &model,
            &InferenceConfig::default(),
            &repo("models/samples"),
            &mut [],
            &Default::default(),
            &name(),
        );
        assert!(loaded.is_none());
        assert_eq!(finding.check, "model nanodet");
        assert!(finding.detail.contains("sha256") && finding.detail.contains("nanodet.onnx"), "{finding:?}");
        let fix = finding.fix.unwrap();
        assert!(fix.contains("copy") && fix.contains("nanodet.toml"), "{fix}");
    }

    #[test]
    fn a_missing_manifest_names_the_config_key() {
        let model = nanodet_at("/nonexistent/model.toml".into());
        let (finding, _) = check_model(
            &model,
            &InferenceConfig::default(),
            Path::new("/nonexistent"),
            &mut [],
            &Default::default(),
            &name(),
        );
        assert!(finding.detail.contains("/nonexistent/model.toml"), "{finding:?}");
        assert!(finding.fix.unwrap().contains("`models[0].manifest` in site.toml"));
    }

    #[test]
    fn classifiers_for_bin_zones_and_truck_covers_are_checked_once() {
        let text = format!(
            "[[cameras]]\nid = \"gate\"\nsource = {{ kind = \"replay\", path = \"x\" }}\n\
             [[scenes.gate.zones]]\nid = \"bin\"\nrole = \"bin\"\ncategory = \"kitchen\"\n\
             polygon = [[0.1, 0.1], [0.5, 0.1], [0.5, 0.5]]\n\
             [rules.truck_exit.cover_classifier]\nmanifest = \"{}\"\nuncovered_labels = [\"a\"]\ncovered_labels = [\"b\"]\n\
             [rules.overflow.state_classifier]\nmanifest = \"{}\"\non_labels = [\"overflowing\"]\n",
            repo("models/cover.toml").display(),
            repo("models/bin_state.toml").display()
        );
        let config = Config::from_toml_str(&text, Path::new("site.toml")).unwrap();
        let keys: Vec<String> = models_to_check(&config).into_iter().map(|m| m.key).collect();
        // The default classifier is not a `[[models]]` entry: it is checked as the taxonomy classifier.
        assert_eq!(
            keys,
            [
                "models[0].manifest",
                "taxonomy.classifier",
                "rules.truck_exit.cover_classifier.manifest",
                "rules.overflow.state_classifier.manifest"
            ]
        );
    }
}
