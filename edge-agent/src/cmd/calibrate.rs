//! `edge-agent calibrate thresholds|ground`: fits the box to its site and writes the result into the
//! site calibration file (`calibration/<site>.toml`), keeping the rest of the file as it was.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use edge_agent::config::site::SiteCalibration;
use edge_agent::infer::{self, manifest::Task};
use edge_agent::ops::calibrate::report::{ModelCalibration, Report};
use edge_agent::ops::calibrate::samples::SampleSet;
use edge_agent::ops::calibrate::site_file::{write_ground, write_thresholds};
use edge_agent::ops::calibrate::{homography, thresholds};

#[derive(clap::Args)]
pub struct CalibrateArgs {
    #[command(subcommand)]
    command: CalibrateCommand,
}

#[derive(clap::Subcommand)]
enum CalibrateCommand {
    /// Run the models over labelled site pictures and choose per-class thresholds for a target
    /// precision; write them into the site file and a report folder.
    Thresholds(ThresholdsArgs),
    /// Fit the ground homography (pixels → metres) from four or more measured point pairs.
    Ground(GroundArgs),
}

#[derive(clap::Args)]
struct ThresholdsArgs {
    /// Folder of labelled pictures; default: `[samples] folder` of the site file.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// CSV of labels, `file,label[,x1,y1,x2,y2]` (label `none`: nothing of interest); default:
    /// `[samples] labels` of the site file.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Precision each class must reach; the lowest threshold that reaches it (most recall) wins.
    #[arg(long, default_value_t = 0.95)]
    target_precision: f64,
    /// Agent config whose models are run; default: the embedded defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Site file to write `[thresholds.<model>]` into; default: the config's `site.calibration`.
    #[arg(long)]
    site: Option<PathBuf>,
    /// Folder for the report (summary, curves, wrong pictures).
    #[arg(long, default_value = "calibration-report")]
    report: PathBuf,
    /// Only this model (manifest name); default: every configured detector.
    #[arg(long)]
    model: Option<String>,
    /// The models are run down to this score, so the curve shows what lower thresholds would do.
    #[arg(long, default_value_t = 0.1)]
    min_score: f32,
}

#[derive(clap::Args)]
struct GroundArgs {
    /// Pairs "x,y=X,Y; ..." of image pixels = ground metres, four or more, spread over the ground.
    #[arg(long)]
    points: String,
    /// Site file to write `[scenes.<camera>.ground]` into; without it the fit is only printed.
    #[arg(long)]
    site: Option<PathBuf>,
    /// Camera the pixels are from; default: the only camera in the site file.
    #[arg(long)]
    camera: Option<String>,
    /// Largest reprojection error (metres) a pair may have before the points count as inconsistent.
    #[arg(long, default_value_t = 0.3)]
    max_error: f64,
    /// Also print the ground distance between two pixels, "x,y;x,y" (may be repeated).
    #[arg(long)]
    distance: Vec<String>,
}

pub fn calibrate(args: CalibrateArgs) -> anyhow::Result<()> {
    match args.command {
        CalibrateCommand::Thresholds(args) => calibrate_thresholds(args),
        CalibrateCommand::Ground(args) => calibrate_ground(args),
    }
}

fn calibrate_thresholds(args: ThresholdsArgs) -> anyhow::Result<()> {
    if !(args.target_precision > 0.0 && args.target_precision <= 1.0) {
        bail!("--target-precision is {}; expected a share above 0 and at most 1, e.g. 0.95", args.target_precision);
    }
    if !(0.0..1.0).contains(&args.min_score) {
        bail!("--min-score is {}; expected a score from 0 to below 1, e.g. 0.1", args.min_score);
    }
    let config = super::load_config(args.config.as_deref())?;
    let site_path = args.site.clone().or_else(|| config.site.calibration.clone());
    let site = match &site_path {
        Some(path) if path.exists() => Some(SiteCalibration::load(path)?),
        _ => None,
    };
    let from_site = site.as_ref().and_then(|s| s.samples.clone());
    let (folder, labels) = match (args.samples, args.labels, from_site) {
        (Some(folder), Some(labels), _) => (folder, labels),
        (folder, labels, Some(samples)) => (folder.unwrap_or(samples.folder), labels.unwrap_or(samples.labels)),
        _ => bail!(
            "name the labelled pictures with --samples DIR and --labels FILE.csv, or a --site file with [samples]"
        ),
    };
    let set = SampleSet::open(&folder, &labels)?;

    let mut models = Vec::new();
    for model_config in &config.models {
        // The site's thresholds are what is being chosen: run each model bare, down to --min-score.
        let mut bare = model_config.clone();
        bare.score_threshold = Some(args.min_score);
        bare.class_thresholds.clear();
        let model = infer::Model::load(&bare, config.inference.backend)
            .with_context(|| format!("loading model {}", model_config.manifest.display()))?;
        let wanted = match &args.model {
            Some(name) => &model.id().name == name,
            None => model.task() == Task::Detect,
        };
        if wanted {
            models.push(model);
        }
    }
    if models.is_empty() {
        match &args.model {
            Some(name) => bail!("no configured model is named {name:?}"),
            None => bail!("no configured model is a detector; choose one with --model NAME"),
        }
    }

    let progress = super::progress_bar("pictures", set.truth.len() as u64);
    let predictions = set.predict(&mut models, |file| {
        progress.set_message(file.to_string());
        progress.inc(1);
    })?;
    progress.finish_and_clear();

    let mut calibrations = Vec::new();
    for model in &models {
        let truth = set.truth_for(model.labels());
        let predictions = predictions.get(&model.id().name).cloned().unwrap_or_default();
        let classes = thresholds::calibrate(&predictions, &truth, args.target_precision);
        calibrations.push(ModelCalibration { model: model.id().clone(), classes, predictions, truth });
    }
    let report = Report {
        set: &set,
        target_precision: args.target_precision,
        min_score: args.min_score,
        models: &calibrations,
        unknown_labels: set.labels_unknown_to(&models),
    };
    report.write(&args.report)?;
    print!("{}", report.summary_markdown());
    println!("\nReport: {}", args.report.display());
    match &site_path {
        Some(path) => {
            for calibration in &calibrations {
                write_thresholds(path, &calibration.model.name, &calibration.classes, args.target_precision)?;
            }
            println!("Thresholds written to {}", path.display());
        }
        None => println!("No --site file given: thresholds not written."),
    }
    Ok(())
}

