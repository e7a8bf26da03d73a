//! The box itself: whether the state folder takes writes (a probe file created, synced and removed),
//! whether its disk has room for what the config lets the agent keep, and whether the clock is set
//! and synchronised (the kernel's NTP state, as telemetry reads it).

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, TimeZone, Utc};

use super::{ConfigName, Finding};
use crate::config::Config;
use crate::delivery::telemetry::ClockState;

const MIB: u64 = 1 << 20;

/// Creates the state folder if needed (the agent would), then a probe file in it: created, written,
/// fsynced and removed, as the outbox and evidence will.
/// The device's evidence key: its public key for the platform to enrol, and a key folder that
/// only the agent's user can read.
/// Whether event clips can be written here: which cameras keep video, and whether GStreamer has
/// the muxer, the parsers and (for masked cameras, whose clips are re-encoded) an H.264 encoder.
pub fn check_event_clips(config: &Config) -> Finding {
    const CHECK: &str = "event clips";
    if !(config.evidence.enabled && config.evidence.clips.enabled) {
        return Finding::skipped(CHECK, "off (`evidence.clips.enabled = false` or evidence off)");
    }
    let cameras: Vec<&str> =
        config.cameras.iter().filter(|c| c.source.may_feed_video_tap()).map(|c| c.id.as_str()).collect();
    if cameras.is_empty() {
        return Finding::skipped(
            CHECK,
            "no camera keeps video: clips need an RTSP or video-file camera read through GStreamer (the .deb's build)",
        );
    }
    let masked: Vec<&str> = cameras
        .iter()
        .copied()
        .filter(|id| {
            let scene = config.scenes.get(*id);
            let blur = scene.and_then(|s| s.blur_people).unwrap_or(config.privacy.blur_people);
            let privacy_zones =
                scene.is_some_and(|s| s.zones.iter().any(|z| z.role == crate::judge::config::ZoneRole::Privacy));
            blur || privacy_zones
        })
        .collect();
    #[cfg(feature = "gstreamer")]
    {
        let missing = crate::evidence::clip_mp4::missing_elements(!masked.is_empty());
        if !missing.is_empty() {
            return Finding::fail(
                CHECK,
                format!("GStreamer lacks {} for the clips of {}", missing.join(", "), cameras.join(", ")),
                "install gstreamer1.0-plugins-good (mp4mux), gstreamer1.0-plugins-bad (parsers) and \
                 gstreamer1.0-plugins-ugly (x264enc)",
            );
        }
    }
    let as_sent: Vec<&str> = cameras.iter().copied().filter(|id| !masked.contains(id)).collect();
    let say = |ids: &[&str]| if ids.is_empty() { "none".to_string() } else { ids.join(", ") };
    Finding::pass(
        CHECK,
        format!(
            "{} s before to {} s after each event (at most {} s); as the camera sends it: {}; re-encoded masked at {} px: {}",
            config.evidence.clips.pre_roll_secs,
            config.evidence.clips.post_roll_secs,
            config.evidence.clips.max_secs,
            say(&as_sent),
            config.evidence.clips.masked_width,
            say(&masked)
        ),
    )
}

pub fn check_evidence_key(config: &Config) -> Finding {
    const CHECK: &str = "evidence key";
    if !config.evidence.enabled {
        return Finding::pass(CHECK, "evidence is off (`evidence.enabled = false`): nothing is signed");
    }
    let dir = config.evidence.key_dir(&config.state_dir);
    let public = dir.join(crate::evidence::signing::PUBLIC_KEY_FILE);
    let Ok(text) = std::fs::read_to_string(&public) else {
        return Finding::pass(CHECK, format!("no key yet in {}: the agent makes it at its first start", dir.display()));
    };
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dir).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    let detail = format!("public key {} (enrol it on the platform), in {}", text.trim(), dir.display());
    if mode & 0o077 != 0 {
        return Finding::warn(
            CHECK,
            format!("{detail}; the folder is mode {mode:o}"),
            format!("chmod 700 {}", dir.display()),
        );
    }
    Finding::pass(CHECK, detail)
}

pub fn check_state_folder(dir: &Path, name: &ConfigName) -> Finding {
    const CHECK: &str = "state folder";
    let fix = || {
        format!(
            "set {} to a folder the agent's user can write, or make {} writable by that user \
             (e.g. `chown -R edge-agent {}`)",
            name.key("state_dir"),
            dir.display(),
            dir.display()
        )
    };
    let existed = dir.is_dir();
    if let Err(e) = std::fs::create_dir_all(dir) {
        let why = match dir.ancestors().find(|p| p.exists() && !p.is_dir()) {
            Some(file) => format!("{} is a file, not a folder", file.display()),
            None => e.to_string(),
        };
        return Finding::fail(CHECK, format!("cannot create state folder {}: {why}", dir.display()), fix());
    }
    if let Err(e) = probe(dir) {
        return Finding::fail(CHECK, format!("state folder {} is not writable: {e}", dir.display()), fix());
    }
    let mut detail = format!("{} is writable (probe file created, synced and removed)", dir.display());
    if !existed {
        detail.push_str("; the folder was created");
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        detail.push_str(
            "; checked as root, who may write where the agent's user cannot \
             (`sudo -u edge-agent edge-agent check` checks with its rights)",
        );
    }
    Finding::pass(CHECK, detail)
}

