//! `edge-agent key`: the device's evidence signing key. `show` prints the public key the platform
//! enrols; `rotate` replaces the key with a record signed by the old one (stop the agent first:
//! the chain has one writer at a time).

use std::path::PathBuf;

use anyhow::Context;
use edge_agent::evidence::signing::PUBLIC_KEY_FILE;
use edge_agent::evidence::store::EvidenceStore;

#[derive(clap::Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    action: KeyAction,
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum KeyAction {
    /// Print the device's public key (hex), as the platform enrols it.
    Show,
    /// Make a new key; the chain records it in a record signed by the old key.
    Rotate,
}

pub fn key(args: KeyArgs) -> anyhow::Result<()> {
    let config = super::load_config(args.config.as_deref())?;
    let key_dir = config.evidence.key_dir(&config.state_dir);
    match args.action {
        KeyAction::Show => {
            let path = key_dir.join(PUBLIC_KEY_FILE);
            let public = std::fs::read_to_string(&path).with_context(|| {
                format!("no device key yet at {} (the agent makes it at its first start)", path.display())
            })?;
            println!("{}", public.trim());
        }
        KeyAction::Rotate => {
            let mut store = EvidenceStore::open(&config.state_dir, config.evidence.clone(), &config.device_id)
                .context("cannot open the evidence chain")?;
            let before = store.chain().public_key();
            let record = store.rotate_key().context("the key rotation failed")?;
            println!("rotated the device key in chain record {}", record.seq);
            println!("  old key   {before}");
            println!("  new key   {}", store.chain().public_key());
            println!("The platform follows the rotation from the `chain` message (signed by the old key).");
        }
    }
    Ok(())
}
