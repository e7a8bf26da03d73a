//! `edge-agent learn`: trains a classifier head on the site's labelled crops (embeddings of the
//! shipped backbone), checks it on held-out crops, writes it as a model (ONNX + manifest) and a
//! report folder with the figures and their pictures.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use edge_agent::config::site::SiteCalibration;
use edge_agent::infer::manifest::{HeldOutFigures, LearnedSpec, Manifest};
use edge_agent::infer::{config::ModelConfig, Model};
use edge_agent::judge::taxonomy::Taxonomy;
use edge_agent::ops::calibrate::samples::SampleSet;
use edge_agent::ops::learn::{self, head, report::Report, train::TrainOptions, Embedded};

#[derive(clap::Args)]
pub struct LearnArgs {
    /// Site file whose `[samples]` (folder and labels CSV) hold the labelled pictures.
    #[arg(long)]
    site: Option<PathBuf>,
    /// Folder of labelled pictures; default: `[samples] folder` of the site file.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// CSV of labels, `file,label[,x1,y1,x2,y2]`: one row per crop (without a box, the whole
    /// picture); default: `[samples] labels` of the site file.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Folder to write the model into (`<name>.onnx`, `<name>.toml`, `<name>.labels.txt`) and the
    /// report (under `report/`).
    #[arg(long)]
    out: PathBuf,
    /// The new model's name.
    #[arg(long, default_value = "site_garbage")]
    name: String,
    /// Manifest of the backbone whose `[embedding]` features are learnt from; default: the
    /// config's `taxonomy.classifier`.
    #[arg(long)]
    backbone: Option<PathBuf>,
    /// Agent config (backend, taxonomy); default: the embedded defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Share of each class's crops held out from training to check the head on.
    #[arg(long, default_value_t = 0.25)]
    held_out: f64,
    /// Seed of the held-out split (the same seed gives the same split).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// L2 penalty of the logistic regression (on standardised features).
    #[arg(long, default_value_t = 1.0)]
    alpha: f64,
}

pub fn learn(args: LearnArgs) -> anyhow::Result<()> {
    if !(args.held_out > 0.0 && args.held_out < 1.0) {
        bail!("--held-out is {}; expected a share above 0 and below 1, e.g. 0.25", args.held_out);
    }
    if !(args.alpha > 0.0 && args.alpha.is_finite()) {
        bail!("--alpha is {}; expected a positive number, e.g. 1.0", args.alpha);
    }
    if args.name.is_empty() || !args.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        bail!("--name {:?}: expected letters, digits, '_' or '-' (it names the model's files)", args.name);
    }
    let config = super::load_config(args.config.as_deref())?;
    let from_site = match &args.site {
        Some(path) => SiteCalibration::load(path)?.samples,
        None => None,
    };
    let (folder, labels) = match (args.samples, args.labels, from_site) {
        (Some(folder), Some(labels), _) => (folder, labels),
        (folder, labels, Some(samples)) => (folder.unwrap_or(samples.folder), labels.unwrap_or(samples.labels)),
        _ => {
            bail!("name the labelled pictures with --site FILE (its [samples]) or --samples DIR and --labels FILE.csv")
        }
    };
    let set = SampleSet::open(&folder, &labels)?;
    let crops = learn::labelled_crops(&set);
    // Refuse before the slow part: counts need no embeddings.
    let names: Vec<String> = crops.iter().map(|c| c.label.clone()).collect();
    learn::train::check_counts(&names).with_context(|| format!("labels file {}", labels.display()))?;

    let backbone_path = args.backbone.clone().unwrap_or_else(|| config.taxonomy.classifier.clone());
    let backbone_config =
        ModelConfig { manifest: backbone_path.clone(), score_threshold: None, class_thresholds: Default::default() };
    let mut backbone = Model::load_embedder(&backbone_config, &config.inference)
        .with_context(|| format!("loading the backbone {}", backbone_path.display()))?;
    let backbone_manifest = backbone.manifest().clone();
    let embedding = backbone_manifest.embedding.clone().context("the backbone has no [embedding]")?;

    let progress = progress_bar(crops.len() as u64);
    let examples = learn::embed_crops(&set, &crops, &mut backbone, |crop| {
        progress.set_message(crop.file.clone());
        progress.inc(1);
    })?;
    progress.finish_and_clear();
    drop(backbone);

    // The shipped way of naming a category, on the same crops, when the labels are categories.
    let taxonomy = Taxonomy::load(&config.taxonomy).ok();
    let categories: Vec<String> = config.taxonomy.categories.iter().map(|c| c.name.clone()).collect();
    let labels_are_categories = names.iter().all(|n| categories.contains(n));
    let min_score = config.taxonomy.classifier_min_score;
    let backbone_name = backbone_manifest.name.clone();
    let mapped = |e: &Embedded| -> Option<String> {
        let (label, score) = e.backbone_top.as_ref()?;
        let taxonomy = taxonomy.as_ref()?;
        (*score >= min_score).then(|| taxonomy.category_of(&backbone_name, label).to_string())
    };
    let baseline: Option<learn::NameOf> = (labels_are_categories && taxonomy.is_some()).then_some(&mapped as _);
    let options = TrainOptions { alpha: args.alpha, ..TrainOptions::default() };
    eprintln!("Training on {} crops ({} features each)…", examples.len(), embedding.size);
    let outcome = learn::train_and_check(&examples, args.held_out, args.seed, options, baseline)?;

    let learned = LearnedSpec {
        samples: folder.display().to_string(),
        labels_file: labels.display().to_string(),
        newest_sample: newest_change(&set.folder, &learn::files_of(&crops), &labels)?,
        trained_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        backbone: backbone_manifest.name.clone(),
        backbone_sha256: backbone_manifest.sha256.to_lowercase(),
        held_out_share: args.held_out,
        held_out_accuracy: outcome.evaluation.accuracy,
        counts: outcome.counts.clone(),
        held_out: outcome
            .evaluation
            .classes
            .iter()
            .map(|c| (c.label.clone(), HeldOutFigures { crops: c.held_out, precision: c.precision, recall: c.recall }))
            .collect(),
    };
    let verified = Manifest::load(&backbone_path)?.verify()?;
    let written = head::write_model(
        &args.out,
        &args.name,
        &backbone_manifest,
        &verified.bytes,
        &embedding.output,
        &outcome.head,
        &learned,
    )?;
    let report_dir = args.out.join("report");
    let report = Report {
        name: &args.name,
        outcome: &outcome,
        examples: &examples,
        samples: &folder,
        model_manifest: Some(&written.manifest),
    };
    report.write(&report_dir)?;
    print!("{}", report.summary_markdown());
    println!("\nReport: {}", report_dir.display());
    println!(
        "To use it for wrong_bin, set `[taxonomy] classifier = \"{}\"` in the agent config.",
        written.manifest.display()
    );
    Ok(())
}

/// When the newest of the used pictures or the labels file last changed, RFC 3339.
fn newest_change(folder: &Path, files: &std::collections::BTreeSet<String>, labels: &Path) -> anyhow::Result<String> {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for path in files.iter().map(|f| folder.join(f)).chain([labels.to_owned()]) {
        let modified = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .with_context(|| format!("reading the date of {}", path.display()))?;
        newest = newest.max(modified);
    }
    Ok(chrono::DateTime::<chrono::Utc>::from(newest).to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// A bar over the crops on stderr; indicatif draws nothing when stderr is not a terminal.
fn progress_bar(len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    let style = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} crops  {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
