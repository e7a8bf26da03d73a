//! Writing calibration results into a site file (`calibration/<site>.toml`): ground homographies,
//! per-class thresholds and the sample set's place, edited with toml_edit so the installer's
//! comments and layout stay, and written atomically. Reading a site file into a config is
//! `config::site`'s.

use std::path::Path;

use toml_edit::{value, Array, DocumentMut, Item, Table};

use super::homography::{GroundFit, PointPair};
use super::thresholds::ClassCalibration;
use crate::base::write_file::write_atomically;
use crate::config::site::SiteError;

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
    use crate::config::site::SiteCalibration;
    use crate::ops::calibrate::homography::{fit, parse_points};
    use std::path::Path;

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
        use crate::ops::calibrate::thresholds::{calibrate, parse_labels, Prediction};
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
}
