//! A labelled sample set on disk (a folder of pictures and a labels CSV) and the real models run
//! over it: what each model predicted on each labelled picture, for `thresholds::calibrate`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::thresholds::{read_labels, LabelledSet, LabelsError, Prediction};
use crate::infer::{Findings, InferError, Model};

#[derive(Debug, thiserror::Error)]
pub enum SamplesError {
    #[error(transparent)]
    Labels(#[from] LabelsError),
    #[error("cannot read the sample folder {path}: {source}")]
    Folder { path: PathBuf, source: std::io::Error },
    #[error("labels file {labels} names {file:?}, which is not in the sample folder {folder}")]
    Missing { labels: PathBuf, file: String, folder: PathBuf },
    #[error("labels file {labels} labels no picture; expected rows file,label[,x1,y1,x2,y2]")]
    Empty { labels: PathBuf },
    #[error(transparent)]
    Picture(#[from] crate::source::SourceError),
    #[error("model {model} on {path}: {source}")]
    Infer { model: String, path: PathBuf, source: InferError },
}

/// The labelled pictures of a folder.
#[derive(Debug, Clone)]
pub struct SampleSet {
    pub folder: PathBuf,
    pub labels_file: PathBuf,
    pub truth: LabelledSet,
    /// Pictures in the folder that the labels file does not mention: not used.
    pub unlabelled: Vec<String>,
}

const PICTURE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

impl SampleSet {
    /// Reads the labels and checks that every labelled picture is in the folder.
    pub fn open(folder: &Path, labels_file: &Path) -> Result<Self, SamplesError> {
        let truth = read_labels(labels_file)?;
        if truth.is_empty() {
            return Err(SamplesError::Empty { labels: labels_file.to_owned() });
        }
        let entries =
            std::fs::read_dir(folder).map_err(|source| SamplesError::Folder { path: folder.to_owned(), source })?;
        let mut pictures = BTreeSet::new();
        for entry in entries {
            let entry = entry.map_err(|source| SamplesError::Folder { path: folder.to_owned(), source })?;
            let name = entry.file_name().to_string_lossy().to_string();
            let extension = Path::new(&name).extension().map(|e| e.to_string_lossy().to_lowercase());
            if extension.is_some_and(|e| PICTURE_EXTENSIONS.contains(&e.as_str())) {
                pictures.insert(name);
            }
        }
        if let Some(file) = truth.keys().find(|f| !pictures.contains(*f)) {
            return Err(SamplesError::Missing {
                labels: labels_file.to_owned(),
                file: file.clone(),
                folder: folder.to_owned(),
            });
        }
        let unlabelled = pictures.into_iter().filter(|p| !truth.contains_key(p)).collect();
        Ok(Self { folder: folder.to_owned(), labels_file: labels_file.to_owned(), truth, unlabelled })
    }

    pub fn path_of(&self, file: &str) -> PathBuf {
        self.folder.join(file)
    }

    /// The labels restricted to what `known` (a model's labels) can name; the pictures stay, so a
    /// picture whose labels are all of other classes still counts as one without these classes.
    pub fn truth_for(&self, known: &[String]) -> LabelledSet {
        self.truth
            .iter()
            .map(|(file, truths)| (file.clone(), truths.iter().filter(|t| known.contains(&t.label)).cloned().collect()))
            .collect()
    }

    /// Labels that none of `models` can give: they cannot be calibrated.
    pub fn labels_unknown_to(&self, models: &[Model]) -> BTreeSet<String> {
        self.truth
            .values()
            .flatten()
            .map(|t| t.label.clone())
            .filter(|label| !models.iter().any(|m| m.labels().contains(label)))
            .collect()
    }

    /// Runs every model on every labelled picture; `progress` is called after each picture.
    /// Returns the predictions per model name.
    pub fn predict(
        &self,
        models: &mut [Model],
        mut progress: impl FnMut(&str),
    ) -> Result<BTreeMap<String, Vec<Prediction>>, SamplesError> {
        let mut predictions: BTreeMap<String, Vec<Prediction>> =
            models.iter().map(|m| (m.id().name.clone(), Vec::new())).collect();
        for file in self.truth.keys() {
            let path = self.path_of(file);
            let image = crate::source::replay::decode_picture("calibrate", &path)?;
            for model in models.iter_mut() {
                let name = model.id().name.clone();
                let result = model.infer(&image).map_err(|source| SamplesError::Infer {
                    model: name.clone(),
                    path: path.clone(),
                    source,
                })?;
                let found: Vec<Prediction> = match result.findings {
                    Findings::Detect { detections } => detections
                        .into_iter()
                        .map(|d| Prediction { file: file.clone(), label: d.label, score: d.score, bbox: Some(d.bbox) })
                        .collect(),
                    Findings::Classify { classes } => classes
                        .into_iter()
                        .map(|c| Prediction { file: file.clone(), label: c.label, score: c.score, bbox: None })
                        .collect(),
                };
                predictions.entry(name).or_default().extend(found);
            }
            progress(file);
        }
        Ok(predictions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendKind, ModelConfig};
    use crate::ops::calibrate::thresholds::{calibrate, parse_labels, ClassCalibration};

    fn example_site() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../calibration/example-site")
    }

    fn figures(classes: &[ClassCalibration], label: &str) -> (f32, f64, f64) {
        let class = classes.iter().find(|c| c.label == label).unwrap_or_else(|| panic!("no class {label}"));
        assert!(class.target_reached, "{class:?}");
        (class.threshold, class.precision, class.recall)
    }

    fn assert_figures(classes: &[ClassCalibration], label: &str, threshold: f32, precision: f64, recall: f64) {
        let (t, p, r) = figures(classes, label);
        assert!((t - threshold).abs() < 0.002, "{label}: threshold {t}, expected {threshold}");
        assert!((p - precision).abs() < 1e-9 && (r - recall).abs() < 1e-9, "{label}: precision {p}, recall {r}");
    }

    /// The real detector over the example site's real pictures. The figures were worked out by
    /// hand from its scores (`edge-agent infer` with score_threshold 0.1): e.g. person finds score
    /// 0.897 (walker 1), 0.808 (walker 2), 0.742 (person.jpg), 0.593 (the cat in chelsea.png),
    /// 0.585, 0.318, 0.220 (scream.jpg). The labels miss walker 2 on purpose, so its 0.808 counts
    /// as false and the person threshold rises from 0.742 to 0.897; the horse labelled as a dog
    /// costs the dog a third of its recall without moving its threshold.
    #[test]
    fn the_example_site_gives_the_thresholds_worked_out_by_hand() {
        let site = example_site();
        let set = SampleSet::open(&site.join("samples"), &site.join("labels.csv")).unwrap();
        assert_eq!(set.truth.len(), 8);
        assert!(set.unlabelled.is_empty(), "{:?}", set.unlabelled);
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/nanodet.toml");
        let config = ModelConfig { manifest, score_threshold: Some(0.1), class_thresholds: Default::default() };
        let mut models = vec![Model::load(&config, BackendKind::Tract).unwrap()];
        let mut seen = Vec::new();
        let predictions = set.predict(&mut models, |file| seen.push(file.to_string())).unwrap();
        assert_eq!(seen.len(), 8, "progress after every picture");
        let predictions = &predictions["nanodet"];
        let truth = set.truth_for(models[0].labels());

        let shipped = calibrate(predictions, &truth, 0.95);
        let labels: Vec<&str> = shipped.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["bicycle", "cup", "dog", "person", "truck"]);
        assert_figures(&shipped, "bicycle", 0.3002, 1.0, 1.0); // the next bicycle find, 0.297, is false
        assert_figures(&shipped, "cup", 0.5339, 1.0, 1.0);
        assert_figures(&shipped, "dog", 0.4204, 1.0, 2.0 / 3.0);
        assert_figures(&shipped, "person", 0.8966, 1.0, 1.0 / 5.0);
        assert_figures(&shipped, "truck", 0.3623, 1.0, 1.0);
        let person = shipped.iter().find(|c| c.label == "person").unwrap();
        assert_eq!(person.wrong_files, ["person.jpg", "scream.jpg"].map(String::from).into());

        // A lower target buys recall with false finds: walker 2 and the cat.
        let loose = calibrate(predictions, &truth, 0.6);
        assert_figures(&loose, "person", 0.3175, 4.0 / 6.0, 4.0 / 5.0);

        // With the two wrong rows put right, the person threshold falls back below walker 2.
        let text = std::fs::read_to_string(site.join("labels.csv")).unwrap();
        let fixed: String = text
            .lines()
            .filter(|l| !l.contains("this is the horse"))
            .chain(["beach-walkers.jpg,person,150,113,205,272"])
            .map(|l| format!("{l}\n"))
            .collect();
        let fixed_truth = parse_labels(&fixed, Path::new("fixed.csv")).unwrap();
        let right = calibrate(predictions, &fixed_truth, 0.95);
        assert_figures(&right, "person", 0.7419, 1.0, 3.0 / 6.0);
        assert_figures(&right, "dog", 0.4204, 1.0, 1.0);
    }

    #[test]
    fn a_label_for_a_picture_that_is_not_there_names_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jpg"), b"").unwrap();
        std::fs::write(dir.path().join("labels.csv"), "a.jpg,none\nb.jpg,truck\n").unwrap();
        let err = SampleSet::open(dir.path(), &dir.path().join("labels.csv")).unwrap_err().to_string();
        assert!(err.contains("labels.csv") && err.contains("\"b.jpg\""), "{err}");
        std::fs::write(dir.path().join("labels.csv"), "# nothing yet\n").unwrap();
        let err = SampleSet::open(dir.path(), &dir.path().join("labels.csv")).unwrap_err().to_string();
        assert!(err.contains("labels no picture"), "{err}");
    }
}
