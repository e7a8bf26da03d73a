//! One whole `learn`: labelled crops → embeddings → head and held-out figures (with the ImageNet
//! mapping's on the same crops when the labels are categories) → model files and report folder.
//! The command line (`cmd/learn.rs`) only gathers the request and prints.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::head::{self, HeadError, WrittenModel};
use super::report::{Report, ReportError};
use super::train::{self, TrainOptions};
use super::{embed_crops, files_of, labelled_crops, train_and_check, Embedded, LabelledCrop, LearnError, Outcome};
use crate::infer::config::{InferenceConfig, ModelConfig};
use crate::infer::manifest::{HeldOutFigures, LearnedSpec, Manifest};
use crate::infer::Model;
use crate::judge::config::TaxonomyConfig;
use crate::judge::taxonomy::Taxonomy;
use crate::ops::calibrate::samples::SampleSet;

/// What to learn from and where to write it.
pub struct Request<'a> {
    pub set: &'a SampleSet,
    /// Manifest of the backbone (with `[embedding]`).
    pub backbone: &'a Path,
    pub inference: &'a InferenceConfig,
    /// The categories and the shipped mapping, for the comparison.
    pub taxonomy: &'a TaxonomyConfig,
    pub out: &'a Path,
    pub name: &'a str,
    pub held_out_share: f64,
    pub seed: u64,
    pub options: TrainOptions,
}

/// What one `learn` produced.
pub struct Learnt {
    pub outcome: Outcome,
    pub examples: Vec<Embedded>,
    pub written: WrittenModel,
    pub report_dir: PathBuf,
    /// The report's summary (Markdown), also in `report_dir/summary.md`.
    pub summary: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Learn(#[from] LearnError),
    #[error("loading the backbone {path}: {source}")]
    Backbone { path: PathBuf, source: Box<crate::infer::InferError> },
    #[error("reading the backbone {path}: {source}")]
    BackboneFile { path: PathBuf, source: Box<crate::infer::manifest::ManifestError> },
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("reading the date of {path}: {source}")]
    Date { path: PathBuf, source: std::io::Error },
}

/// Refuses too few crops or one class before the backbone runs, then learns and writes.
/// `progress` is called after each crop's embedding.
pub fn learn_site(request: &Request, progress: impl FnMut(&LabelledCrop)) -> Result<Learnt, RunError> {
    let set = request.set;
    let crops = labelled_crops(set);
    let names: Vec<String> = crops.iter().map(|c| c.label.clone()).collect();
    train::check_counts(&names).map_err(LearnError::from)?;

    let backbone_error = |source: crate::infer::InferError| RunError::Backbone {
        path: request.backbone.to_owned(),
        source: Box::new(source),
    };
    let config = ModelConfig {
        manifest: request.backbone.to_owned(),
        score_threshold: None,
        class_thresholds: Default::default(),
    };
    let mut backbone = Model::load_embedder(&config, request.inference).map_err(backbone_error)?;
    let manifest = backbone.manifest().clone();
    let embedding = manifest
        .embedding
        .clone()
        .ok_or_else(|| backbone_error(crate::infer::InferError::NoEmbedding { manifest: manifest.path.clone() }))?;
    let examples = embed_crops(set, &crops, &mut backbone, progress)?;
    drop(backbone);

    // The shipped way of naming a category, on the same crops, when the labels are categories.
    let taxonomy = Taxonomy::load(request.taxonomy).ok();
    let labels_are_categories = names.iter().all(|n| request.taxonomy.categories.iter().any(|c| &c.name == n));
    let min_score = request.taxonomy.classifier_min_score;
    let mapped = |e: &Embedded| -> Option<String> {
        let (label, score) = e.backbone_top.as_ref()?;
        let taxonomy = taxonomy.as_ref()?;
        (*score >= min_score).then(|| taxonomy.category_of(&manifest.name, label).to_string())
    };
    let baseline: Option<super::NameOf> = (labels_are_categories && taxonomy.is_some()).then_some(&mapped as _);
    let outcome = train_and_check(&examples, request.held_out_share, request.seed, request.options, baseline)
        .map_err(LearnError::from)?;

    let learned = LearnedSpec {
        samples: set.folder.display().to_string(),
        labels_file: set.labels_file.display().to_string(),
        newest_sample: newest_change(&set.folder, &files_of(&crops), &set.labels_file)?,
        trained_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        backbone: manifest.name.clone(),
        backbone_sha256: manifest.sha256.to_lowercase(),
        held_out_share: request.held_out_share,
        held_out_accuracy: outcome.evaluation.accuracy,
        counts: outcome.counts.clone(),
        held_out: outcome
            .evaluation
            .classes
            .iter()
            .map(|c| (c.label.clone(), HeldOutFigures { crops: c.held_out, precision: c.precision, recall: c.recall }))
            .collect(),
    };
    // The file as its manifest pins it (the embedder ran a rewritten copy).
    let verified = Manifest::load(request.backbone)
        .and_then(|m| m.verify())
        .map_err(|source| RunError::BackboneFile { path: request.backbone.to_owned(), source: Box::new(source) })?;
    let written = head::write_model(
        request.out,
        request.name,
        &manifest,
        &verified.bytes,
        &embedding.output,
        &outcome.head,
        &learned,
    )?;
    let report_dir = request.out.join("report");
    let report = Report {
        name: request.name,
        outcome: &outcome,
        examples: &examples,
        samples: &set.folder,
        model_manifest: Some(&written.manifest),
    };
    report.write(&report_dir)?;
    let summary = report.summary_markdown();
    Ok(Learnt { outcome, examples, written, report_dir, summary })
}

/// When the newest of the used pictures or the labels file last changed, RFC 3339.
fn newest_change(folder: &Path, files: &BTreeSet<String>, labels: &Path) -> Result<String, RunError> {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for path in files.iter().map(|f| folder.join(f)).chain([labels.to_owned()]) {
        let modified = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map_err(|source| RunError::Date { path: path.clone(), source })?;
        newest = newest.max(modified);
    }
    Ok(chrono::DateTime::<chrono::Utc>::from(newest).to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}
