//! "Would the box still start with this?" asked before a change is written: a change acknowledged
//! as applied must never stop the next start (under systemd that is a restart loop). Beyond what
//! the config loader checks, a start needs every model's manifest to load and match its file, the
//! names the rules refer to to exist, and the second-stage classifiers the zones need to load: the
//! same `Judge::open` the start runs.

use crate::config::Config;
use crate::infer::manifest::Manifest;
use crate::judge::Judge;

/// Checks `config` as a start would, without starting anything; the error names the key or file.
pub fn check_startable(config: &Config) -> Result<(), String> {
    let mut model_names = Vec::with_capacity(config.models.len());
    for (i, model) in config.models.iter().enumerate() {
        let manifest = Manifest::load(&model.manifest).map_err(|e| format!("`models[{i}].manifest`: {e}"))?;
        manifest.verify().map_err(|e| format!("`models[{i}].manifest`: {e}"))?;
        model_names.push(manifest.name);
    }
    Judge::open(&config.judge_settings(), &model_names).map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::fixtures::test_config;

    #[test]
    fn the_embedded_models_start() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_startable(&test_config(dir.path(), "")), Ok(()));
    }

    #[test]
    fn a_rule_naming_a_model_that_is_not_configured_would_not_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(dir.path(), "[rules.road_debris]\nmodel = \"no-such-model\"\n");
        let problem = check_startable(&config).unwrap_err();
        assert!(problem.contains("rules.road_debris.model") && problem.contains("no-such-model"), "{problem}");
    }

    #[test]
    fn a_cover_classifier_that_does_not_load_would_not_start() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("cover.toml");
        std::fs::write(&manifest, "name = \"cover\"\nfile = \"missing.onnx\"\nsha256 = \"00\"\ntask = \"classify\"\n")
            .unwrap();
        let config = test_config(
            dir.path(),
            &format!(
                "[rules.truck_exit]\nenabled = true\ncover_classifier = {{ manifest = {:?}, uncovered_labels = [\"open\"], covered_labels = [\"closed\"] }}\n",
                manifest.display().to_string()
            ),
        );
        let problem = check_startable(&config).unwrap_err();
        assert!(problem.contains("cover_classifier"), "{problem}");
    }

    #[test]
    fn a_model_file_that_changed_since_its_manifest_would_not_start() {
        let dir = tempfile::tempdir().unwrap();
        let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        std::fs::copy(models.join("nanodet.toml"), dir.path().join("nanodet.toml")).unwrap();
        let mut onnx = std::fs::read(models.join("nanodet.onnx")).unwrap();
        onnx.push(0);
        std::fs::write(dir.path().join("nanodet.onnx"), onnx).unwrap();
        let config = test_config(
            dir.path(),
            &format!("[[models]]\nmanifest = {:?}\n", dir.path().join("nanodet.toml").display().to_string()),
        );
        let problem = check_startable(&config).unwrap_err();
        assert!(problem.contains("models[0].manifest") && problem.contains("sha256"), "{problem}");
    }
}
