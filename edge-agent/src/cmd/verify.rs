//! `edge-agent verify`: checks the device's evidence chain (`state_dir/evidence/chain.jsonl`) and its
//! pictures: every record's hash and signature, its link to the record before, and the sha256 of
//! every picture still on disk. Reports the first broken link and exits 1 when there is one.

use std::path::PathBuf;

use anyhow::Context;
use edge_agent::evidence::chain;

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The state folder holding `evidence/`; default: `state_dir` of the config (or the default).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The device's public key as the platform knows it: 64 hex digits, or a file holding them
    /// (e.g. a copy of `device.pub`). Default: the key named in the chain's first record.
    #[arg(long)]
    public_key: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let state_dir = match args.state_dir {
        Some(dir) => dir,
        None => super::load_config(args.config.as_deref())?.state_dir,
    };
    let expected_key = match args.public_key {
        Some(key) if std::path::Path::new(&key).is_file() => Some(
            std::fs::read_to_string(&key)
                .with_context(|| format!("cannot read public key file {key}"))?
                .trim()
                .to_string(),
        ),
        other => other,
    };
    let report = chain::verify(&state_dir.join("evidence"), expected_key.as_deref())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("evidence chain {}", report.chain.display());
        println!("  signed by  {}", report.public_key.as_deref().unwrap_or("(unknown)"));
        println!("  records    {} ({} events)", report.records, report.events);
        println!(
            "  pictures   {} checked, {} deleted by retention",
            report.evidence_files_checked, report.evidence_files_pruned
        );
    }
    match report.first_broken_link {
        None => {
            if !args.json {
                println!("OK: every record is signed and links to the one before; every picture matches its hash");
            }
            Ok(())
        }
        Some(broken) => {
            let record = broken.seq.map(|s| format!(" (record {s})")).unwrap_or_default();
            anyhow::bail!("the evidence chain is broken at line {}{record}: {}", broken.line, broken.problem)
        }
    }
}
