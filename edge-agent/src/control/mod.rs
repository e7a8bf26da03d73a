//! Control, beside the flow: commands from the platform (`cmd/*` topics), model and site-head
//! switches with probation and rollback, and the live settings service (config store + live
//! application) that the commands and the web page share. May import every stage's config and
//! handles; no stage imports control.

pub mod authority;
pub mod commands;
pub mod config;
pub mod config_store;
pub mod model_update;
pub mod preflight;
pub mod settable;
pub mod settings;
pub mod site_heads;
pub mod switch;
