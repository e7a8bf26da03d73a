//! The platform's side of edge-agent, as a library for the `edge-platform` binary and its tests:
//! its key and signatures ([`keys`]), commands to a fleet ([`command`]), the live check and store
//! of what the boxes report ([`watch`], [`store`]) and the daily report ([`report`]). The message
//! formats, the chain verifier and the command signature are the agent's (`edge_agent::wire`,
//! `edge_agent::control::authority`), never copies.

pub mod broker;
pub mod command;
pub mod keys;
pub mod report;
pub mod store;
pub mod time;
pub mod watch;
