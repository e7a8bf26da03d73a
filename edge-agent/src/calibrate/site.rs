//! A site calibration file, `calibration/<site>.toml`: the ground homography, per-class thresholds and
//! where the labelled sample set is. Tools update their own table and leave the rest of the file
//! (comments included) as the installer wrote it.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml_edit::{value, Array, DocumentMut, Item, Table};

use super::homography::{GroundFit, PointPair};
use super::thresholds::ClassCalibration;
use crate::config::{absolutise, Config, Invalid};
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
        let mut site: Self =
            toml::from_str(&text).map_err(|e| SiteError::Parse { path: path.to_owned(), message: e.to_string() })?;
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
    let invalid = |Invalid { key, problem }| SiteError::Invalid { path: path.clone(), key, problem };
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

fn edit(path: &Path, change: impl FnOnce(&mut DocumentMut) -> Result<(), String>) -> Result<(), SiteError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(SiteError::Read { path: path.to_owned(), source }),
    };
    let mut document: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| SiteError::Parse { path: path.to_owned(), message: e.to_string() })?;
    change(&mut document).map_err(|message| SiteError::Parse { path: path.to_owned(), message })?;
    write_atomically(path, document.to_string().as_bytes())
        .map_err(|source| SiteError::Write { path: path.to_owned(), source })
}

/// Temp file, fsync, rename: a crash leaves the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder)?;
    let temporary = folder.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(folder)?.sync_all()
}

/// The table at `keys` (created, without a header of its own, when missing).
fn table_at<'a>(document: &'a mut DocumentMut, keys: &[&str]) -> Result<&'a mut Table, String> {
    let mut table = document.as_table_mut();
    let mut path = String::new();
    for key in keys {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
        let item = table.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        table = item.as_table_mut().ok_or_else(|| format!("`{path}` is not a table; expected [{path}]"))?;
    }
    Ok(table)
}

/// Writes `[scenes.<camera>.ground]` into the site file, keeping everything else.
pub fn write_ground(path: &Path, camera: &str, pairs: &[PointPair], fit: &GroundFit) -> Result<(), SiteError> {
    edit(path, |document| {
        let scene = table_at(document, &["scenes", camera])?;
        let fresh = !scene.contains_key("ground");
        let ground = scene.entry("ground").or_insert_with(|| Item::Table(Table::new()));
        let ground = ground.as_table_mut().ok_or_else(|| format!("`scenes.{camera}.ground` is not a table"))?;
        ground.set_implicit(false);
        if fresh {
            ground
                .decor_mut()
                .set_prefix("\n# Image pixels → ground metres; written by `edge-agent calibrate ground`.\n");
        }
        let rows_of = fit.homography.rows();
        // Round-off dust (1e-17 where the fit means 0) would only make the file harder to read.
        let largest = rows_of.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
        let mut rows = Array::new();
        for row in rows_of {
            rows.push(
                row.iter().map(|v| if v.abs() < 1e-12 * largest { 0.0 } else { significant(*v) }).collect::<Array>(),
            );
        }
        ground.insert("homography", value(rows));
        let points: Array =
            pairs.iter().map(|p| format!("{},{}={},{}", p.image[0], p.image[1], p.ground[0], p.ground[1])).collect();
        ground.insert("points", value(points));
        ground.insert("rms_error_m", value((fit.rms_error_m * 1e4).round() / 1e4));
        ground.insert("max_error_m", value((fit.max_error_m * 1e4).round() / 1e4));
        Ok(())
    })
}

/// Writes `[samples]` (folder and labels file, relative to the site file) into the site file,
/// keeping everything else; the web page's labelling does when the site has no sample set yet.
pub fn write_samples(path: &Path, folder: &str, labels: &str) -> Result<(), SiteError> {
    edit(path, |document| {
        let samples = table_at(document, &["samples"])?;
        samples.set_implicit(false);
        samples.decor_mut().set_prefix("\n# Labelled pictures of this site (the web page adds to them).\n");
        samples.insert("folder", value(folder));
        samples.insert("labels", value(labels));
        Ok(())
    })
}

