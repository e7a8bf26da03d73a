//! Writing a file so that a crash or a power cut leaves the old content or the new, never half of
//! one: a temporary file beside the target, written and fsynced, renamed over the target, and the
//! folder fsynced so the rename itself is durable. Every file the agent replaces goes through here,
//! and every folder it makes: a folder's name is durable only after its parent's fsync.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The temporary file `write_atomically` uses for `path`: hidden, in the same folder (so the
/// rename stays on one filesystem), and named after this process so two writers never share one.
pub fn temporary_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "file".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Replaces `path` with `bytes` atomically and durably (mode 0644 for a new file's temporary).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomically_with_mode(path, bytes, 0o644)
}

/// Like [`write_atomically`], with the file mode the new file gets from the moment it exists
/// (0600 for secrets: never readable by others, not even briefly).
pub fn write_atomically_with_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let folder = folder_of(path);
    create_folder_durably(folder)?;
    let temporary = temporary_path(path);
    let written = write_synced_with_mode(&temporary, bytes, mode).and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = written {
        // A failed write (a full disk) leaves no temporary behind to take more space.
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    sync_folder(path)
}

/// Writes a new file (or truncates one) and fsyncs it; for files whose name is new each time.
pub fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_synced_with_mode(path, bytes, 0o644)
}

fn write_synced_with_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes a rename or a new file in `path`'s folder durable: fsync the folder.
pub fn sync_folder(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(folder_of(path))?.sync_all()
}

/// Creates `dir` and the folders above it that are missing, each fsynced into its parent, so a file
/// synced in it survives a power cut; syncs the folder holding `dir` when it was there already (a
/// process killed between making it and syncing may have left it only in memory).
pub fn create_folder_durably(dir: &Path) -> std::io::Result<()> {
    create_folder_durably_with_mode(dir, 0o777)
}

/// Like [`create_folder_durably`], with the mode (before the umask) of the folders it makes.
pub fn create_folder_durably_with_mode(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(folder) = at.filter(|f| !f.as_os_str().is_empty() && !f.is_dir()) {
        missing.push(folder);
        at = folder.parent();
    }
    if missing.is_empty() {
        return sync_folder(dir);
    }
    for folder in missing.iter().rev() {
        match std::fs::DirBuilder::new().mode(mode).create(folder) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => sync_folder(folder)?,
        }
    }
    Ok(())
}

fn folder_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_holds_the_new_bytes_and_no_temporary_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.json");
        write_atomically(&path, b"old").unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("stats.json")]);
    }

    #[test]
    fn a_secret_is_never_readable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_atomically_with_mode(&path, b"secret", 0o600).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_folder_is_made_with_the_folders_above_it_and_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("state/keys");
        create_folder_durably_with_mode(&keys, 0o700).unwrap();
        for folder in [dir.path().join("state"), keys.clone()] {
            assert_eq!(std::fs::metadata(&folder).unwrap().permissions().mode() & 0o777, 0o700);
        }
        // Again on what is there: only the sync.
        create_folder_durably(&keys).unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        assert!(create_folder_durably(&dir.path().join("file/below")).is_err(), "a file is in the way");
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        write_atomically(&path, b"old").unwrap();
        // A folder where the temporary would go makes the write fail as a full disk would.
        std::fs::create_dir(temporary_path(&path)).unwrap();
        assert!(write_atomically(&path, b"new").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }
}
