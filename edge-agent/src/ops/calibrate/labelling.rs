//! Growing a site's sample set from daily use: a supervisor's verdict on an event becomes a picture
//! in the sample folder and its rows in the labels CSV that `edge-agent calibrate thresholds` reads
//! (calibration/README.md); labelling a picture again replaces its rows. Written atomically.

use std::path::{Path, PathBuf};

use crate::base::write_file::write_atomically;
use crate::config::site::{SiteCalibration, SiteError};
use crate::config::Config;

/// The header a new labels file starts with.
const NEW_LABELS_FILE: &str = "# Labels of this site's sample pictures, for `edge-agent calibrate thresholds`.\n\
# One row per object: file,label,x1,y1,x2,y2 (box in the picture's pixels); file,none for a picture\n\
# with none of the labelled classes. Rows added from the web page say which event they came from.\n\
file,label,x1,y1,x2,y2\n";

#[derive(Debug, thiserror::Error)]
pub enum LabellingError {
    #[error(transparent)]
    Site(#[from] SiteError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read labels file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

/// A sample folder and its labels file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleSetPaths {
    pub folder: PathBuf,
    pub labels: PathBuf,
    /// A site file that has no `[samples]` yet and should get one naming these (relative).
    site_without_samples: Option<(PathBuf, String, String)>,
}

impl SampleSetPaths {
    /// Where labelled samples of this config go: the site file's `[samples]`; without that section,
    /// `<site name>/samples/` and `<site name>/labels.csv` beside it (and the section added naming
    /// them); without a site file, `state_dir/samples/` and its `labels.csv`. Reads the site file.
    pub fn of(config: &Config) -> Result<Self, SiteError> {
        let Some(site_path) = &config.site.calibration else {
            let folder = config.state_dir.join("samples");
            return Ok(Self { labels: folder.join("labels.csv"), folder, site_without_samples: None });
        };
        let site = SiteCalibration::load(site_path)?;
        if let Some(samples) = site.samples {
            return Ok(Self { folder: samples.folder, labels: samples.labels, site_without_samples: None });
        }
        let stem = site_path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "site".into());
        let base = site_path.parent().unwrap_or(Path::new(""));
        let (folder, labels) = (format!("{stem}/samples"), format!("{stem}/labels.csv"));
        Ok(Self {
            folder: base.join(&folder),
            labels: base.join(&labels),
            site_without_samples: Some((site_path.clone(), folder, labels)),
        })
    }

    /// Samples in a folder of one's choosing (tests).
    pub fn at(folder: &Path, labels: &Path) -> Self {
        Self { folder: folder.to_owned(), labels: labels.to_owned(), site_without_samples: None }
    }
}

/// One row of the labels file: a label (or `none`), with the object's box in the picture's pixels
/// when known, and a comment saying where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelRow {
    pub label: String,
    pub bbox: Option<[u32; 4]>,
    pub comment: String,
}

impl LabelRow {
    fn line(&self, file: &str) -> String {
        let mut line = format!("{file},{}", self.label);
        if let Some([x1, y1, x2, y2]) = self.bbox {
            line.push_str(&format!(",{x1},{y1},{x2},{y2}"));
        }
        // The CSV has no quoting: a comment is everything after `#` on one line.
        let comment: String = self.comment.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        if !comment.is_empty() {
            line.push_str(&format!(" # {comment}"));
        }
        line
    }
}

/// Whether a label can stand in a row: no separators, comments or line breaks.
pub fn is_plain_label(label: &str) -> bool {
    !label.trim().is_empty() && !label.contains([',', '#']) && !label.chars().any(char::is_control)
}

