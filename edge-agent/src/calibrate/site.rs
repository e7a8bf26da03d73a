//! A site calibration file, `calibration/<site>.toml`: the ground homography, per-class thresholds and
//! where the labelled sample set is. Tools update their own table and leave the rest of the file
//! (comments included) as the installer wrote it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml_edit::{value, Array, DocumentMut, Item, Table};

use super::homography::{GroundFit, PointPair};
use super::thresholds::ClassCalibration;

#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("cannot read site file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("site file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write site file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// What the agent reads from a site file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteCalibration {
    #[serde(default)]
    pub site: Option<String>,
    #[serde(default)]
    pub ground: Option<GroundSection>,
    /// Score threshold per model label, chosen by `calibrate thresholds`.
    #[serde(default)]
    pub thresholds: BTreeMap<String, f32>,
    #[serde(default)]
    pub samples: Option<SamplesSection>,
    /// Zones and other sections are read by the stages that own them.
    #[serde(default)]
    pub zones: Option<toml::Value>,
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
    pub fn load(path: &Path) -> Result<Self, SiteError> {
        let text = std::fs::read_to_string(path).map_err(|source| SiteError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|e| SiteError::Parse { path: path.to_owned(), message: e.to_string() })
    }
}

fn edit(path: &Path, change: impl FnOnce(&mut DocumentMut)) -> Result<(), SiteError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(SiteError::Read { path: path.to_owned(), source }),
    };
    let mut document: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| SiteError::Parse { path: path.to_owned(), message: e.to_string() })?;
    change(&mut document);
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

/// Writes `[ground]` into the site file.
pub fn write_ground(path: &Path, pairs: &[PointPair], fit: &GroundFit) -> Result<(), SiteError> {
    edit(path, |document| {
        let mut ground = Table::new();
        let mut rows = Array::new();
        for row in fit.homography.rows() {
            rows.push(row.iter().copied().collect::<Array>());
        }
        ground.insert("homography", value(rows));
        let points: Array =
            pairs.iter().map(|p| format!("{},{}={},{}", p.image[0], p.image[1], p.ground[0], p.ground[1])).collect();
        ground.insert("points", value(points));
        ground.insert("rms_error_m", value((fit.rms_error_m * 1e4).round() / 1e4));
        ground.insert("max_error_m", value((fit.max_error_m * 1e4).round() / 1e4));
        ground.decor_mut().set_prefix("\n# Image pixels → ground metres; written by `edge-agent calibrate ground`.\n");
        document.insert("ground", Item::Table(ground));
    })
}

/// Writes `[thresholds]` into the site file (the classes calibrated; others kept).
pub fn write_thresholds(path: &Path, classes: &[ClassCalibration]) -> Result<(), SiteError> {
    edit(path, |document| {
        if !document.contains_table("thresholds") {
            let mut table = Table::new();
            table
                .decor_mut()
                .set_prefix("\n# Per-class score thresholds; written by `edge-agent calibrate thresholds`.\n");
            document.insert("thresholds", Item::Table(table));
        }
        if let Some(table) = document["thresholds"].as_table_mut() {
            for class in classes {
                table.insert(&class.label, value(f64::from((class.threshold * 1e4).round() / 1e4)));
            }
        }
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
        std::fs::write(&path, "# Yard by the north gate\nsite = \"yard\"\n\n[thresholds]\ntruck = 0.4 # set by hand\n")
            .unwrap();
        let pairs = parse_points("0,0=0,0; 300,0=3,0; 300,200=3,2; 0,200=0,2").unwrap();
        let fitted = fit(&pairs, 0.01).unwrap();
        write_ground(&path, &pairs, &fitted).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# Yard by the north gate") && text.contains("# set by hand"), "{text}");
        let site = SiteCalibration::load(&path).unwrap();
        assert_eq!(site.site.as_deref(), Some("yard"));
        assert_eq!(site.thresholds["truck"], 0.4);
        let h = site.ground.unwrap().homography;
        assert!((h[0][0] - 0.01).abs() < 1e-9 && (h[1][1] - 0.01).abs() < 1e-9, "{h:?}");
    }

    #[test]
    fn an_unknown_key_in_a_site_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("yard.toml");
        std::fs::write(&path, "site = \"yard\"\ngrond = 1\n").unwrap();
        let err = SiteCalibration::load(&path).unwrap_err();
        assert!(err.to_string().contains("grond") && err.to_string().contains("yard.toml"), "{err}");
    }
}
