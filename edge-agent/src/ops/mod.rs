//! Operations, beside the flow: the installer's `check` and the site calibration tools. They use
//! the stages (load models, open cameras, read config) but nothing in the flow imports them.

pub mod calibrate;
pub mod check;
