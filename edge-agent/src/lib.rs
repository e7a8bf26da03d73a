//! edge-agent: an edge AI inference appliance. Camera frames flow one way through five stages,
//! one folder each, with typed messages between them:
//!
//! - [`source`] → [`source::Frame`]
//! - [`infer`] → [`infer::InferredFrame`]
//! - [`judge`] → [`judge::Judgement`] (events decided, privacy mask)
//! - [`evidence`] → [`evidence::EvidencedFrame`] (privacy applied, pictures kept in a signed chain)
//! - [`delivery`] → durable outbox → MQTT; status board → web page
//!
//! Beside the flow: [`control`] (commands, model updates, live settings), [`web`], [`config`]
//! (loading, validation, site files), [`ops`] (check, calibrate) and [`base`] (what all share).
//! [`wire`] is what goes to the platform (the event message, the signed chain and its one
//! verifier): every part may use it, and it uses only `base`.
//! [`app`] wires them together for `edge-agent run`. docs/ARCHITECTURE.md is the map.

pub mod app;
pub mod base;
pub mod config;
pub mod control;
pub mod delivery;
pub mod evidence;
pub mod infer;
pub mod judge;
pub mod ops;
pub mod source;
pub mod web;
pub mod wire;

#[cfg(test)]
mod fuzz_tests;
