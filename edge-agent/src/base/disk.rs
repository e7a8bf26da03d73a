//! How much room the disk under a folder has (statvfs): for the state folder's budget, the page
//! and `check`.

use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct DiskSpace {
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// Space available to us (not root's reserve) on the file system holding `path`.
pub fn disk_space(path: &Path) -> Option<DiskSpace> {
    // The state folder may not exist yet; its nearest existing parent is on the same disk.
    let existing = path.ancestors().find(|p| p.exists())?;
    let stats = rustix::fs::statvfs(existing).ok()?;
    Some(DiskSpace {
        free_bytes: stats.f_bavail.saturating_mul(stats.f_frsize),
        total_bytes: stats.f_blocks.saturating_mul(stats.f_frsize),
    })
}
