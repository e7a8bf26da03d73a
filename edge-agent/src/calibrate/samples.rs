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
                let result =
                    model.infer(&image).map_err(|source| SamplesError::Infer { model: name.clone(), path: path.clone(), source })?;
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