fn probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!(".edge-agent-check-{}", std::process::id()));
    let written = std::fs::File::create(&path).and_then(|mut file| {
        file.write_all(b"edge-agent check: probe file, removed at once\n")?;
        file.sync_all()
    });
    let removed = std::fs::remove_file(&path);
    written?;
    removed
}

/// Free space below which the check fails or warns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLimits {
    /// Below this the agent stops keeping evidence pictures (`evidence.min_free_mb`).
    pub fail_below: u64,
    /// What the config lets the agent fill: the outbox quota, the evidence budget and its reserve.
    pub warn_below: u64,
}

impl DiskLimits {
    pub fn from_config(config: &Config) -> Self {
        let outbox = config.outbox.quota_mb.saturating_mul(MIB);
        if config.evidence.enabled {
            let reserve = config.evidence.min_free_mb.saturating_mul(MIB);
            let evidence = config.evidence.max_disk_mb.saturating_mul(MIB);
            Self { fail_below: reserve, warn_below: outbox.saturating_add(evidence).saturating_add(reserve) }
        } else {
            Self { fail_below: 64 * MIB, warn_below: outbox }
        }
    }
}

pub fn check_disk(config: &Config, name: &ConfigName) -> Finding {
    let dir = &config.state_dir;
    match crate::base::disk::disk_space(dir) {
        Some(space) => judge_disk(dir, space.free_bytes, space.total_bytes, DiskLimits::from_config(config), name),
        None => Finding::warn(
            "disk",
            format!("cannot read the free space of the disk holding {} (statvfs)", dir.display()),
            format!("check that {} is on a mounted disk", name.key("state_dir")),
        ),
    }
}

pub fn judge_disk(dir: &Path, free: u64, total: u64, limits: DiskLimits, name: &ConfigName) -> Finding {
    let seen = format!("{} free of {} on the disk of {}", human_bytes(free), human_bytes(total), dir.display());
    if free < limits.fail_below {
        return Finding::fail(
            "disk",
            format!("{seen}: below {} the agent keeps no evidence pictures", human_bytes(limits.fail_below)),
            format!(
                "free space on that disk, or set {} to a folder on a bigger disk (the limit is `evidence.min_free_mb`)",
                name.key("state_dir")
            ),
        );
    }
    if free < limits.warn_below {
        return Finding::warn(
            "disk",
            format!("{seen}: the outbox quota and evidence budget may take up to {}", human_bytes(limits.warn_below)),
            format!(
                "free space, set {} to a bigger disk, or lower `outbox.quota_mb` / `evidence.max_disk_mb` there",
                name.key("state_dir")
            ),
        );
    }
    Finding::pass("disk", seen)
}

/// "1.5 GiB", "300 MiB".
pub fn human_bytes(bytes: u64) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.1} GiB")
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

/// A clock before this is unset (a board without a real-time clock boots in 1970 or at its image's date).
fn earliest_plausible() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).single().unwrap_or_default()
}

