//! `edge-agent infer IMAGE...`: runs the configured models on pictures and prints what they find;
//! `--annotate DIR` writes each picture with its boxes and labels drawn.

use std::path::{Path, PathBuf};

use anyhow::Context;
use edge_agent::config::{BackendKind, Config};
use edge_agent::infer::manifest::Manifest;
use edge_agent::infer::{self, Findings, Model};

#[derive(clap::Args)]
pub struct InferArgs {
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Only this model (manifest name); default: every configured model.
    #[arg(long)]
    model: Option<String>,
    /// Backend to use instead of the config's `inference.backend`.
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// One JSON object per image instead of text.
    #[arg(long)]
    json: bool,
    /// Write each image as DIR/<name>.jpg with boxes and labels drawn.
    #[arg(long, value_name = "DIR")]
    annotate: Option<PathBuf>,
}

/// Loads the configured models (only `only` if given) on `backend` or the configured backend.
pub fn load_selected_models(
    config: &Config,
    only: Option<&str>,
    backend: Option<BackendKind>,
) -> anyhow::Result<Vec<Model>> {
    let inference = backend.map_or_else(|| config.inference.clone(), |b| config.inference.with_backend(b));
    let mut models = Vec::new();
    let mut names = Vec::new();
    for model_config in &config.models {
        // The manifest names the model; only the chosen ones are loaded into a backend.
        let name = Manifest::load(&model_config.manifest)?.name;
        if only.is_none_or(|wanted| wanted == name) {
            models.push(Model::load_with(model_config, &inference)?);
        }
        names.push(name);
    }
    if models.is_empty() {
        anyhow::bail!(
            "no configured model is named {:?}; the models are {}",
            only.unwrap_or_default(),
            names.join(", ")
        );
    }
    Ok(models)
}

pub fn infer(args: InferArgs) -> anyhow::Result<()> {
    let config = super::load_config(args.config.as_deref())?;
    let mut models = load_selected_models(&config, args.model.as_deref(), args.backend)?;
    if let Some(dir) = &args.annotate {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create annotation folder {}", dir.display()))?;
    }
    let infos: Vec<_> = models.iter().map(Model::info).collect();
    let mut failed = 0;
    for path in &args.images {
        // One unreadable picture is reported and skipped; the others still run.
        if let Err(e) = infer_one(&mut models, path, &args, &infos) {
            eprintln!("edge-agent: {e:#}");
            failed += 1;
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} images failed", args.images.len());
    }
    Ok(())
}

fn infer_one(models: &mut [Model], path: &Path, args: &InferArgs, infos: &[infer::ModelInfo]) -> anyhow::Result<()> {
    let image = edge_agent::source::replay::decode_picture("infer", path)?;
    let mut results = Vec::new();
    for model in models.iter_mut() {
        results.push(model.infer(&image).with_context(|| format!("model {} on {}", model.id().name, path.display()))?);
    }
    if let Some(dir) = &args.annotate {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
        let target = dir.join(format!("{stem}.jpg"));
        let drawn = edge_agent::evidence::draw::annotate_with_labels(&image, &results);
        let bytes = edge_agent::evidence::draw::encode_jpeg(&drawn, 90)?;
        std::fs::write(&target, bytes).with_context(|| format!("cannot write {}", target.display()))?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "image": path, "width": image.width(), "height": image.height(), "models": infos, "results": results
            })
        );
        return Ok(());
    }
    println!("{} ({}×{})", path.display(), image.width(), image.height());
    for result in &results {
        match &result.findings {
            Findings::Detect { detections } => {
                for d in detections {
                    println!(
                        "  {:<18} {:<14} {:.3}  box {:.0},{:.0} – {:.0},{:.0}",
                        result.model.name, d.label, d.score, d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2
                    );
                }
            }
            Findings::Classify { classes } => {
                for c in classes {
                    println!("  {:<18} {:<14} {:.3}", result.model.name, c.label, c.score);
                }
            }
        }
    }
    Ok(())
}
