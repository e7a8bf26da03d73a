//! A site calibration file, `calibration/<site>.toml`: the ground homography, per-class thresholds and
//! where the labelled sample set is. Tools update their own table and leave the rest of the file
//! (comments included) as the installer wrote it.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Config;
use crate::base::parse_error::describe_toml_error;
use crate::base::section::{absolutise, Invalid};
use crate::infer::manifest::{read_labels, Manifest};
use crate::judge::config::{SceneConfig, ZoneConfig};

#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("cannot read site file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("site file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("site file {path}: `{key}` {problem}")]
    Invalid { path: PathBuf, key: String, problem: String },
    #[error("cannot write site file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// What the agent reads from a site file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteCalibration {
    /// The site's name, for people.
    #[serde(default)]
    pub site: Option<String>,
    /// The labelled pictures the thresholds were chosen on.
    #[serde(default)]
    pub samples: Option<SamplesSection>,
    /// Per model (manifest `name`), per label: the score threshold chosen by `calibrate thresholds`.
    #[serde(default)]
    pub thresholds: BTreeMap<String, BTreeMap<String, f32>>,
    /// Per camera id: zones and the ground homography.
    #[serde(default)]
    pub scenes: BTreeMap<String, SiteScene>,
}

/// One camera of the site: `[scenes.<camera>]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteScene {
    /// Zones as in the agent config's `[[scenes.<camera>.zones]]`; they replace the config's.
    #[serde(default)]
    pub zones: Vec<ZoneConfig>,
    #[serde(default)]
    pub ground: Option<GroundSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroundSection {
    /// Image pixels → ground metres, row-major 3×3.
    pub homography: [[f64; 3]; 3],
    #[serde(default)]
    pub points: Vec<String>,
    #[serde(default)]
    pub rms_error_m: Option<f64>,
    #[serde(default)]
    pub max_error_m: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplesSection {
    /// Folder of labelled pictures, relative to the site file.
    pub folder: PathBuf,
    /// `file,label[,x1,y1,x2,y2]` rows, relative to the site file.
    pub labels: PathBuf,
}

impl SiteCalibration {
    /// Reads the file; the sample paths come back relative to the current folder.
    pub fn load(path: &Path) -> Result<Self, SiteError> {
        let text = std::fs::read_to_string(path).map_err(|source| SiteError::Read { path: path.to_owned(), source })?;
        let mut site: Self = toml::from_str(&text)
            .map_err(|e| SiteError::Parse { path: path.to_owned(), message: describe_toml_error(&text, &e) })?;
        let base = path.parent().unwrap_or(Path::new(""));
        if let Some(samples) = &mut site.samples {
            absolutise(&mut samples.folder, base);
            absolutise(&mut samples.labels, base);
        }
        Ok(site)
    }
}

/// Merges the site file named by `[site] calibration` into the config: its zones replace the
/// config's for that camera, its ground homography becomes the camera's, its thresholds become the
/// models' `class_thresholds`. A mistake names the site file and the key in it.
pub fn apply(config: &mut Config, config_path: &Path) -> Result<(), SiteError> {
    let Some(path) = config.site.calibration.as_mut() else { return Ok(()) };
    absolutise(path, config_path.parent().unwrap_or(Path::new("")));
    let path = path.clone();
    let site = SiteCalibration::load(&path)?;
    let invalid = |Invalid { key, problem }| SiteError::Invalid {
        path: path.clone(),
        key,
        problem: crate::base::parse_error::without_refused_value(&problem),
    };
    site.check_scenes(config).map_err(invalid)?;
    let thresholds = site.check_thresholds(config).map_err(invalid)?;
    for (index, labels) in thresholds {
        config.models[index].class_thresholds.extend(labels);
    }
    for (camera, scene) in site.scenes {
        let target = config.scenes.entry(camera).or_default();
        if !scene.zones.is_empty() {
            target.zones = scene.zones;
        }
        if let Some(ground) = scene.ground {
            target.ground_homography = Some(ground.homography);
        }
    }
    Ok(())
}

impl SiteCalibration {
    fn check_scenes(&self, config: &Config) -> Result<(), Invalid> {
        let cameras: Vec<&str> = config.cameras.iter().map(|c| c.id.as_str()).collect();
        let categories: HashSet<&str> = config.taxonomy.category_names().collect();
        for (camera, scene) in &self.scenes {
            let key = format!("scenes.{camera}");
            if !cameras.contains(&camera.as_str()) {
                return Err(Invalid::new(
                    key,
                    format!("names no configured camera; expected one of: {}", cameras.join(", ")),
                ));
            }
            let zones = SceneConfig { zones: scene.zones.clone(), ..SceneConfig::default() };
            zones.validate(&key, &categories)?;
            if let Some(ground) = &scene.ground {
                crate::judge::zones::Homography::new(ground.homography)
                    .map_err(|problem| Invalid::new(format!("{key}.ground.homography"), problem))?;
            }
        }
        Ok(())
    }

    /// The thresholds to merge, by index into `config.models`. Thresholds for people
    /// (`privacy.person_labels`) may only lower the model's: a stricter one would blur fewer people.
    fn check_thresholds(&self, config: &Config) -> Result<Vec<(usize, BTreeMap<String, f32>)>, Invalid> {
        let manifests: Vec<Option<Manifest>> = config.models.iter().map(|m| Manifest::load(&m.manifest).ok()).collect();
        let mut merged = Vec::new();
        for (model, labels) in &self.thresholds {
            let key = format!("thresholds.{model}");
            let found =
                manifests.iter().enumerate().find_map(|(i, m)| m.as_ref().filter(|m| &m.name == model).map(|m| (i, m)));
            let Some((index, manifest)) = found else {
                let names: Vec<&str> = manifests.iter().flatten().map(|m| m.name.as_str()).collect();
                return Err(Invalid::new(
                    key,
                    format!("names no configured model; expected one of: {}", names.join(", ")),
                ));
            };
            let known = read_labels(&manifest.labels_path()).map_err(|e| Invalid::new(&key, e.to_string()))?;
            let base = config.models[index].score_threshold.unwrap_or(manifest.decoder.score_threshold());
            let mut kept = BTreeMap::new();
            for (label, &threshold) in labels {
                let key = format!("{key}.{label}");
                if !known.contains(label) {
                    return Err(Invalid::new(
                        key,
                        format!(
                            "is not a label of model {model}; expected one of the labels in {}",
                            manifest.labels_path().display()
                        ),
                    ));
                }
                if !(0.0..=1.0).contains(&threshold) {
                    return Err(Invalid::new(key, format!("is {threshold}; expected a score from 0 to 1")));
                }
                if config.privacy.person_labels.contains(label) && threshold > base {
                    tracing::warn!(
                        "{key} = {threshold} is above the model's {base}; not applied, so that every person is still blurred"
                    );
                    continue;
                }
                kept.insert(label.clone(), threshold);
            }
            merged.push((index, kept));
        }
        Ok(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_key_in_a_site_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("yard.toml");
        std::fs::write(&path, "site = \"yard\"\ngrond = 1\n").unwrap();
        let err = SiteCalibration::load(&path).unwrap_err();
        assert!(err.to_string().contains("grond") && err.to_string().contains("yard.toml"), "{err}");
    }

    /// A config naming a site file, with the real default models.
    fn config_with_site(dir: &Path, site: &str) -> Result<Config, String> {
        std::fs::write(dir.join("yard.toml"), site).unwrap();
        let path = dir.join("agent.toml");
        std::fs::write(&path, "[site]\ncalibration = \"yard.toml\"\n").unwrap();
        Config::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn the_site_feeds_zones_ground_and_thresholds_into_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_with_site(
            dir.path(),
            "[thresholds.nanodet]\ntruck = 0.45\nperson = 0.9\ndog = 0.2\n\
             [[scenes.demo.zones]]\nid = \"street\"\nrole = \"road\"\npolygon = [[0, 0], [1, 0], [1, 0.3], [0, 0.3]]\n\
             [scenes.demo.ground]\nhomography = [[0.02, 0, 0], [0, 0.02, 0], [0, 0, 1]]\n",
        )
        .unwrap();
        let nanodet = &config.models[0];
        assert_eq!(nanodet.class_thresholds.get("truck"), Some(&0.45));
        assert_eq!(nanodet.class_thresholds.get("dog"), Some(&0.2));
        assert_eq!(nanodet.class_thresholds.get("person"), None, "a stricter person threshold would blur fewer people");
        let scene = &config.scenes["demo"];
        assert_eq!(scene.zones[0].id, "street");
        assert_eq!(scene.ground_homography.unwrap()[0][0], 0.02);
        assert_eq!(config.site.calibration.as_deref(), Some(dir.path().join("yard.toml").as_path()));
    }

    /// The example site's measured street reaches the judge: the demo camera's scene maps pixels to
    /// the measured metres, and a patch of debris on the street gets its area in m².
    #[test]
    fn the_example_sites_ground_gives_the_judge_metres() {
        let site = Path::new(env!("CARGO_MANIFEST_DIR")).join("../calibration/example-site.toml");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, format!("[site]\ncalibration = {:?}\n", site.display().to_string())).unwrap();
        let config = Config::load(&path).unwrap();
        let scene = crate::judge::zones::Scene::from_config("demo", &config.scenes["demo"], true);
        assert_eq!(scene.zones.len(), 3);
        let ground = scene.ground.expect("the site's homography");
        let metres = |x: f64, y: f64| ground.apply(x, y).unwrap();
        // Measured: the near kerb 8 m away from x 0 to 12 m, the far one 16 m away.
        for ((x, y), (gx, gy)) in
            [((100.0, 195.0), (0.0, 8.0)), ((700.0, 195.0), (12.0, 8.0)), ((250.0, 112.0), (0.0, 16.0))]
        {
            let (mx, my) = metres(x, y);
            assert!((mx - gx).abs() < 0.05 && (my - gy).abs() < 0.05, "({x}, {y}) → ({mx}, {my})");
        }
        // A 40×10 px patch 12 m out: its width and depth on the ground, multiplied, are its m².
        let (left, right) = (metres(380.0, 140.0), metres(420.0, 140.0));
        let (near, far) = (metres(400.0, 145.0), metres(400.0, 135.0));
        let width = ((right.0 - left.0).powi(2) + (right.1 - left.1).powi(2)).sqrt();
        let depth = ((far.0 - near.0).powi(2) + (far.1 - near.1).powi(2)).sqrt();
        assert!((width - 1.2).abs() < 0.05, "40 px are {width} m across at 12 m");
        let area = ground.pixel_area_m2(400.0, 140.0) * 400.0;
        assert!((area - width * depth).abs() < 0.05 * width * depth, "{area} m² vs {width} × {depth}");
        // And the thresholds, except the person one (only lower ones are taken, for privacy).
        let nanodet = &config.models[0].class_thresholds;
        assert_eq!(nanodet.get("truck"), Some(&0.3622));
        assert_eq!(nanodet.get("person"), None);
    }

    #[test]
    fn site_mistakes_name_the_site_file_and_key() {
        let cases = [
            ("[thresholds.yolo]\ntruck = 0.4\n", "thresholds.yolo", "nanodet"),
            ("[thresholds.nanodet]\ntruk = 0.4\n", "thresholds.nanodet.truk", "coco_labels.txt"),
            ("[thresholds.nanodet]\ntruck = 1.4\n", "thresholds.nanodet.truck", "from 0 to 1"),
            ("[scenes.gate.ground]\nhomography = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]\n", "scenes.gate", "demo"),
            (
                "[scenes.demo.ground]\nhomography = [[1, 2, 3], [2, 4, 6], [0, 0, 1]]\n",
                "scenes.demo.ground.homography",
                "singular",
            ),
            (
                "[[scenes.demo.zones]]\nid = \"a\"\nrole = \"road\"\npolygon = [[0, 0], [2, 0], [1, 1]]\n",
                "scenes.demo.zones[0].polygon",
                "outside the frame",
            ),
            ("[scenes.demo]\nhomography = 1\n", "homography", "unknown field"),
        ];
        for (site, key, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            let err = config_with_site(dir.path(), site).expect_err(site);
            assert!(err.contains("yard.toml") && err.contains(key) && err.contains(expected), "{site}\n→ {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "[site]\ncalibration = \"missing.toml\"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("missing.toml"), "{err}");
    }
}