/// Puts `picture` into the sample folder as `file` and replaces that file's rows in the labels
/// file by `rows` (the labels file is created with a header when missing). A site file without
/// `[samples]` gets one naming the folder and labels file used.
pub fn add_sample(paths: &SampleSetPaths, file: &str, picture: &[u8], rows: &[LabelRow]) -> Result<(), LabellingError> {
    let plain_name =
        Path::new(file).file_name().is_some_and(|name| name == file) && !file.starts_with('.') && !file.contains(',');
    if !plain_name {
        return Err(LabellingError::Invalid(format!("{file:?} is not a plain picture file name")));
    }
    if let Some(row) = rows.iter().find(|row| !is_plain_label(&row.label)) {
        return Err(LabellingError::Invalid(format!("label {:?} cannot stand in a labels file", row.label)));
    }
    let picture_path = paths.folder.join(file);
    write_atomically(&picture_path, picture)
        .map_err(|source| LabellingError::Write { path: picture_path.clone(), source })?;
    let existing = match std::fs::read_to_string(&paths.labels) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => NEW_LABELS_FILE.to_string(),
        Err(source) => return Err(LabellingError::Read { path: paths.labels.clone(), source }),
    };
    let mut text = String::with_capacity(existing.len() + 128);
    for line in existing.lines() {
        let data = line.split('#').next().unwrap_or_default();
        let row_file = data.split(',').next().unwrap_or_default().trim();
        if row_file != file {
            text.push_str(line);
            text.push('\n');
        }
    }
    for row in rows {
        text.push_str(&row.line(file));
        text.push('\n');
    }
    write_atomically(&paths.labels, text.as_bytes())
        .map_err(|source| LabellingError::Write { path: paths.labels.clone(), source })?;
    if let Some((site, folder, labels)) = &paths.site_without_samples {
        super::site_file::write_samples(site, folder, labels)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::calibrate::thresholds::read_labels;

    fn row(label: &str, bbox: Option<[u32; 4]>) -> LabelRow {
        LabelRow { label: label.into(), bbox, comment: "event 1: right, by ana".into() }
    }

    #[test]
    fn a_labelled_picture_is_kept_and_its_rows_read_back_and_a_relabel_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SampleSetPaths::at(&dir.path().join("samples"), &dir.path().join("samples/labels.csv"));
        add_sample(&paths, "a.jpg", b"jpeg a", &[row("truck", Some([10, 20, 110, 90]))]).unwrap();
        add_sample(&paths, "b.jpg", b"jpeg b", &[row("none", None)]).unwrap();
        assert_eq!(std::fs::read(dir.path().join("samples/a.jpg")).unwrap(), b"jpeg a");
        let set = read_labels(&paths.labels).unwrap();
        assert_eq!(set["a.jpg"][0].label, "truck");
        assert_eq!(set["a.jpg"][0].bbox.unwrap().x2, 110.0);
        assert!(set["b.jpg"].is_empty(), "none: nothing of interest");
        // The supervisor changes their mind: the picture's rows are replaced, the others stay.
        add_sample(&paths, "a.jpg", b"jpeg a", &[row("car", Some([10, 20, 110, 90]))]).unwrap();
        let text = std::fs::read_to_string(&paths.labels).unwrap();
        assert_eq!(text.matches("a.jpg").count(), 1, "{text}");
        assert!(text.contains("a.jpg,car,10,20,110,90 # event 1: right, by ana"), "{text}");
        assert!(text.starts_with("# Labels of this site") && text.contains("b.jpg,none"), "{text}");
        assert_eq!(read_labels(&paths.labels).unwrap().len(), 2);
    }

    #[test]
    fn names_and_labels_that_would_break_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SampleSetPaths::at(dir.path(), &dir.path().join("labels.csv"));
        for file in ["../x.jpg", "a/b.jpg", ".hidden.jpg", "a,b.jpg"] {
            assert!(add_sample(&paths, file, b"x", &[row("truck", None)]).is_err(), "{file}");
        }
        for label in ["a,b", "a#b", "a\nb", " "] {
            assert!(add_sample(&paths, "a.jpg", b"x", &[row(label, None)]).is_err(), "{label:?}");
        }
        assert!(!dir.path().join("labels.csv").exists());
    }

    #[test]
    fn samples_go_to_the_site_file_or_the_state_folder() {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("agent.toml");
        std::fs::write(&config_path, "state_dir = \"state\"\n").unwrap();
        let config = Config::load(&config_path).unwrap();
        let paths = SampleSetPaths::of(&config).unwrap();
        assert_eq!(paths.folder, dir.path().join("state/samples"));
        assert_eq!(paths.labels, dir.path().join("state/samples/labels.csv"));

        // A site file without [samples] gets one, naming a folder beside it.
        std::fs::write(dir.path().join("yard.toml"), "# the yard\nsite = \"yard\"\n").unwrap();
        std::fs::write(&config_path, "[site]\ncalibration = \"yard.toml\"\n").unwrap();
        let config = Config::load(&config_path).unwrap();
        let paths = SampleSetPaths::of(&config).unwrap();
        assert_eq!(paths.folder, dir.path().join("yard/samples"));
        add_sample(&paths, "a.jpg", b"x", &[row("truck", None)]).unwrap();
        let site = SiteCalibration::load(&dir.path().join("yard.toml")).unwrap();
        let samples = site.samples.expect("a [samples] section");
        assert_eq!(samples.folder, dir.path().join("yard/samples"));
        assert_eq!(samples.labels, dir.path().join("yard/labels.csv"));
        assert!(std::fs::read_to_string(dir.path().join("yard.toml")).unwrap().contains("# the yard"));
        // From now on the site file's section is used as it is.
        let again = SampleSetPaths::of(&Config::load(&config_path).unwrap()).unwrap();
        assert_eq!((again.folder, again.site_without_samples), (paths.folder, None));
    }
}