/// Nine significant digits: enough for a homography, short enough to read.
fn significant(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(8 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}

/// A threshold for the file: 4 decimals, rounded down, so that the find it was chosen at (whose
/// score it is) stays kept when the file is read back as f32. From the score's shortest decimal
/// form, so 0.5339 stays 0.5339 rather than becoming 0.5338 through its f32 0.53389996 (a score of
/// 0.53389996 itself is written 0.5338).
pub fn four_decimals_down(threshold: f32) -> f64 {
    let decimal: f64 = threshold.to_string().parse().unwrap_or(f64::from(threshold));
    (decimal * 1e4 + 1e-9).floor() / 1e4
}

/// Writes `[thresholds.<model>]` into the site file (the classes calibrated; others kept), each with
/// a comment saying what it gave on the sample set. Classes the model never found are left out.
pub fn write_thresholds(path: &Path, model: &str, classes: &[ClassCalibration], target: f64) -> Result<(), SiteError> {
    edit(path, |document| {
        let fresh = !document.get("thresholds").and_then(Item::as_table).is_some_and(|t| t.contains_key(model));
        let table = table_at(document, &["thresholds", model])?;
        table.set_implicit(false);
        if fresh {
            table.decor_mut().set_prefix(format!(
                "\n# Per-class score thresholds of model {model}; written by `edge-agent calibrate thresholds`.\n"
            ));
        }
        // A class the model never found on the samples has no threshold to choose (writing the
        // placeholder 1.0 would switch it off).
        for class in classes.iter().filter(|c| !c.curve.is_empty()) {
            let mut threshold = toml_edit::Value::from(four_decimals_down(class.threshold));
            let reached = if class.target_reached { String::new() } else { format!(" (target {target} NOT reached)") };
            threshold.decor_mut().set_suffix(format!(
                " # precision {:.2}, recall {:.2} of {} labelled{reached}",
                class.precision, class.recall, class.labelled
            ));
            table.insert(&class.label, Item::Value(threshold));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibrate::homography::{fit, parse_points};

    #[test]
    fn ground_is_written_and_read_back_keeping_the_rest_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("yard.toml");
        std::fs::write(
            &path,
            "# Yard by the north gate\nsite = \"yard\"\n\n[thresholds.nanodet]\ntruck = 0.4 # set by hand\n",
        )
        .unwrap();
        let pairs = parse_points("0,0=0,0; 300,0=3,0; 300,200=3,2; 0,200=0,2").unwrap();
        let fitted = fit(&pairs, 0.01).unwrap();
        write_ground(&path, "gate", &pairs, &fitted).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# Yard by the north gate") && text.contains("# set by hand"), "{text}");
        assert!(text.contains("[scenes.gate.ground]") && !text.contains("[scenes]\n"), "{text}");
        let site = SiteCalibration::load(&path).unwrap();
        assert_eq!(site.site.as_deref(), Some("yard"));
        assert_eq!(site.thresholds["nanodet"]["truck"], 0.4);
        let ground = site.scenes["gate"].ground.as_ref().unwrap();
        let h = ground.homography;
        assert!((h[0][0] - 0.01).abs() < 1e-9 && (h[1][1] - 0.01).abs() < 1e-9, "{h:?}");
        assert_eq!(ground.points.len(), 4);
        // A second fit updates the same table in place.
        let pairs = parse_points("0,0=0,0; 200,0=3,0; 200,200=3,3; 0,200=0,3").unwrap();
        write_ground(&path, "gate", &pairs, &fit(&pairs, 0.01).unwrap()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("[scenes.gate.ground]").count(), 1, "{text}");
        let h = SiteCalibration::load(&path).unwrap().scenes["gate"].ground.as_ref().unwrap().homography;
        assert!((h[0][0] - 0.015).abs() < 1e-9, "{h:?}");
    }

    #[test]
    fn thresholds_are_written_rounded_down_so_their_find_stays_kept() {
        for score in [0.5339f32, 0.36233, 0.89669996, 0.1, 0.30020899] {
            let written = four_decimals_down(score);
            assert!(written as f32 <= score && f64::from(score) - written < 1e-4, "{score} → {written}");
        }
        assert_eq!(four_decimals_down(0.5339), 0.5339);
    }

    #[test]
    fn thresholds_are_written_per_model_with_what_they_gave_and_unfound_classes_left_out() {
        use crate::calibrate::thresholds::{calibrate, parse_labels, Prediction};
        let truth = parse_labels("a,cup\nb,cup\nb,truck\nc,none\n", Path::new("l.csv")).unwrap();
        let cup = |file: &str, score| Prediction { file: file.into(), label: "cup".into(), score, bbox: None };
        let classes = calibrate(&[cup("a", 0.8), cup("c", 0.6), cup("b", 0.4)], &truth, 0.9);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("yard.toml");
        std::fs::write(&path, "[thresholds.nanodet]\nperson = 0.2 # by hand\n").unwrap();
        write_thresholds(&path, "nanodet", &classes, 0.9).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("person = 0.2 # by hand"), "{text}");
        assert!(text.contains("cup = 0.8 # precision 1.00, recall 0.50 of 2 labelled"), "{text}");
        assert!(!text.contains("truck"), "never found, so no threshold: {text}");
    }

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
