//! Evidence (取证) on disk: per event message, a JPEG of the full frame with boxes, labels and zones
//! drawn and a JPEG of the crop, under `state_dir/evidence/<day>/`, each recorded with its sha256 in
//! the device's signed hash chain. Retention keeps the pictures within a disk quota and a maximum
//! age, and deletes the oldest while the disk runs short of free space; while it still is short,
//! no picture is written (the record is, without pictures): the disk never fills up.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::base::write_file::{create_folder_durably, sync_folder, write_synced};
use crate::evidence::chain::{Chain, ChainError};
use crate::evidence::config::EvidenceConfig;
use crate::evidence::signing::{DeviceKey, KeyError};
use crate::wire::chain::sha256_hex;
use crate::wire::{ChainProof, EvidenceFile, RecordContent};

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("evidence folder {path}: {message}")]
    Folder { path: PathBuf, message: String },
}

/// A picture to keep for an event message.
pub struct Picture<'a> {
    /// `frame`, `crop`, `reference` (a tamper event's) or `plate`: the file ends `-<role>.jpg`.
    pub role: &'static str,
    pub jpeg: &'a [u8],
}

/// One stored picture, oldest first by (time, name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct StoredPicture {
    modified: DateTime<Utc>,
    file: String,
    bytes: u64,
}

/// Tells how much space the disk under a folder has left; a trait so tests can run out of disk.
pub trait FreeSpace: Send {
    fn free_bytes(&self, dir: &Path) -> Option<u64>;
}

/// The real disk, through statvfs.
pub struct DiskFreeSpace;

impl FreeSpace for DiskFreeSpace {
    fn free_bytes(&self, dir: &Path) -> Option<u64> {
        let stat = rustix::fs::statvfs(dir).ok()?;
        Some(stat.f_bavail.saturating_mul(stat.f_frsize))
    }
}

pub struct EvidenceStore {
    dir: PathBuf,
    settings: EvidenceConfig,
    pictures: BTreeSet<StoredPicture>,
    total_bytes: u64,
    chain: Chain,
    free_space: Box<dyn FreeSpace>,
    /// Held while the store is open: one writer of the chain at a time (the running agent, or a
    /// key rotation with the agent stopped).
    _writer_lock: std::fs::File,
    /// Pictures deleted by retention since start, and when last.
    pruned_files: u64,
    last_pruned_at: Option<DateTime<Utc>>,
}

/// The evidence folder's share of the storage budget, for the page and telemetry.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct EvidenceUsage {
    pub pictures_bytes: u64,
    pub chain_bytes: u64,
    /// `evidence.max_disk_mb`, pictures and chain together.
    pub quota_bytes: u64,
    /// Pictures deleted by retention since start (age, quota, free space), and when last.
    pub pictures_pruned: u64,
    pub last_pruned_at: Option<DateTime<Utc>>,
}

/// What was kept for one event message.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    pub files: Vec<EvidenceFile>,
    /// The event's record in the chain, as it travels with the event message.
    pub proof: ChainProof,
}

impl EvidenceStore {
    /// Opens `state_dir/evidence`, its chain (signed with `state_dir/device.key`, created on first
    /// start) and the pictures already there.
    pub fn open(state_dir: &Path, settings: EvidenceConfig, device: &str) -> Result<Self, EvidenceError> {
        let key_dir = settings.key_dir(state_dir);
        DeviceKey::prepare_dir(&key_dir, state_dir)?;
        let key = DeviceKey::load_or_create(&key_dir)?;
        let mut store = Self::open_with(state_dir, settings, device, key, Box::new(DiskFreeSpace))?;
        store.finish_interrupted_rotation(&key_dir)?;
        Ok(store)
    }

