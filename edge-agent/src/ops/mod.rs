//! Operations, beside the flow: the installer's `check`, the site calibration tools, `learn` (the
//! site's own classifier heads) and the cameras' tamper references. They use the stages (load
//! models, open cameras, read config) but nothing in the flow imports them.

pub mod calibrate;
pub mod check;
pub mod learn;
pub mod tamper;
