//! One file per subcommand: thin shells over the library.

pub mod bench;
pub mod calibrate;
pub mod check;
pub mod infer;
pub mod init;
pub mod key;
pub mod learn;
pub mod passwd;
pub mod plates;
pub mod run;
pub mod tamper;
pub mod verify;

use std::path::Path;

use edge_agent::config::Config;

/// The config file if given, else the embedded defaults.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Ok(Config::load(path)?),
        None => Ok(Config::embedded_defaults()),
    }
}

/// A bar over `len` `things` (pictures, crops) on stderr; indicatif draws nothing when stderr is not a
/// terminal.
pub fn progress_bar(things: &str, len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    let style = indicatif::ProgressStyle::with_template(&format!("{{bar:30}} {{pos}}/{{len}} {things}  {{msg}}"))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
