//! `edge-agent verify`: on the box, checks the device's evidence chain (`state_dir/evidence/`) and
//! its pictures: every record's hash and signature, its link to the record before, and the sha256 of
//! every picture still on disk. On the platform (`--messages FILE --public-key KEY`), checks the
//! event messages and chain records captured from the broker, and the snapshots received. Reports
//! the first broken link and exits 1 when there is one.

use std::path::{Path, PathBuf};

use anyhow::Context;
use edge_agent::evidence::{chain, messages};

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
    /// Messages captured from the broker, one a line as `mosquitto_sub` prints them (payload, or
    /// `topic payload` with -v): checks them instead of a chain on disk. Needs --public-key.
    #[arg(long)]
    messages: Option<PathBuf>,
    /// With --messages: the snapshot JPEGs received on `snapshots/{event_id}` (any file names).
    #[arg(long, requires = "messages")]
    snapshots: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let expected_key = match args.public_key {
        Some(key) if std::path::Path::new(&key).is_file() => Some(
            std::fs::read_to_string(&key)
                .with_context(|| format!("cannot read public key file {key}"))?
                .trim()
                .to_string(),
        ),
        other => other,
    };
    if let Some(messages) = &args.messages {
        let key =
            expected_key.context("--messages needs --public-key: the device's key as the platform enrolled it")?;
        return verify_messages(messages, args.snapshots.as_deref(), &key, args.json);
    }
    let state_dir = match args.state_dir {
        Some(dir) => dir,
        None => super::load_config(args.config.as_deref())?.state_dir,
    };
    let report = chain::verify(&state_dir.join("evidence"), expected_key.as_deref())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("evidence chain {}", report.chain.display());
        println!("  signed by  {}", report.public_key.as_deref().unwrap_or("(unknown)"));
        println!("  records    {} ({} events, {} clips)", report.records, report.events, report.clips);
        println!(
            "  files      {} checked (pictures and clips), {} deleted by retention",
            report.evidence_files_checked, report.evidence_files_pruned
        );
    }
    match report.first_broken_link {
        None => {
            if !args.json {
                println!(
                    "OK: every record is signed and links to the one before; every picture and clip matches its hash"
                );
            }
            Ok(())
        }
        Some(broken) => {
            let record = broken.seq.map(|s| format!(" (record {s})")).unwrap_or_default();
            anyhow::bail!("the evidence chain is broken at line {}{record}: {}", broken.line, broken.problem)
        }
    }
}

/// The platform's check of captured messages; exit 1 unless they are sound.
fn verify_messages(file: &Path, snapshots: Option<&Path>, key: &str, json: bool) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read messages file {}", file.display()))?;
    let report = messages::verify_messages(&text, snapshots, key).map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("messages {} ({} lines)", file.display(), report.lines);
        println!("  signed by   {key}");
        println!(
            "  records     {} event messages, {} other chain records, {} duplicates, {} late (out of order, links hold)",
            report.event_messages, report.chain_records, report.duplicates, report.late
        );
        if let (Some(first), Some(last)) = (report.first_seq, report.last_seq) {
            println!("  sequence    {first} to {last}");
        }
        if let Some(head) = &report.announced_head {
            println!("  announced   chain head {} at {}", head.seq, head.time.to_rfc3339());
        }
        if snapshots.is_some() {
            println!("  snapshots   {} checked", report.snapshots_checked);
        }
        for gap in &report.gaps {
            let why = gap
                .pruned_by_policy
                .as_deref()
                .map(|w| format!("pruned by policy: {w}"))
                .unwrap_or_else(|| "NOT recorded as pruned by the box: lost, withheld or not captured".into());
            println!("  gap         records {} to {}: {why}", gap.first_seq, gap.last_seq);
        }
    }
    if let Some(problem) = &report.problem {
        let record = problem.seq.map(|s| format!(" (record {s})")).unwrap_or_default();
        anyhow::bail!("{} message at line {}{record}: {}", problem.kind, problem.line, problem.message)
    }
    if !report.is_sound() {
        anyhow::bail!("records are missing that the box did not record as pruned (see the gaps above)")
    }
    if !json {
        println!("OK: every message is signed by the device, unchanged, in order and linked");
    }
    Ok(())
}
