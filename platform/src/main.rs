//! The `edge-platform` command line: parses arguments and turns errors into a message and an exit
//! code; each subcommand lives in its module of the library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use edge_platform::{command, keys::PlatformKey, report, watch};

#[derive(Parser)]
#[command(
    name = "edge-platform",
    version,
    about = "The platform's side of edge-agent: sign and send commands to boxes, verify and store what they report"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make the platform's Ed25519 key pair in DIR (platform.key, 0600; platform.pub) and print
    /// the lines the boxes' config needs to trust it.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a model file: its sha256 and Ed25519 signature, and the `model` command that carries them.
    SignModel {
        file: PathBuf,
        /// The private key file that signs models (the boxes' `model_update.public_key`).
        #[arg(long)]
        key: PathBuf,
        /// The configured model it replaces, for the command printed.
        #[arg(long, default_value = "NAME")]
        name: String,
        /// Where the boxes download it, for the command printed.
        #[arg(long, default_value = "URL")]
        url: String,
    },
    /// Sign a command, publish it to one box, several or all, and wait for the acks.
    Command(command::CommandArgs),
    /// Verify every box's chain live, store what they report, and show a table per box.
    Watch(watch::WatchArgs),
    /// One day per box and camera from the store: events by kind, plates, gaps, offline time.
    Report(report::ReportArgs),
}

fn main() -> std::process::ExitCode {
    let outcome = match Cli::parse().command {
        Command::Keygen { out } => keygen(&out),
        Command::SignModel { file, key, name, url } => sign_model(&file, &key, &name, &url),
        Command::Command(args) => command::run(args),
        Command::Watch(args) => watch::run(args),
        Command::Report(args) => report::run(args),
    };
    match outcome {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("edge-platform: {}", edge_agent::base::redact::redact_userinfo(&format!("{e:#}")));
            std::process::ExitCode::from(2)
        }
    }
}

fn keygen(out: &std::path::Path) -> anyhow::Result<u8> {
    let (key, secret, public) = PlatformKey::create(out)?;
    println!("private key: {} (mode 0600: keep it on the platform, never on a box)", secret.display());
    println!("public key:  {} ({})\n", public.display(), key.public_hex());
    println!("Put this in every box's config:\n");
    print!("{}", key.config_lines());
    Ok(0)
}

fn sign_model(file: &std::path::Path, key: &std::path::Path, name: &str, url: &str) -> anyhow::Result<u8> {
    let key = PlatformKey::read(key)?;
    let signed = command::sign_model_file(&key, file)?;
    println!("file:       {} ({} bytes)", file.display(), signed.bytes);
    println!("sha256:     {}", signed.sha256);
    println!("signature:  {}", signed.signature);
    println!("signed by:  {} (the boxes' model_update.public_key)\n", key.public_hex());
    let command = serde_json::json!({
        "correlation_id": format!("model-{}", &signed.sha256[..12]),
        "name": name,
        "url": url,
        "sha256": signed.sha256,
        "signature": signed.signature,
    });
    println!(
        "The `model` command (`edge-platform command ... model --name {name} --url {url} --file {}` sends it signed):",
        file.display()
    );
    println!("{command}");
    Ok(0)
}
