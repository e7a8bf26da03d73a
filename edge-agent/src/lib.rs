//! edge-agent: an edge AI inference appliance. Camera frames flow one way through four stages,
//! one module each, with typed messages between them:
//!
//! - [`source`] → [`source::Frame`]
//! - [`infer`] → [`infer::InferredFrame`]
//! - [`judge`] → [`judge::Judgement`] (with [`judge::Event`]s)
//! - [`report`] → durable outbox → MQTT; status board → web page
//!
//! [`app`] wires them together for `edge-agent run`; [`config`] is what the user writes.

pub mod app;
pub mod calibrate;
pub mod check;
pub mod config;
pub mod infer;
pub mod judge;
pub mod liveness;
pub mod report;
pub mod shutdown;
pub mod source;
