//! `edge-agent bench`: how fast each model runs on each backend on this box. Per model and backend
//! it runs the full per-frame path (JPEG/PNG decode → pre-process → inference → decode) over the
//! sample pictures for a fixed time and reports inference latency (median, p99; the backend alone,
//! back to back), frames/s of the whole path and the share of the frame spent in pre- and
//! post-processing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use edge_agent::config::BackendKind;
use edge_agent::infer::Model;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Only this model (manifest name); default: every configured model.
    #[arg(long)]
    model: Option<String>,
    /// Backend to measure; repeat for several. Default: tract, and ort when its library loads.
    #[arg(long, value_enum)]
    backend: Vec<BackendKind>,
    /// Seconds of measuring per model and backend.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Threads per inference, instead of the config's `inference.intra_op_threads`.
    #[arg(long)]
    threads: Option<usize>,
    /// Pictures (files or folders) to cycle through; default: the sample pictures in models/samples.
    #[arg(long = "images", value_name = "PATH")]
    images: Vec<PathBuf>,
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the figures as one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

/// The figures for one model on one backend; times in milliseconds.
#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub model: String,
    pub backend: &'static str,
    pub execution_provider: String,
    pub threads: usize,
    pub frames: usize,
    pub inference_median_ms: f64,
    pub inference_p99_ms: f64,
    pub inference_mean_ms: f64,
    /// The backend's run inside the whole per-frame path (its threads and caches not warm from the
    /// previous run).
    pub in_frame_inference_median_ms: f64,
    pub frame_median_ms: f64,
    pub frame_p99_ms: f64,
    /// Full per-frame path, picture decode included.
    pub frames_per_second: f64,
    pub decode_mean_ms: f64,
    pub pre_mean_ms: f64,
    pub post_mean_ms: f64,
    /// (pre-processing + post-processing) ÷ the whole frame time, picture decode included.
    pub pre_post_share: f64,
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let mut config = super::load_config(args.config.as_deref())?;
    if let Some(threads) = args.threads {
        config.inference.intra_op_threads = threads;
    }
    let pictures = read_pictures(&args.images)?;
    let explicit = !args.backend.is_empty();
    let backends = if explicit { args.backend.clone() } else { vec![BackendKind::Tract, BackendKind::Ort] };
    let mut results = Vec::new();
    for backend in backends {
        // No fallback here: the figures must be for the backend named.
        config.inference.fallback = None;
        let models = match super::infer::load_selected_models(&config, args.model.as_deref(), Some(backend)) {
            Ok(models) => models,
            Err(e) if !explicit => {
                eprintln!("bench: skipping backend {}: {e:#}", backend.name());
                continue;
            }
            Err(e) => return Err(e),
        };
        for mut model in models {
            results.push(measure(&mut model, &pictures, args.seconds, config.inference.intra_op_threads)?);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print_table(&results);
    }
    Ok(())
}

/// The pictures' file bytes, so each frame includes its decode but not the disk.
fn read_pictures(paths: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    let roots = if paths.is_empty() {
        vec![edge_agent::base::section::data_dir().join("models/samples")]
    } else {
        paths.to_vec()
    };
    let mut files = Vec::new();
    for root in roots {
        if root.is_dir() {
            let entries = std::fs::read_dir(&root).with_context(|| format!("cannot read {}", root.display()))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_ascii_lowercase().as_str()))
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(root);
        }
    }
    if files.is_empty() {
        anyhow::bail!("no .jpg, .jpeg or .png pictures to run on");
    }
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            Ok((path, bytes))
        })
        .collect()
}

