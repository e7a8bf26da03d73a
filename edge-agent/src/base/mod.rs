//! What every part of the agent shares and that depends on no part of it: shutdown, liveness
//! heartbeats, the pieces every config section uses, reused picture buffers, atomic file writes,
//! redb files with a bounded cache, reconnect backoff, secret redaction, SVG pictures. Imports nothing from the rest of the crate.

pub mod backoff;
pub mod blocking;
pub mod disk;
pub mod ed25519;
pub mod frame_pool;
pub mod liveness;
pub mod parse_error;
pub mod redact;
pub mod redb_file;
pub mod section;
pub mod shutdown;
pub mod svg;
pub mod write_file;
