//! `edge-agent infer IMAGE...`: runs the configured models on pictures and prints what they find.

use std::path::PathBuf;

use anyhow::Context;
use edge_agent::infer::{self, Findings};

#[derive(clap::Args)]
pub struct InferArgs {
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Only this model (manifest name); default: every configured model.
    #[arg(long)]
    model: Option<String>,
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// One JSON object per image instead of text.
    #[arg(long)]
    json: bool,
}

pub fn infer(args: InferArgs) -> anyhow::Result<()> {
    let config = super::load_config(args.config.as_deref())?;
    let mut models = Vec::new();
    for model_config in &config.models {
        let model = infer::Model::load(model_config, config.inference.backend)?;
        if args.model.as_deref().is_none_or(|name| model.id().name == name) {
            models.push(model);
        }
    }
    if models.is_empty() {
        anyhow::bail!("no configured model is named {:?}", args.model.unwrap_or_default());
    }
    for path in &args.images {
        let image = edge_agent::source::replay::decode_picture("infer", path)?;
        let mut results = Vec::new();
        for model in &mut models {
            results
                .push(model.infer(&image).with_context(|| format!("model {} on {}", model.id().name, path.display()))?);
        }
        if args.json {
            println!(
                "{}",
                serde_json::json!({ "image": path, "width": image.width(), "height": image.height(), "results": results })
            );
            continue;
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
    }
    Ok(())
}