fn measure(
    model: &mut Model,
    pictures: &[(PathBuf, Vec<u8>)],
    seconds: f64,
    threads: usize,
) -> anyhow::Result<BenchResult> {
    let info = model.info();
    let decoded: Vec<image::RgbImage> = pictures
        .iter()
        .map(|(path, bytes)| {
            image::load_from_memory(bytes)
                .map(|i| i.into_rgb8())
                .with_context(|| format!("cannot decode {}", path.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    // Warm-up: first runs allocate arenas and fill caches.
    for image in decoded.iter().cycle().take(decoded.len().max(3)) {
        model.infer(image)?;
    }
    let budget = Duration::from_secs_f64(seconds.max(0.1));
    let progress = ProgressBar::new(2 * budget.as_millis() as u64);
    progress.set_style(
        ProgressStyle::with_template("{msg:32} [{bar:30}] {elapsed:>3}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    progress.set_message(format!("{} on {}", info.name, info.backend));

    // First the backend alone, back to back on ready tensors, as a bare `session.run` is timed.
    let tensors: Vec<Vec<f32>> = decoded.iter().map(|image| model.input_tensor(image)).collect();
    let mut inference = Vec::new();
    let started = Instant::now();
    while started.elapsed() < budget || inference.len() < 5 {
        inference.push(model.run_backend(&tensors[inference.len() % tensors.len()])?);
        progress.set_position(started.elapsed().as_millis().min(budget.as_millis()) as u64);
    }

    // Then the whole per-frame path.
    let (mut decode, mut pre, mut run, mut post, mut frame) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let started = Instant::now();
    let mut index = 0;
    while started.elapsed() < budget || run.len() < 5 {
        let (path, bytes) = &pictures[index % pictures.len()];
        index += 1;
        let frame_started = Instant::now();
        let image =
            image::load_from_memory(bytes).with_context(|| format!("cannot decode {}", path.display()))?.into_rgb8();
        let decoded_at = Instant::now();
        model.infer(&image)?;
        let done = Instant::now();
        let stages = model.last_stage_times();
        decode.push(decoded_at - frame_started);
        pre.push(stages.pre);
        run.push(stages.run);
        post.push(stages.post);
        frame.push(done - frame_started);
        progress.set_position((budget + started.elapsed().min(budget)).as_millis() as u64);
    }
    progress.finish_and_clear();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = |v: &[Duration]| ms(v.iter().sum::<Duration>()) / v.len() as f64;
    let total_frame: f64 = frame.iter().map(|&d| ms(d)).sum();
    let pre_post: f64 = pre.iter().chain(&post).map(|&d| ms(d)).sum();
    Ok(BenchResult {
        model: info.name,
        backend: info.backend,
        execution_provider: info.execution_provider,
        threads: edge_agent::infer::tract::effective_threads(threads),
        frames: frame.len(),
        inference_median_ms: ms(percentile(&mut inference, 0.5)),
        inference_p99_ms: ms(percentile(&mut inference, 0.99)),
        inference_mean_ms: mean(&inference),
        in_frame_inference_median_ms: ms(percentile(&mut run, 0.5)),
        frame_median_ms: ms(percentile(&mut frame, 0.5)),
        frame_p99_ms: ms(percentile(&mut frame, 0.99)),
        frames_per_second: frame.len() as f64 / (total_frame / 1000.0),
        decode_mean_ms: mean(&decode),
        pre_mean_ms: mean(&pre),
        post_mean_ms: mean(&post),
        pre_post_share: pre_post / total_frame,
    })
}

/// The value below which `fraction` of the samples fall (nearest rank).
fn percentile(samples: &mut [Duration], fraction: f64) -> Duration {
    samples.sort_unstable();
    let rank = ((fraction * samples.len() as f64).ceil() as usize).clamp(1, samples.len().max(1));
    samples.get(rank - 1).copied().unwrap_or_default()
}

fn print_table(results: &[BenchResult]) {
    println!(
        "{:<20} {:<7} {:<9} {:>7} {:>7} {:>10} {:>10} {:>9} {:>10}",
        "model", "backend", "provider", "threads", "frames", "median ms", "p99 ms", "frames/s", "pre+post"
    );
    for r in results {
        println!(
            "{:<20} {:<7} {:<9} {:>7} {:>7} {:>10.1} {:>10.1} {:>9.2} {:>9.1}%",
            r.model,
            r.backend,
            r.execution_provider,
            r.threads,
            r.frames,
            r.inference_median_ms,
            r.inference_p99_ms,
            r.frames_per_second,
            r.pre_post_share * 100.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut samples, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&mut samples, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&mut [Duration::from_millis(7)], 0.99), Duration::from_millis(7));
    }
}