/// The time must be plausible (TLS certificates, event times); NTP synchronisation is a warning,
/// since a box that just booted may not have synchronised yet.
pub fn check_clock(now: DateTime<Utc>, state: &ClockState) -> Finding {
    const CHECK: &str = "clock";
    let ntp_fix = "enable NTP: `timedatectl set-ntp true` (systemd-timesyncd) or install chrony; \
                   event times and TLS certificate checks depend on the clock";
    let shown = now.format("%Y-%m-%d %H:%M:%S UTC");
    if now < earliest_plausible() {
        return Finding::fail(
            CHECK,
            format!("the clock says {shown}: TLS certificates will be refused and event times wrong"),
            format!("set the time, then {ntp_fix}"),
        );
    }
    let max_error = state.max_error_ms.map(|ms| format!(", max error {ms:.0} ms")).unwrap_or_default();
    match state.synchronized {
        Some(true) if state.max_error_ms.is_some_and(|ms| ms > 1000.0) => Finding::warn(
            CHECK,
            format!("{shown}, synchronised but loosely{max_error}"),
            "check the NTP servers the box uses (`timedatectl timesync-status` or `chronyc sources`)",
        ),
        Some(true) => Finding::pass(CHECK, format!("{shown}, synchronised by NTP{max_error}")),
        Some(false) => Finding::warn(
            CHECK,
            format!("{shown}, not synchronised by NTP (the kernel says unsynchronised{max_error})"),
            ntp_fix,
        ),
        None => Finding::warn(CHECK, format!("{shown}; cannot read the kernel's NTP state (adjtimex)"), ntp_fix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::check::Outcome;

    fn name() -> ConfigName {
        ConfigName::new(Some(Path::new("/etc/edge-agent/edge-agent.toml")))
    }

    #[test]
    fn event_clips_name_the_cameras_kept_as_sent_and_those_re_encoded_masked() {
        let dir = tempfile::tempdir().unwrap();
        let cameras = r#"
[[cameras]]
id = "road"
source = { kind = "rtsp", url = "rtsp://127.0.0.1:8554/road", decoder = "gstreamer" }

[[cameras]]
id = "gate"
source = { kind = "rtsp", url = "rtsp://127.0.0.1:8554/gate", decoder = "gstreamer" }

[scenes.road]
blur_people = false
"#;
        if !crate::source::config::VideoDecoder::GSTREAMER_BUILT {
            // A build without GStreamer refuses `decoder = "gstreamer"`: nothing keeps video.
            return;
        }
        let config = crate::judge::fixtures::test_config(dir.path(), cameras);
        let finding = check_event_clips(&config);
        assert_eq!(finding.outcome, Outcome::Pass, "{finding:?}");
        assert!(finding.detail.contains("as the camera sends it: road"), "{}", finding.detail);
        assert!(finding.detail.contains("re-encoded masked at 640 px: gate"), "{}", finding.detail);

        let off =
            crate::judge::fixtures::test_config(dir.path(), &format!("{cameras}\n[evidence.clips]\nenabled = false\n"));
        assert_eq!(check_event_clips(&off).outcome, Outcome::Skipped);
    }

    #[test]
    fn a_writable_state_folder_passes_and_is_left_clean() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let finding = check_state_folder(&state, &name());
        assert_eq!(finding.outcome, Outcome::Pass, "{finding:?}");
        assert!(finding.detail.contains("created"), "{finding:?}");
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0, "the probe file is removed");
    }

    /// Under a regular file no one can create a folder, root included.
    #[test]
    fn a_state_folder_that_cannot_exist_fails_naming_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, "x").unwrap();
        let finding = check_state_folder(&file.join("state"), &name());
        assert_eq!(finding.outcome, Outcome::Fail);
        assert!(finding.detail.contains("plain-file/state"), "{finding:?}");
        assert!(finding.detail.contains("plain-file is a file, not a folder"), "{finding:?}");
        let fix = finding.fix.unwrap();
        assert!(fix.contains("`state_dir` in /etc/edge-agent/edge-agent.toml"), "{fix}");
    }

    #[test]
    fn disk_limits_follow_the_outbox_and_evidence_settings() {
        let config = Config::from_toml_str(
            "[outbox]\nquota_mb = 100\n[evidence]\nmax_disk_mb = 200\nmin_free_mb = 50\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(DiskLimits::from_config(&config), DiskLimits { fail_below: 50 * MIB, warn_below: 350 * MIB });
        let without_evidence =
            Config::from_toml_str("[outbox]\nquota_mb = 100\n[evidence]\nenabled = false\n", Path::new("x.toml"))
                .unwrap();
        assert_eq!(DiskLimits::from_config(&without_evidence).warn_below, 100 * MIB);
    }

    #[test]
    fn free_space_is_judged_against_the_limits() {
        let limits = DiskLimits { fail_below: 512 * MIB, warn_below: 3584 * MIB };
        let dir = Path::new("/var/lib/edge-agent");
        let judge = |free| judge_disk(dir, free, 32 << 30, limits, &name());
        assert_eq!(judge(20 << 30).outcome, Outcome::Pass);
        let warned = judge(2 << 30);
        assert_eq!(warned.outcome, Outcome::Warn);
        assert!(warned.fix.unwrap().contains("outbox.quota_mb"));
        let failed = judge(100 * MIB);
        assert_eq!(failed.outcome, Outcome::Fail);
        assert!(failed.detail.contains("100 MiB free of 32.0 GiB on the disk of /var/lib/edge-agent"), "{failed:?}");
    }

    #[test]
    fn an_unset_clock_fails_and_an_unsynchronised_one_warns() {
        let synced = ClockState { synchronized: Some(true), max_error_ms: Some(12.0) };
        let now = Utc.with_ymd_and_hms(2025, 5, 1, 8, 0, 0).unwrap();
        assert_eq!(check_clock(now, &synced).outcome, Outcome::Pass);
        let boot = Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 42).unwrap();
        let failed = check_clock(boot, &synced);
        assert!(failed.outcome.is_fail() && failed.detail.contains("1970-01-01"), "{failed:?}");
        let unsynced = ClockState { synchronized: Some(false), max_error_ms: Some(16000.0) };
        let warned = check_clock(now, &unsynced);
        assert_eq!(warned.outcome, Outcome::Warn);
        assert!(warned.fix.unwrap().contains("timedatectl set-ntp true"));
        let unknown = ClockState { synchronized: None, max_error_ms: None };
        assert_eq!(check_clock(now, &unknown).outcome, Outcome::Warn);
    }
}
