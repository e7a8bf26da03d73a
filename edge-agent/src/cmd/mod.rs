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
