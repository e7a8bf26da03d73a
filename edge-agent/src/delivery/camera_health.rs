//! Each camera's health as the supervisors see it, retained on
//! `{prefix}/{device}/cameras/{camera}/health`: whether it delivers pictures, how fast, which
//! decoder makes them and the last error. Published when the state, decoder or error changes
//! (checked every few seconds), on every connect, and with each telemetry sample for the rates.
//! A box that dies leaves its cameras' last health as it was: its retained `status` (`offline`,
//! the last will) says that none of it is current.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::board::{CameraStatus, RecordStreamStatus};

/// Version of the camera health JSON; bump when a field changes meaning or goes away.
pub const CAMERA_HEALTH_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CameraHealthReport {
    pub schema_version: u32,
    pub device: String,
    pub camera: String,
    pub time: DateTime<Utc>,
    /// `online` (pictures arrive), `starting` (opened, no picture yet), `offline` (the source
    /// fails: see `last_error`) or `disabled` (switched off by config or command).
    pub state: &'static str,
    pub online: bool,
    /// Pictures judged per second over the last few seconds.
    pub fps: f64,
    /// The video decoder in use, where the camera sends video (`avdec_h265 (software, GStreamer)`).
    pub decoder: Option<String>,
    /// Passwords in camera URLs are replaced by `***`.
    pub last_error: Option<String>,
    pub frames_captured: u64,
    pub errors: u64,
    pub frame_width: u32,
    pub frame_height: u32,
    /// A camera that detects on a substream: its main stream, kept for clips (the fields above
    /// are the detect stream's); absent for a camera with one stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_stream: Option<RecordStreamStatus>,
}

impl CameraHealthReport {
    pub fn from_status(device: &str, camera: &CameraStatus) -> Self {
        let state = if !camera.enabled {
            "disabled"
        } else if camera.last_error.is_some() {
            // Cleared by the next good picture: a set error means the source is failing now.
            "offline"
        } else if camera.frames_captured == 0 {
            "starting"
        } else {
            "online"
        };
        Self {
            schema_version: CAMERA_HEALTH_SCHEMA_VERSION,
            device: device.to_string(),
            camera: camera.id.clone(),
            time: Utc::now(),
            state,
            online: state == "online",
            fps: (camera.fps * 100.0).round() / 100.0,
            decoder: camera.decoder.clone(),
            last_error: camera.last_error.clone(),
            frames_captured: camera.frames_captured,
            errors: camera.errors,
            frame_width: camera.frame_width,
            frame_height: camera.frame_height,
            record_stream: camera.record_stream.clone(),
        }
    }

    /// Whether a supervisor would see a difference (rates and counters aside).
    pub fn changed_from(&self, before: &Self) -> bool {
        let stream = |report: &Self| report.record_stream.as_ref().map(|r| (r.state, r.last_error.clone()));
        self.state != before.state
            || self.decoder != before.decoder
            || self.last_error != before.last_error
            || stream(self) != stream(before)
    }

    /// The topic suffix under `{prefix}/{device}/`.
    pub fn topic_suffix(&self) -> String {
        format!("cameras/{}/health", self.camera)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn camera() -> CameraStatus {
        CameraStatus {
            id: "gate".into(),
            enabled: true,
            frames_captured: 120,
            frames_inferred: 110,
            frames_dropped: 10,
            frames_still: 0,
            frames_by_region: 0,
            inference_plan: String::new(),
            errors: 0,
            last_error: None,
            decoder: Some("avdec_h264 (software, GStreamer)".into()),
            video_buffered_bytes: 0,
            last_frame_at: None,
            frame_width: 1920,
            frame_height: 1080,
            inference_ms: 40.0,
            fps: 9.876,
            record_stream: None,
        }
    }

    #[test]
    fn a_camera_is_online_offline_starting_or_disabled() {
        let online = CameraHealthReport::from_status("box-1", &camera());
        assert_eq!((online.state, online.online, online.fps), ("online", true, 9.88));
        let failing = CameraStatus { last_error: Some("camera gate: lost: rtsp://u:***@cam/".into()), ..camera() };
        let offline = CameraHealthReport::from_status("box-1", &failing);
        assert_eq!((offline.state, offline.online), ("offline", false));
        assert!(offline.changed_from(&online));
        let starting = CameraHealthReport::from_status("box-1", &CameraStatus { frames_captured: 0, ..camera() });
        assert_eq!(starting.state, "starting");
        let disabled = CameraHealthReport::from_status("box-1", &CameraStatus { enabled: false, ..failing });
        assert_eq!(disabled.state, "disabled");
        assert_eq!(online.topic_suffix(), "cameras/gate/health");
    }

    /// A camera detecting on its substream: its main stream failing alone is a change the
    /// supervisors see, though pictures still arrive.
    #[test]
    fn a_record_stream_that_fails_alone_is_reported_and_is_a_change() {
        let kept = RecordStreamStatus { state: "online", pictures_kept: 500, errors: 0, last_error: None };
        let both =
            CameraHealthReport::from_status("box-1", &CameraStatus { record_stream: Some(kept.clone()), ..camera() });
        let failing = RecordStreamStatus {
            state: "offline",
            last_error: Some("camera gate: lost: record stream rtsp://cam/main".into()),
            ..kept
        };
        let main_down =
            CameraHealthReport::from_status("box-1", &CameraStatus { record_stream: Some(failing), ..camera() });
        assert_eq!(main_down.state, "online", "the detect stream still delivers");
        assert!(main_down.changed_from(&both));
        let json = serde_json::to_value(&main_down).unwrap();
        assert_eq!(json["record_stream"]["state"], "offline");
        let one = serde_json::to_value(CameraHealthReport::from_status("box-1", &camera())).unwrap();
        assert!(one.get("record_stream").is_none(), "a camera with one stream reports as before");
    }

    #[test]
    fn rates_alone_are_not_a_change() {
        let before = CameraHealthReport::from_status("box-1", &camera());
        let after =
            CameraHealthReport::from_status("box-1", &CameraStatus { fps: 5.0, frames_captured: 500, ..camera() });
        assert!(!after.changed_from(&before));
    }
}
