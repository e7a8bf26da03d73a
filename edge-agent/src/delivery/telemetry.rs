//! Telemetry: the box's health every N seconds on `{prefix}/{device}/telemetry` — frame rates per
//! camera, inference time, outbox fill, free disk, CPU temperature, uptime and whether the clock is
//! synchronised. Sampled from the status board, the outbox and the kernel (`/sys/class/thermal`,
//! `statvfs`, `adjtimex`, `/proc/uptime`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::board::StatusBoard;
use super::outbox::{Outbox, OutboxStats};

/// Version of the telemetry JSON; bump when a field changes meaning or goes away.
pub const TELEMETRY_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct Telemetry {
    pub schema_version: u32,
    pub device: String,
    pub time: DateTime<Utc>,
    /// Seconds since the agent started.
    pub uptime_seconds: u64,
    /// Seconds since the machine booted.
    pub system_uptime_seconds: Option<u64>,
    pub cameras: Vec<CameraTelemetry>,
    pub models: Vec<ModelTelemetry>,
    pub outbox: OutboxStats,
    pub disk: Option<DiskSpace>,
    /// Hottest thermal zone, degrees Celsius; null where the kernel exposes none.
    pub cpu_temperature_celsius: Option<f64>,
    pub clock: ClockState,
    pub mqtt_published: u64,
    /// The broker this telemetry goes through (scheme, host, port).
    pub mqtt_broker: Option<String>,
    /// Times the link moved to another of the configured brokers since start.
    pub mqtt_broker_switches: u64,
    /// How far the evidence chain has reached (null when evidence is off or empty).
    pub chain_head: Option<crate::wire::ChainHead>,
    /// Messages the outbox refused (a full disk), held in memory and retried.
    pub held: super::held::HeldReport,
    /// Times the outbox file was reopened after an I/O error since start.
    pub outbox_reopens: u64,
    /// Commands refused before they were queued, by ack code, since start.
    pub commands_refused: std::collections::BTreeMap<String, u64>,
    /// The state folder's budget: each part's size and quota, what was pruned and when.
    pub storage: StorageReport,
}

/// The state folder's budget, part by part, beside the disk that is really there.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StorageReport {
    pub disk_free_bytes: Option<u64>,
    pub disk_total_bytes: Option<u64>,
    pub parts: Vec<StoragePart>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StoragePart {
    /// `outbox`, `evidence pictures`, `evidence chain`, `models`, `history`.
    pub name: &'static str,
    pub bytes: u64,
    /// Its own quota, where it has one.
    pub quota_bytes: Option<u64>,
    /// What was deleted to stay within budget since start (outbox: since it was created), and when last.
    pub pruned: Option<u64>,
    pub last_pruned_at: Option<DateTime<Utc>>,
}

/// The budget of `state_dir` as the board and the files show it now.
pub fn storage_report(state_dir: &Path, status: &crate::delivery::board::Status) -> StorageReport {
    let disk = crate::base::disk::disk_space(state_dir);
    let file_bytes = |name: &str| std::fs::metadata(state_dir.join(name)).map(|m| m.len()).unwrap_or(0);
    let mut parts = vec![StoragePart {
        name: "outbox",
        bytes: file_bytes("outbox.redb").max(status.outbox.bytes),
        quota_bytes: Some(status.outbox.quota_bytes),
        pruned: Some(status.outbox.evidence_pruned_total),
        last_pruned_at: status.outbox.last_pruned_at,
    }];
    if let Some(usage) = &status.evidence_usage {
        parts.push(StoragePart {
            name: "evidence pictures",
            bytes: usage.pictures_bytes,
            quota_bytes: Some(usage.quota_bytes),
            pruned: Some(usage.pictures_pruned),
            last_pruned_at: usage.last_pruned_at,
        });
        parts.push(StoragePart { name: "evidence chain", bytes: usage.chain_bytes, ..Default::default() });
    }
    parts.push(StoragePart { name: "models", bytes: folder_bytes(&state_dir.join("models")), ..Default::default() });
    parts.push(StoragePart { name: "history", bytes: file_bytes("history.redb"), ..Default::default() });
    StorageReport { disk_free_bytes: disk.map(|d| d.free_bytes), disk_total_bytes: disk.map(|d| d.total_bytes), parts }
}

fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()?.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Serialize)]
pub struct CameraTelemetry {
    pub id: String,
    pub enabled: bool,
    /// Frames per second captured and inferred since the previous sample.
    pub fps_captured: f64,
    pub fps_inferred: f64,
    pub frames_dropped: u64,
    pub errors: u64,
    /// All models on the camera's last frame.
    pub inference_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelTelemetry {
    pub name: String,
    pub sha256: String,
    /// Mean over the cameras' last frames.
    pub inference_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskSpace {
    pub path: PathBuf,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClockState {
    /// From the kernel's NTP state (adjtimex); null when it cannot be read.
    pub synchronized: Option<bool>,
    /// The kernel's maximum error estimate, milliseconds.
    pub max_error_ms: Option<f64>,
}

/// Keeps the previous frame counters so rates cover the time between two samples.
pub struct TelemetrySampler {
    board: Arc<StatusBoard>,
    outbox: Arc<Outbox>,
    state_dir: PathBuf,
    previous: Option<(Instant, HashMap<String, (u64, u64)>)>,
}

impl TelemetrySampler {
    pub fn new(board: Arc<StatusBoard>, outbox: Arc<Outbox>, state_dir: PathBuf) -> Self {
        Self { board, outbox, state_dir, previous: None }
    }

    pub fn sample(&mut self) -> Telemetry {
        let status = self.board.snapshot();
        let now = Instant::now();
        let counters: HashMap<String, (u64, u64)> =
            status.cameras.iter().map(|c| (c.id.clone(), (c.frames_captured, c.frames_inferred))).collect();
        let (elapsed, before) = match &self.previous {
            Some((at, before)) => (now.duration_since(*at).as_secs_f64(), Some(before)),
            None => ((status.uptime_seconds as f64).max(1.0), None),
        };
        let rate = |now: u64, then: u64| if elapsed > 0.0 { now.saturating_sub(then) as f64 / elapsed } else { 0.0 };
        let cameras = status
            .cameras
            .iter()
            .map(|c| {
                let (captured_before, inferred_before) = before.and_then(|b| b.get(&c.id)).copied().unwrap_or((0, 0));
                CameraTelemetry {
                    id: c.id.clone(),
                    enabled: c.enabled,
                    fps_captured: round2(rate(c.frames_captured, captured_before)),
                    fps_inferred: round2(rate(c.frames_inferred, inferred_before)),
                    frames_dropped: c.frames_dropped,
                    errors: c.errors,
                    inference_ms: round2(c.inference_ms),
                }
            })
            .collect();
        let mut per_model: HashMap<&str, (f64, u32)> = HashMap::new();
        for results in status.latest_results.values() {
            for result in results {
                let entry = per_model.entry(result.model.name.as_str()).or_default();
                entry.0 += result.latency.as_secs_f64() * 1000.0;
                entry.1 += 1;
            }
        }
        let models = status
            .models
            .iter()
            .map(|m| ModelTelemetry {
                name: m.name.clone(),
                sha256: m.sha256.clone(),
                inference_ms: per_model
                    .get(m.name.as_str())
                    .map(|(sum, n)| round2(sum / f64::from((*n).max(1))))
                    .unwrap_or(0.0),
            })
            .collect();
        self.previous = Some((now, counters));
        let outbox = self.outbox.stats().unwrap_or_else(|e| {
            tracing::warn!("telemetry: {e}");
            OutboxStats { depth: status.outbox_depth, ..Default::default() }
        });
        let storage = storage_report(&self.state_dir, &status);
        Telemetry {
            schema_version: TELEMETRY_SCHEMA_VERSION,
            device: status.device_id,
            time: Utc::now(),
            uptime_seconds: status.uptime_seconds,
            system_uptime_seconds: system_uptime_seconds(),
            cameras,
            models,
            outbox,
            disk: disk_space(&self.state_dir),
            cpu_temperature_celsius: cpu_temperature_celsius(Path::new("/sys/class/thermal")),
            clock: clock_state(),
            mqtt_published: status.mqtt.published,
            mqtt_broker: status.mqtt.broker.clone(),
            mqtt_broker_switches: status.mqtt.broker_switches,
            chain_head: status.evidence.chain_head,
            storage,
            held: status.held,
            outbox_reopens: self.outbox.reopens(),
            commands_refused: status.mqtt.commands_refused.clone(),
        }
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn system_uptime_seconds() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    text.split_whitespace().next()?.parse::<f64>().ok().map(|s| s as u64)
}

/// The hottest `thermal_zone*/temp` (millidegrees Celsius) under `root`.
pub fn cpu_temperature_celsius(root: &Path) -> Option<f64> {
    let zones = std::fs::read_dir(root).ok()?;
    zones
        .filter_map(|zone| zone.ok())
        .filter(|zone| zone.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|zone| std::fs::read_to_string(zone.path().join("temp")).ok())
        .filter_map(|text| text.trim().parse::<i64>().ok())
        .map(|millidegrees| millidegrees as f64 / 1000.0)
        .fold(None, |hottest: Option<f64>, t| Some(hottest.map_or(t, |h| h.max(t))))
}

/// Free and total bytes of the file system holding `path`.
pub fn disk_space(path: &Path) -> Option<DiskSpace> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a valid NUL-terminated path and a buffer of the right type; read only on success.
    let stats = unsafe {
        if libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) != 0 {
            return None;
        }
        stats.assume_init()
    };
    let block = stats.f_frsize as u64;
    Some(DiskSpace {
        path: path.to_owned(),
        free_bytes: (stats.f_bavail as u64).saturating_mul(block),
        total_bytes: (stats.f_blocks as u64).saturating_mul(block),
    })
}

/// The kernel's NTP discipline state: synchronised unless it reports TIME_ERROR / STA_UNSYNC.
pub fn clock_state() -> ClockState {
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: modes = 0 only reads the kernel's state into a zeroed struct of the right type.
    let state = unsafe { libc::adjtimex(&mut timex) };
    if state < 0 {
        return ClockState { synchronized: None, max_error_ms: None };
    }
    let synchronized = state != libc::TIME_ERROR && timex.status & libc::STA_UNSYNC == 0;
    ClockState { synchronized: Some(synchronized), max_error_ms: Some(timex.maxerror as f64 / 1000.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hottest_thermal_zone_is_reported_in_celsius() {
        let dir = tempfile::tempdir().unwrap();
        for (zone, millidegrees) in
            [("thermal_zone0", "41500\n"), ("thermal_zone1", "57250\n"), ("cooling_device0", "9")]
        {
            std::fs::create_dir(dir.path().join(zone)).unwrap();
            std::fs::write(dir.path().join(zone).join("temp"), millidegrees).unwrap();
        }
        assert_eq!(cpu_temperature_celsius(dir.path()), Some(57.25));
        assert_eq!(cpu_temperature_celsius(&dir.path().join("none")), None);
    }

    #[test]
    fn disk_space_of_the_state_folder_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let disk = disk_space(dir.path()).expect("statvfs works on a temp dir");
        assert!(disk.total_bytes > 0 && disk.free_bytes <= disk.total_bytes, "{disk:?}");
        assert!(disk_space(Path::new("/nonexistent/folder")).is_none());
    }

    #[test]
    fn the_clock_state_is_read_from_the_kernel() {
        let clock = clock_state();
        assert!(clock.synchronized.is_some(), "adjtimex is readable without privileges");
    }

    #[test]
    fn rates_cover_the_time_between_two_samples() {
        let dir = tempfile::tempdir().unwrap();
        let board = Arc::new(StatusBoard::new("box".into(), Vec::new()));
        let health = Arc::new(crate::source::CameraHealth::default());
        board.add_camera("gate", health.clone());
        let outbox = Arc::new(Outbox::open(&dir.path().join("outbox.redb")).unwrap());
        let mut sampler = TelemetrySampler::new(board, outbox, dir.path().to_owned());
        sampler.sample();
        health.frames_captured.fetch_add(10, std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let telemetry = sampler.sample();
        let fps = telemetry.cameras[0].fps_captured;
        assert!(fps > 10.0 && fps <= 50.0, "10 frames in ~0.2 s: {fps}");
        let json = serde_json::to_value(&telemetry).unwrap();
        assert!(json["disk"]["free_bytes"].as_u64().is_some(), "{json}");
        assert_eq!(json["outbox"]["depth"], 0);
    }
}
