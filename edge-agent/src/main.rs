//! The `edge-agent` command line. Each subcommand lives in `cmd/<name>.rs`; this file only parses
//! arguments, sets up logging and turns errors into a message and an exit code.

mod cmd;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "edge-agent",
    version,
    about = "Edge AI inference appliance: cameras → ONNX models → rules → events over MQTT"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default). Without --config it runs the embedded demo: a replay camera over
    /// the sample images, the default models, the web page on 127.0.0.1:8080, no broker.
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the models on image files and print what they find.
    Infer(cmd::infer::InferArgs),
    /// Check the evidence chain and its pictures; report the first broken link (exit 1).
    Verify(cmd::verify::VerifyArgs),
    /// Print an argon2 hash of a password for `[web] users` (reads it without echo, or from a pipe).
    Passwd(cmd::passwd::PasswdArgs),
    /// Fit the box to its site: per-class thresholds from labelled pictures, ground homography.
    Calibrate(cmd::calibrate::CalibrateArgs),
    /// The box learns its site: train a classifier head on the site's labelled crops, check it on
    /// held-out crops, write it as a model (ONNX + manifest) and a report with the figures.
    Learn(cmd::learn::LearnArgs),
    /// Write a commented config to start from, for a garbage station or a construction site.
    Init(cmd::init::InitArgs),
    /// Measure each model on each backend: inference latency, frames/s, pre/post-processing share.
    Bench(cmd::bench::BenchArgs),
    /// Installer's check: config, state folder, disk, clock, a frame from each camera, each model,
    /// a test message to the broker. Prints a table with a fix for each failure; exit 1 on failure.
    Check(cmd::check::CheckArgs),
    /// The device's evidence signing key: show the public key, or rotate it (agent stopped).
    Key(cmd::key::KeyArgs),
    /// Camera tamper detection: save a camera's current view as its reference (or forget it).
    Tamper(cmd::tamper::TamperArgs),
    /// Licence plates: read them in pictures, or score the reader on a labelled set.
    Plates(cmd::plates::PlatesArgs),
}

fn main() -> std::process::ExitCode {
    edge_agent::infer::allocator::limit_arenas();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command.unwrap_or(Command::Run { config: None }) {
        Command::Run { config } => cmd::run::run(config.as_deref()),
        Command::Infer(args) => cmd::infer::infer(args),
        Command::Verify(args) => cmd::verify::verify(args),
        Command::Passwd(args) => cmd::passwd::passwd(args),
        Command::Calibrate(args) => cmd::calibrate::calibrate(args),
        Command::Learn(args) => cmd::learn::learn(args),
        Command::Init(args) => cmd::init::init(args),
        Command::Bench(args) => cmd::bench::bench(args),
        Command::Check(args) => cmd::check::check(args),
        Command::Key(args) => cmd::key::key(args),
        Command::Tamper(args) => cmd::tamper::tamper(args),
        Command::Plates(args) => cmd::plates::plates(args),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
