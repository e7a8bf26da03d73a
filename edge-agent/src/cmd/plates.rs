//! `edge-agent plates read|eval`: reads licence plates in pictures, or scores the reader on a
//! labelled set (`../shared/lpr/labels.csv` is one).

use std::path::{Path, PathBuf};

use anyhow::Context;
use edge_agent::config::{BackendKind, Config};
use edge_agent::infer::plates::eval::{self, Progress};
use edge_agent::infer::plates::{DetectorSize, PlateRead, PlateReader, PlateSettings};

#[derive(clap::Args)]
pub struct PlatesArgs {
    #[command(subcommand)]
    command: PlatesCommand,
}

#[derive(clap::Subcommand)]
enum PlatesCommand {
    /// Read the plates in pictures. A picture that cannot be decoded is named on stderr and skipped;
    /// the others are still read, and the exit status is then 1.
    Read(ReadArgs),
    /// Score the reader on a labelled set: whole-plate and character accuracy by kind, colour and
    /// rows, and the time per picture and per plate.
    Eval(EvalArgs),
}

/// What both subcommands share: the models and how they run.
#[derive(clap::Args)]
struct ReaderArgs {
    /// The folder holding the plate models (y5fu_320x_sim.onnx, y5fu_640x_sim.onnx,
    /// ch_PP-OCRv4_rec_infer.onnx, litemodel_cls_96x_r1.onnx); default: models/plates in the data
    /// folder ($EDGE_AGENT_DATA, the checkout, or /usr/share/edge-agent).
    #[arg(long, value_name = "DIR")]
    models: Option<PathBuf>,
    /// The detector's input size for whole pictures (crops always use 320).
    #[arg(long, value_enum, default_value = "320")]
    detector: DetectorSize,
    /// Backend to use instead of the config's `inference.backend`.
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// Threads per model run instead of the config's `inference.intra_op_threads` (0: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Agent config whose `[inference]` section is used; default: the embedded defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ReadArgs {
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// Each picture is one plate already cut out: found again inside a border for its corners, or
    /// read as it is.
    #[arg(long)]
    crops: bool,
    /// One JSON object per line and picture: {"image", "plates": [{"text", "score", "colour", "rows",
    /// "box", "corners", …}]}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    reader: ReaderArgs,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// The labels, shaped like ../shared/lpr/labels.csv.
    #[arg(long)]
    labels: PathBuf,
    /// The folder of the pictures the labels name.
    #[arg(long)]
    images: PathBuf,
    /// Only every K-th picture of the set (a quick run).
    #[arg(long, default_value_t = 1, value_name = "K")]
    every: usize,
    /// The report as one JSON object, every plate's outcome included.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    reader: ReaderArgs,
}

pub fn plates(args: PlatesArgs) -> anyhow::Result<()> {
    match args.command {
        PlatesCommand::Read(args) => read(args),
        PlatesCommand::Eval(args) => evaluate(args),
    }
}

fn load_reader(args: &ReaderArgs) -> anyhow::Result<PlateReader> {
    let config: Config = super::load_config(args.config.as_deref())?;
    let mut inference = args.backend.map_or_else(|| config.inference.clone(), |b| config.inference.with_backend(b));
    if let Some(threads) = args.threads {
        inference.intra_op_threads = threads;
    }
    let mut settings = PlateSettings { detector: args.detector, ..PlateSettings::default() };
    if let Some(models) = &args.models {
        settings.models = models.clone();
    }
    Ok(PlateReader::load(&settings, &inference)?)
}

fn read(args: ReadArgs) -> anyhow::Result<()> {
    let mut reader = load_reader(&args.reader)?;
    let mut failed = 0;
    for path in &args.images {
        // One unreadable picture is reported and skipped; the others are still read.
        match read_one(&mut reader, path, args.crops) {
            Ok(plates) => print_plates(path, &plates, args.json),
            Err(e) => {
                eprintln!("edge-agent: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} pictures could not be read", args.images.len());
    }
    Ok(())
}

fn read_one(reader: &mut PlateReader, path: &Path, crop: bool) -> anyhow::Result<Vec<PlateRead>> {
    let picture = edge_agent::source::replay::decode_picture("plates", path)?;
    let plates = if crop { reader.read_crop(&picture).map(|r| r.into_iter().collect()) } else { reader.read(&picture) };
    plates.with_context(|| format!("reading plates in {}", path.display()))
}

fn print_plates(path: &Path, plates: &[PlateRead], json: bool) {
    if json {
        println!("{}", serde_json::json!({ "image": path, "plates": plates }));
        return;
    }
    if plates.is_empty() {
        println!("{}: no plate", path.display());
    }
    for p in plates {
        let b = p.bbox;
        println!(
            "{}: {} {} {}-row, score {:.2}{}, box {:.0},{:.0} – {:.0},{:.0}",
            path.display(),
            p.text,
            p.colour.name(),
            p.rows,
            p.score,
            if p.valid { "" } else { " (not a plate's syntax)" },
            b.x1,
            b.y1,
            b.x2,
            b.y2
        );
    }
}

fn evaluate(args: EvalArgs) -> anyhow::Result<()> {
    if args.every == 0 {
        anyhow::bail!("--every is 0; expected 1 (every picture) or more");
    }
    let labels = eval::read_labels(&args.labels)?;
    // Every K-th picture, with all of its labels.
    let mut seen = std::collections::HashSet::new();
    let files: Vec<&str> = labels.iter().map(|l| l.file.as_str()).filter(|f| seen.insert(*f)).collect();
    let kept: std::collections::HashSet<&str> = files.iter().step_by(args.every).copied().collect();
    let labels: Vec<_> = labels.iter().filter(|l| kept.contains(l.file.as_str())).cloned().collect();
    let mut reader = load_reader(&args.reader)?;
    let bar = super::progress_bar("pictures", kept.len() as u64);
    let report = eval::evaluate(&mut reader, &labels, &args.images, &mut |p: Progress<'_>| {
        bar.set_position(p.done as u64);
        bar.set_message(p.file.to_string());
    })?;
    bar.finish_and_clear();
    let settings = reader.settings();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "backend": reader.backend(),
                "detector": settings.detector.pixels(),
                "models": reader.models(),
                "report": report,
            })
        );
    } else {
        println!(
            "plate reader on {} ({} backend, {} detector, {} labelled plates)\n{}",
            args.labels.display(),
            reader.backend(),
            settings.detector.pixels(),
            labels.len(),
            report.to_text()
        );
    }
    Ok(())
}