    /// A rotation cut short by a crash: finished when the chain recorded it, else undone.
    fn finish_interrupted_rotation(&mut self, key_dir: &Path) -> Result<(), EvidenceError> {
        let next_path = key_dir.join(crate::evidence::signing::NEXT_KEY_FILE);
        if !next_path.is_file() {
            return Ok(());
        }
        let next = DeviceKey::read(&next_path)?;
        if self.chain.last_rotated_to() == Some(next.public_hex().as_str()) {
            let key = DeviceKey::promote_next(key_dir)?;
            tracing::warn!("finished a key rotation a crash had interrupted");
            self.chain.use_key(key);
        } else {
            let _ = std::fs::remove_file(&next_path);
            tracing::warn!("removed a rotation key the chain never recorded (a crash before the rotation record)");
        }
        Ok(())
    }

    /// Rotates the device key (see `Chain::rotate_key`).
    pub fn rotate_key(&mut self) -> Result<ChainProof, EvidenceError> {
        let key_dir = self.settings.key_dir(self.dir.parent().unwrap_or(Path::new(".")));
        Ok(self.chain.rotate_key(&key_dir)?)
    }

    pub fn open_with(
        state_dir: &Path,
        settings: EvidenceConfig,
        device: &str,
        key: DeviceKey,
        free_space: Box<dyn FreeSpace>,
    ) -> Result<Self, EvidenceError> {
        let dir = state_dir.join("evidence");
        let folder_error = |message: String| EvidenceError::Folder { path: dir.clone(), message };
        create_folder_durably(&dir).map_err(|e| folder_error(format!("cannot create: {e}")))?;
        let lock_path = dir.join(".writer.lock");
        let writer_lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| folder_error(format!("cannot open {}: {e}", lock_path.display())))?;
        // The day folders a process killed before its sync may have left only in memory.
        sync_folder(&lock_path).map_err(|e| folder_error(format!("cannot sync: {e}")))?;
        rustix::fs::flock(&writer_lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
            folder_error("is in use by another edge-agent (a running agent?): one writer of the chain at a time".into())
        })?;
        let chain = Chain::open(&dir, key, device)?;
        let pictures = scan(&dir).map_err(|e| folder_error(e.to_string()))?;
        let total_bytes = pictures.iter().map(|p| p.bytes).sum();
        Ok(Self {
            dir,
            settings,
            pictures,
            total_bytes,
            chain,
            free_space,
            _writer_lock: writer_lock,
            pruned_files: 0,
            last_pruned_at: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the evidence takes against its quota.
    pub fn usage(&self) -> EvidenceUsage {
        EvidenceUsage {
            pictures_bytes: self.total_bytes,
            chain_bytes: self.chain.bytes(),
            quota_bytes: self.settings.max_disk_mb.saturating_mul(1 << 20),
            pictures_pruned: self.pruned_files,
            last_pruned_at: self.last_pruned_at,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Sequence number the next chain record gets; an event carries it before it is recorded.
    pub fn next_seq(&self) -> u64 {
        self.chain.next_seq()
    }

    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    pub fn chain_mut(&mut self) -> &mut Chain {
        &mut self.chain
    }

    /// Writes the pictures (when there is room), then the chain record holding `event` (already
    /// carrying these files' hashes) and the files.
    pub fn keep(
        &mut self,
        now: DateTime<Utc>,
        name: &str,
        pictures: &[Picture],
        event: impl FnOnce(&[EvidenceFile], u64) -> serde_json::Value,
    ) -> Result<Kept, EvidenceError> {
        let incoming: u64 = pictures.iter().map(|p| p.jpeg.len() as u64).sum();
        self.enforce_retention(now, incoming)?;
        let mut files = Vec::new();
        if self.has_room_for(incoming) {
            let day = now.format("%Y-%m-%d").to_string();
            let folder = self.dir.join(&day);
            if !folder.is_dir() {
                create_folder_durably(&folder).map_err(|e| self.folder_error(&folder, e))?;
            }
            for picture in pictures {
                let file = format!("{day}/{name}-{}.jpg", picture.role);
                let path = self.dir.join(&file);
                write_synced(&path, picture.jpeg).map_err(|e| self.folder_error(&path, e))?;
                let bytes = picture.jpeg.len() as u64;
                self.pictures.insert(StoredPicture { modified: now, file: file.clone(), bytes });
                self.total_bytes += bytes;
                files.push(EvidenceFile { file, sha256: sha256_hex(picture.jpeg), bytes });
            }
            // The pictures' names durable before the chain record that names them.
            if let Some(first) = files.first() {
                let path = self.dir.join(&first.file);
                sync_folder(&path).map_err(|e| self.folder_error(&folder, e))?;
            }
        } else {
            tracing::warn!(
                dir = %self.dir.display(),
                "disk below `evidence.min_free_mb` even after deleting old evidence; event recorded without pictures"
            );
        }
        let seq = self.chain.next_seq();
        let event = event(&files, seq);
        let proof = self.chain.append(now, RecordContent::Event { event, evidence: files.clone() })?;
        Ok(Kept { files, proof })
    }

    /// Takes a finished clip into the store: hashes the file, counts it in the budget (retention
    /// may delete older evidence for it) and records it in the chain.
    pub fn keep_clip(
        &mut self,
        now: DateTime<Utc>,
        clip: &super::clips::FinishedClip,
    ) -> Result<(EvidenceFile, ChainProof), EvidenceError> {
        let path = self.dir.join(&clip.file);
        let (sha256, bytes) = synced_sha256_of_file(&path).map_err(|e| self.folder_error(&path, e))?;
        sync_folder(&path).map_err(|e| self.folder_error(&path, e))?;
        let file = EvidenceFile { file: clip.file.clone(), sha256, bytes };
        let content = RecordContent::Clip {
            event_id: clip.event_id.to_string(),
            also: clip.also.iter().map(Uuid::to_string).collect(),
            camera: clip.camera.clone(),
            from: clip.from,
            to: clip.to,
            evidence: vec![file.clone()],
            cut_short: clip.cut_short.clone(),
        };
        let proof = self.chain.append(now, content)?;
        let picture = StoredPicture { modified: now, file: clip.file.clone(), bytes };
        // A file found by an earlier scan (a clip written across a restart) is counted once.
        if let Some(old) = self.pictures.iter().find(|p| p.file == clip.file).cloned() {
            self.pictures.remove(&old);
            self.total_bytes = self.total_bytes.saturating_sub(old.bytes);
        }
        self.pictures.insert(picture);
        self.total_bytes += bytes;
        // The other events' names for it: hard links (no second copy), pruned with it.
        let day = clip.file.split('/').next().unwrap_or_default();
        for other in &clip.also {
            let name = format!("{day}/{other}-clip.mp4");
            match std::fs::hard_link(&path, self.dir.join(&name)) {
                Ok(()) => {
                    self.pictures.insert(StoredPicture { modified: now, file: name, bytes: 0 });
                }
                Err(e) => tracing::warn!(event_id = %other, "cannot name the shared clip for this event: {e}"),
            }
        }
        if !clip.also.is_empty() {
            if let Err(e) = sync_folder(&path) {
                tracing::warn!(file = %path.display(), "cannot sync the names of a shared clip: {e}");
            }
        }
        self.enforce_retention(now, 0)?;
        Ok((file, proof))
    }

    /// Whether a clip of about `bytes` may be started: the disk keeps `min_free_mb` after it.
    pub fn has_room_for_clip(&self, bytes: u64) -> bool {
        self.has_room_for(bytes)
    }

    fn folder_error(&self, path: &Path, e: std::io::Error) -> EvidenceError {
        EvidenceError::Folder { path: path.to_owned(), message: e.to_string() }
    }

    fn min_free_bytes(&self) -> u64 {
        self.settings.min_free_mb.saturating_mul(1 << 20)
    }

    fn has_room_for(&self, incoming: u64) -> bool {
        match self.free_space.free_bytes(&self.dir) {
            Some(free) => free >= self.min_free_bytes().saturating_add(incoming),
            None => true,
        }
    }

    /// Deletes pictures past the age limit, then the oldest while over the quota or short of free
    /// space. The chain records what goes *before* it goes: a crash in between leaves a picture the
    /// chain calls pruned (still checked while it is there), never one gone without a record.
    pub fn enforce_retention(&mut self, now: DateTime<Utc>, incoming: u64) -> Result<Vec<String>, EvidenceError> {
        let max_age = chrono::Duration::days(i64::from(self.settings.max_age_days));
        // The chain counts in the budget too: pictures give way to it.
        let quota = self.settings.max_disk_mb.saturating_mul(1 << 20).saturating_sub(self.chain.bytes());
        let free_now = self.free_space.free_bytes(&self.dir);
        let (mut total, mut freed) = (self.total_bytes, 0u64);
        let mut victims = Vec::new();
        let mut reasons = BTreeSet::new();
        for picture in &self.pictures {
            let short_of_space = free_now
                .is_some_and(|free| free.saturating_add(freed) < self.min_free_bytes().saturating_add(incoming));
            let reason = if now - picture.modified > max_age {
                "max_age_days"
            } else if total.saturating_add(incoming) > quota {
                "max_disk_mb"
            } else if short_of_space {
                "min_free_mb"
            } else {
                break;
            };
            total = total.saturating_sub(picture.bytes);
            freed += picture.bytes;
            reasons.insert(reason);
            victims.push(picture.clone());
        }
        let mut deleted = Vec::new();
        if !victims.is_empty() {
            let reason = reasons.into_iter().collect::<Vec<_>>().join(",");
            let files: Vec<String> = victims.iter().map(|v| v.file.clone()).collect();
            self.chain.append(now, RecordContent::Pruned { files, reason: reason.clone() })?;
            for victim in victims {
                let path = self.dir.join(&victim.file);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::error!(path = %path.display(), "cannot delete old evidence: {e}"),
                }
                self.pictures.remove(&victim);
                self.total_bytes = self.total_bytes.saturating_sub(victim.bytes);
                deleted.push(victim.file);
            }
            remove_empty_day_folders(&self.dir);
            tracing::info!(files = deleted.len(), reason, "deleted old evidence");
            self.pruned_files += deleted.len() as u64;
            self.last_pruned_at = Some(now);
        }
        // Whole chain segments past the age limit go too, recorded in the chain.
        self.chain.prune_segments(now, now - max_age, "max_age_days")?;
        Ok(deleted)
    }
}

/// The sha256 (hex) and length of a file, read in pieces (a clip may be tens of megabytes), and the
/// file synced: a power cut cannot leave a chain record of a file the disk never had.
fn synced_sha256_of_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let hashed = super::chain::sha256_of_reader(&mut file)?;
    file.sync_all()?;
    Ok(hashed)
}

/// The pictures already in the evidence folder (`<day>/<name>.jpg`), with their modification times.
fn scan(dir: &Path) -> std::io::Result<BTreeSet<StoredPicture>> {
    let mut pictures = BTreeSet::new();
    for day in std::fs::read_dir(dir)? {
        let day = day?;
        if !day.file_type()?.is_dir() {
            continue;
        }
        let day_name = day.file_name().to_string_lossy().to_string();
        // The chain's segments live beside the day folders; they are not pictures.
        if day_name == crate::evidence::chain::SEGMENTS_DIR {
            continue;
        }
        for entry in std::fs::read_dir(day.path())? {
            let entry = entry?;
            let metadata = entry.metadata()?;
            if !metadata.is_file() {
                continue;
            }
            let modified = metadata.modified().map(DateTime::<Utc>::from).unwrap_or_else(|_| Utc::now());
            let file = format!("{day_name}/{}", entry.file_name().to_string_lossy());
            pictures.insert(StoredPicture { modified, file, bytes: metadata.len() });
        }
    }
    Ok(pictures)
}

fn remove_empty_day_folders(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            // remove_dir fails on a folder that still holds files, which is what we want.
            if entry.file_type().is_ok_and(|t| t.is_dir()) && entry.file_name() != crate::evidence::chain::SEGMENTS_DIR
            {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::chain::verify;
    use crate::judge::fixtures::at;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A disk whose free space the test sets, beside the real statvfs one tested below.
    struct TestDisk(Arc<AtomicU64>);
    impl FreeSpace for TestDisk {
        fn free_bytes(&self, _: &Path) -> Option<u64> {
            Some(self.0.load(Ordering::Relaxed))
        }
    }

    fn store(dir: &Path, settings: EvidenceConfig, free: Arc<AtomicU64>) -> EvidenceStore {
        EvidenceStore::open_with(dir, settings, "box-1", DeviceKey::from_seed([5; 32]), Box::new(TestDisk(free)))
            .unwrap()
    }

    fn keep(store: &mut EvidenceStore, secs: f64, name: &str, bytes: usize) -> Kept {
        let jpeg = vec![0xAB; bytes];
        let pictures = [Picture { role: "frame", jpeg: &jpeg }];
        store
            .keep(
                at(secs),
                name,
                &pictures,
                |files, seq| serde_json::json!({"id": name, "files": files.len(), "seq": seq}),
            )
            .unwrap()
    }

    #[test]
    fn pictures_are_written_hashed_and_chained() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(dir.path(), EvidenceConfig::default(), Arc::new(AtomicU64::new(u64::MAX)));
        let kept = keep(&mut store, 0.0, "ev1-r0", 1000);
        // After the genesis record (today) and the start of the pictures' day's segment.
        assert_eq!(kept.proof.seq, 3, "after the genesis and the segment start");
        assert_eq!(kept.files.len(), 1);
        let on_disk = std::fs::read(store.dir().join(&kept.files[0].file)).unwrap();
        assert_eq!(sha256_hex(&on_disk), kept.files[0].sha256);
        assert!(kept.files[0].file.ends_with("/ev1-r0-frame.jpg"), "{}", kept.files[0].file);
        assert_eq!(verify(store.dir(), None).unwrap().first_broken_link, None);
    }

    #[test]
    fn the_quota_deletes_the_oldest_and_the_chain_still_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let settings = EvidenceConfig { max_disk_mb: 1, ..EvidenceConfig::default() };
        let mut store = store(dir.path(), settings, Arc::new(AtomicU64::new(u64::MAX)));
        for i in 0..5 {
            keep(&mut store, f64::from(i), &format!("ev{i}"), 300 * 1024);
        }
        assert!(store.total_bytes() <= 1 << 20, "{}", store.total_bytes());
        let day = at(0.0).format("%Y-%m-%d").to_string();
        assert!(!store.dir().join(format!("{day}/ev0-frame.jpg")).exists(), "oldest gone");
        assert!(store.dir().join(format!("{day}/ev4-frame.jpg")).exists(), "newest kept");
        let report = verify(store.dir(), None).unwrap();
        assert_eq!(report.first_broken_link, None, "{report:?}");
        assert_eq!(report.evidence_files_pruned, 2);
    }

    #[test]
    fn old_evidence_goes_after_max_age_days() {
        let dir = tempfile::tempdir().unwrap();
        let settings = EvidenceConfig { max_age_days: 1, ..EvidenceConfig::default() };
        let mut store = store(dir.path(), settings, Arc::new(AtomicU64::new(u64::MAX)));
        keep(&mut store, 0.0, "old", 100);
        keep(&mut store, 3600.0, "newer", 100);
        keep(&mut store, 90_000.0, "today", 100);
        let report = verify(store.dir(), None).unwrap();
        assert_eq!(report.first_broken_link, None);
        assert_eq!((report.evidence_files_checked, report.evidence_files_pruned), (2, 1));
    }

    #[test]
    fn retention_runs_without_new_evidence_too() {
        let dir = tempfile::tempdir().unwrap();
        let settings = EvidenceConfig { max_age_days: 1, ..EvidenceConfig::default() };
        let mut store = store(dir.path(), settings, Arc::new(AtomicU64::new(u64::MAX)));
        keep(&mut store, 0.0, "old", 100);
        assert!(store.enforce_retention(at(3600.0), 0).unwrap().is_empty());
        assert_eq!(store.enforce_retention(at(2.0 * 86_400.0), 0).unwrap().len(), 1);
        assert_eq!(store.total_bytes(), 0);
        assert_eq!(verify(store.dir(), None).unwrap().first_broken_link, None);
    }

    #[test]
    fn a_full_disk_deletes_old_evidence_and_then_writes_none() {
        let dir = tempfile::tempdir().unwrap();
        let free = Arc::new(AtomicU64::new(u64::MAX));
        let settings = EvidenceConfig { min_free_mb: 100, ..EvidenceConfig::default() };
        let mut store = store(dir.path(), settings, free.clone());
        keep(&mut store, 0.0, "a", 100);
        keep(&mut store, 1.0, "b", 100);
        // The disk is nearly full (something else filled it): evidence gives way, and stops.
        free.store(10 << 20, Ordering::Relaxed);
        let kept = keep(&mut store, 2.0, "c", 100);
        assert!(kept.files.is_empty(), "no picture written on a full disk");
        assert_eq!(store.total_bytes(), 0);
        let report = verify(store.dir(), None).unwrap();
        assert_eq!(report.first_broken_link, None);
        assert_eq!(report.events, 3);
    }

    #[test]
    fn the_real_disk_reports_free_space() {
        let dir = tempfile::tempdir().unwrap();
        assert!(DiskFreeSpace.free_bytes(dir.path()).is_some_and(|b| b > 0));
    }

    #[test]
    fn pictures_from_a_previous_run_count_against_the_quota() {
        let dir = tempfile::tempdir().unwrap();
        let free = Arc::new(AtomicU64::new(u64::MAX));
        {
            let mut first = store(dir.path(), EvidenceConfig::default(), free.clone());
            keep(&mut first, 0.0, "a", 5000);
        }
        let second = store(dir.path(), EvidenceConfig::default(), free);
        assert_eq!(second.total_bytes(), 5000);
        assert_eq!(second.next_seq(), 4, "genesis, segment start, the event");
    }

    fn event(n: u32) -> serde_json::Value {
        serde_json::json!({ "event_id": format!("e{n}"), "revision": 0 })
    }

    #[test]
    fn a_rotated_key_signs_what_follows_and_the_chain_still_verifies_from_the_first_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = EvidenceStore::open(dir.path(), EvidenceConfig::default(), "box").unwrap();
        let first_key = store.chain().public_key();
        store.keep(Utc::now(), "a", &[], |_, _| event(1)).unwrap();
        let rotation = store.rotate_key().unwrap();
        let second_key = store.chain().public_key();
        assert_ne!(first_key, second_key);
        let after = store.keep(Utc::now(), "b", &[], |_, _| event(2)).unwrap();
        assert_eq!(after.proof.seq, rotation.seq + 1);
        assert!(
            crate::wire::verify::verify_hex(&second_key, after.proof.record.as_bytes(), &after.proof.signature).is_ok()
        );
        let report = verify(store.dir(), Some(&first_key)).unwrap();
        assert_eq!(report.first_broken_link, None, "{report:?}");
        assert_eq!(report.events, 2);
        // The files: the new key in place, the old secret gone, no leftover.
        let keys = dir.path().join("keys");
        assert_eq!(std::fs::read_to_string(keys.join("device.pub")).unwrap().trim(), second_key);
        assert!(!keys.join("device.key.next").exists());
        drop(store);
        let reopened = EvidenceStore::open(dir.path(), EvidenceConfig::default(), "box").unwrap();
        assert_eq!(reopened.chain().public_key(), second_key);
    }

    #[test]
    fn a_rotation_cut_short_by_a_crash_is_finished_or_undone_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let store = EvidenceStore::open(dir.path(), EvidenceConfig::default(), "box").unwrap();
        let first_key = store.chain().public_key();
        drop(store);
        // Crash before the rotation record: the new key is dropped, the old one signs on.
        DeviceKey::create_next(&keys).unwrap();
        let store = EvidenceStore::open(dir.path(), EvidenceConfig::default(), "box").unwrap();
        assert_eq!(store.chain().public_key(), first_key);
        assert!(!keys.join("device.key.next").exists());
        drop(store);
        // Crash after the record, before the new key took the old one's place: finished.
        let store = EvidenceStore::open(dir.path(), EvidenceConfig::default(), "box").unwrap();
        let mut chain =
            Chain::open(&dir.path().join("evidence"), DeviceKey::read(&keys.join("device.key")).unwrap(), "box");
        drop(store);
        let next = DeviceKey::create_next(&keys).unwrap();
        let chain = chain.as_mut().unwrap();
        chain.append(at(2.0), RecordContent::KeyRotated { public_key: next.public_hex() }).unwrap();
        let store = EvidenceStore::open(dir.path(), EvidenceConfig::default(), "box").unwrap();
        assert_eq!(store.chain().public_key(), next.public_hex());
        assert_eq!(verify(store.dir(), Some(&first_key)).unwrap().first_broken_link, None);
    }

    #[test]
    fn the_key_lives_apart_from_the_evidence_and_an_old_key_beside_it_is_moved_in() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let old = DeviceKey::load_or_create(dir.path()).unwrap();
        assert!(dir.path().join(crate::evidence::signing::KEY_FILE).is_file(), "an older agent's key");
        let store = EvidenceStore::open(dir.path(), EvidenceConfig::default(), "box").unwrap();
        assert_eq!(store.chain().public_key(), old.public_hex(), "the same key, moved");
        assert!(!dir.path().join(crate::evidence::signing::KEY_FILE).exists());
        let mode = std::fs::metadata(dir.path().join("keys")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let second = EvidenceStore::open(dir.path(), EvidenceConfig::default(), "box");
        assert!(second.err().unwrap().to_string().contains("in use by another edge-agent"));
    }

    #[test]
    fn old_chain_segments_are_deleted_whole_and_the_rest_still_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let settings = EvidenceConfig { max_age_days: 2, ..EvidenceConfig::default() };
        let mut store = store(dir.path(), settings, Arc::new(AtomicU64::new(u64::MAX)));
        // The chain starts today (its genesis); then one event a day for five days.
        let today = Utc::now();
        for d in 1..=5 {
            let time = today + chrono::Duration::days(d);
            store.keep(time, &format!("d{d}"), &[], |_, _| event(d as u32)).unwrap();
        }
        let segments = dir.path().join("evidence").join(crate::evidence::chain::SEGMENTS_DIR);
        let left = crate::evidence::chain::segment_files(&segments).unwrap();
        assert_eq!(left.len(), 3, "the segments of today, day 1 and day 2 are gone: {left:?}");
        let report = verify(store.dir(), Some(&store.chain().public_key())).unwrap();
        assert_eq!(report.first_broken_link, None, "{report:?}");
        // Deleting a segment by hand (not by policy) is caught.
        std::fs::remove_file(&left[0]).unwrap();
        let report = verify(store.dir(), Some(&store.chain().public_key())).unwrap();
        assert!(report.first_broken_link.is_some(), "{report:?}");
    }
}
