//! `edge-agent init [--station|--site]`: writes a commented config to start from, for a garbage
//! station or a construction site, with zones and rules. The file is loaded with the real config
//! loader before it is written, so what `init` writes always runs.

use std::path::PathBuf;

use anyhow::{bail, Context};
use edge_agent::base::write_file::write_atomically;
use edge_agent::config::Config;

const STATION: &str = include_str!("init/station.toml");
const CONSTRUCTION_SITE: &str = include_str!("init/construction.toml");

#[derive(clap::Args)]
pub struct InitArgs {
    /// A garbage station: bin zones, a drop area, wrong_bin/litter/overflow (the default).
    #[arg(long, conflicts_with = "site")]
    station: bool,
    /// A construction site: a site exit, a road, truck_exit/road_debris.
    #[arg(long)]
    site: bool,
    /// Where to write the config.
    #[arg(long, short, default_value = "edge-agent.toml")]
    output: PathBuf,
    /// Replace the file if it exists.
    #[arg(long)]
    force: bool,
}

/// The starting config for a station (`construction_site` false) or a construction site.
pub fn template(construction_site: bool) -> &'static str {
    if construction_site {
        CONSTRUCTION_SITE
    } else {
        STATION
    }
}

pub fn init(args: InitArgs) -> anyhow::Result<()> {
    let kind = if args.site { "construction site" } else { "garbage station" };
    if args.output.exists() && !args.force {
        bail!("{} exists; choose another --output or add --force to replace it", args.output.display());
    }
    let text = template(args.site);
    let check = Config::from_toml_str(text, &args.output).and_then(|c| c.validate(&args.output).map(|()| c));
    check.with_context(|| format!("the built-in {kind} config does not load (a bug in edge-agent)"))?;
    write_atomically(&args.output, text.as_bytes())
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!("Wrote a {kind} config to {}.", args.output.display());
    println!("Next: set device_id, [site] and [mqtt], point [[cameras]] at the cameras, move the zone corners");
    println!("onto a frame of each camera, then `edge-agent calibrate` (calibration/README.md).");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both starting configs load with the real loader and hold the zones and rules of their kind.
    #[test]
    fn both_templates_load_with_their_zones_and_rules() {
        let dir = tempfile::tempdir().unwrap();
        for (construction_site, camera, roles) in
            [(false, "bins", vec!["bin", "drop_area"]), (true, "gate", vec!["site_exit", "privacy"])]
        {
            let path = dir.path().join(format!("{construction_site}.toml"));
            std::fs::write(&path, template(construction_site)).unwrap();
            let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            let scene = &config.scenes[camera];
            for role in roles {
                let role: edge_agent::judge::config::ZoneRole =
                    serde_json::from_value(serde_json::Value::String(role.into())).unwrap();
                assert!(scene.zones.iter().any(|z| z.role == role), "{camera}: {role:?}");
            }
            assert_eq!(config.rules.truck_exit.enabled, construction_site);
            assert_eq!(config.rules.wrong_bin.enabled, !construction_site);
            assert!(!config.rules.object.enabled);
        }
    }
}
