//! `edge-agent learn`: trains a classifier head on the site's labelled crops (embeddings of the
//! shipped backbone), checks it on held-out crops, writes it as a model (ONNX + manifest) and a
//! report folder with the figures and their pictures.

use std::path::PathBuf;

use anyhow::{bail, Context};
use edge_agent::config::site::SiteCalibration;
use edge_agent::ops::calibrate::samples::SampleSet;
use edge_agent::ops::learn::run::{learn_site, Request};
use edge_agent::ops::learn::train::TrainOptions;

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
    let backbone = args.backbone.clone().unwrap_or_else(|| config.taxonomy.classifier.clone());
    let request = Request {
        set: &set,
        backbone: &backbone,
        inference: &config.inference,
        taxonomy: &config.taxonomy,
        out: &args.out,
        name: &args.name,
        held_out_share: args.held_out,
        seed: args.seed,
        options: TrainOptions { alpha: args.alpha, ..TrainOptions::default() },
    };
    let progress = super::progress_bar("crops", set.truth.values().map(Vec::len).sum::<usize>() as u64);
    let learnt = learn_site(&request, |crop| {
        progress.set_message(crop.file.clone());
        progress.inc(1);
    });
    progress.finish_and_clear();
    let learnt = learnt.with_context(|| format!("learning from {}", labels.display()))?;
    print!("{}", learnt.summary);
    println!("\nReport: {}", learnt.report_dir.display());
    println!(
        "To use it for wrong_bin, set `[taxonomy] classifier = \"{}\"` in the agent config.",
        learnt.written.manifest.display()
    );
    Ok(())
}
