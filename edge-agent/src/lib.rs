//! edge-agent: an edge AI inference appliance. Frames flow one way, one folder per stage: [`source`]
//! → [`infer`] → [`judge`] → [`evidence`] → [`delivery`]; beside the flow [`control`], [`web`],
//! [`config`], [`ops`] and [`base`]; [`wire`] is what goes to the platform (every part may use it, it
//! uses only `base`); [`app`] wires them. docs/ARCHITECTURE.md is the map.

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