fn calibrate_ground(args: GroundArgs) -> anyhow::Result<()> {
    let pairs = homography::parse_points(&args.points).context("--points")?;
    if !(args.max_error > 0.0) {
        bail!("--max-error is {}; expected metres above 0", args.max_error);
    }
    // The camera is settled before the fit, so a missing one fails before any output.
    let camera = match (&args.site, args.camera) {
        (Some(_), Some(camera)) => Some(camera),
        (Some(site), None) => Some(only_camera(site)?),
        (None, _) => None,
    };
    let fit = homography::fit(&pairs, args.max_error).context("cannot fit the ground plane")?;
    println!("Ground homography from {} point pairs (image pixels → metres):", pairs.len());
    // No "-0.00000000" for round-off dust.
    let tidy = |v: f64| if v.abs() < 5e-9 { 0.0 } else { v };
    for row in fit.homography.rows() {
        println!("  [{:>14.8}, {:>14.8}, {:>14.8}]", tidy(row[0]), tidy(row[1]), tidy(row[2]));
    }
    println!("Reprojection error: rms {:.3} m, max {:.3} m", fit.rms_error_m, fit.max_error_m);
    for (i, (pair, error)) in pairs.iter().zip(&fit.errors_m).enumerate() {
        println!(
            "  pair {}: pixel ({}, {}) measured ({}, {}) m, off by {:.3} m",
            i + 1,
            pair.image[0],
            pair.image[1],
            pair.ground[0],
            pair.ground[1],
            error
        );
    }
    for text in &args.distance {
        let [a, b] = parse_pixel_pair(text)?;
        let metres = fit
            .homography
            .ground_distance(a, b)
            .with_context(|| format!("--distance {text:?}: a pixel is on the horizon of the ground plane"))?;
        println!("Distance ({}, {}) – ({}, {}): {metres:.3} m", a[0], a[1], b[0], b[1]);
    }
    let (Some(site), Some(camera)) = (&args.site, camera) else {
        println!("No --site file given: nothing written.");
        return Ok(());
    };
    write_ground(site, &camera, &pairs, &fit)?;
    println!("Written to {} [scenes.{camera}.ground]", site.display());
    Ok(())
}

/// The camera of a site file that has exactly one.
fn only_camera(site: &Path) -> anyhow::Result<String> {
    let cameras: Vec<String> = match site.exists() {
        true => SiteCalibration::load(site)?.scenes.into_keys().collect(),
        false => Vec::new(),
    };
    match cameras.as_slice() {
        [camera] => Ok(camera.clone()),
        [] => bail!("{} has no [scenes.<camera>] yet; name the camera with --camera ID", site.display()),
        _ => bail!("{} has cameras {}; choose one with --camera ID", site.display(), cameras.join(", ")),
    }
}

/// "x,y;x,y" → two pixels.
fn parse_pixel_pair(text: &str) -> anyhow::Result<[[f64; 2]; 2]> {
    let bad = || anyhow::anyhow!("--distance {text:?}: expected two pixels \"x,y;x,y\"");
    let (a, b) = text.split_once(';').ok_or_else(bad)?;
    let pixel = |s: &str| -> anyhow::Result<[f64; 2]> {
        let (x, y) = s.split_once(',').ok_or_else(bad)?;
        let x: f64 = x.trim().parse().map_err(|_| bad())?;
        let y: f64 = y.trim().parse().map_err(|_| bad())?;
        Ok([x, y])
    };
    Ok([pixel(a)?, pixel(b)?])
}
