//! What the user writes about cameras: `[[cameras]]` with an id, a source (replay, file, rtsp or
//! v4l2) and optional motion gating. Credentials in RTSP URLs are kept apart from the URL so that
//! every Debug, log line and page shows the URL with the password replaced by `***`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::base::redact::redact_userinfo;
use crate::base::section::{absolutise, is_valid_topic_level, Invalid};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    pub id: String,
    pub source: SourceConfig,
    /// Inference where something moved: on by default for live cameras (RTSP, USB), off for
    /// picture folders and video files; `motion = { enabled = false }` infers every frame whole.
    #[serde(default)]
    pub motion: Option<MotionConfig>,
    /// A disabled camera is not opened; the `set` command switches it at run time.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// Loops over the images of a folder (JPEG/PNG, sorted by name), like a camera would send them.
    Replay {
        path: PathBuf,
        #[serde(default = "default_replay_fps")]
        fps: f64,
        #[serde(default = "default_true")]
        looping: bool,
    },
    /// A video file (MP4 with H.264; with GStreamer also H.265 and whatever its plugins read), or
    /// a folder of pictures, played at the file's rate (2 pictures/s for a folder) unless `fps`
    /// is given.
    File {
        path: PathBuf,
        #[serde(default)]
        fps: Option<f64>,
        #[serde(default = "default_true")]
        looping: bool,
        #[serde(default)]
        decoder: VideoDecoder,
        /// GStreamer path: pictures wider than this are scaled down in the pipeline, before their
        /// conversion to RGB (0: the camera's full size).
        #[serde(default = "default_max_width")]
        max_width: u32,
    },
    /// An IP camera: RTSP over TCP (interleaved), H.264 video (with GStreamer also H.265). With a
    /// `detect_url` (the camera's substream, e.g. 640×360), that stream is decoded and judged and
    /// `url` (the main stream) is only kept, as it came, for event clips: never decoded.
    Rtsp {
        url: RtspUrl,
        /// The stream to detect on; `url` is then the record stream (GStreamer path only).
        #[serde(default)]
        detect_url: Option<RtspUrl>,
        /// Most pictures per second handed to inference; default: every decoded frame.
        #[serde(default)]
        fps: Option<f64>,
        /// No picture for this long → reconnect; also the cap of the reconnect backoff.
        #[serde(default = "default_stall_timeout_secs")]
        stall_timeout_secs: f64,
        #[serde(default)]
        decoder: VideoDecoder,
        /// GStreamer path: pictures wider than this are scaled down in the pipeline, before their
        /// conversion to RGB (0: the camera's full size).
        #[serde(default = "default_max_width")]
        max_width: u32,
    },
    /// A USB camera through Video4Linux2 (needs an agent built with the `v4l2` feature).
    V4l2 {
        /// `/dev/video0`, a `/dev/v4l/by-id/...` link (stable across replugging), or an index.
        device: V4l2Device,
        #[serde(default)]
        width: Option<u32>,
        #[serde(default)]
        height: Option<u32>,
        #[serde(default)]
        pixel_format: PixelFormat,
        #[serde(default)]
        fps: Option<u32>,
    },
}

/// Which video decoding path a file or RTSP camera takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoDecoder {
    /// GStreamer when this build has it (H.264 and H.265, hardware decoders), else OpenH264.
    #[default]
    Auto,
    /// GStreamer (an agent built with the `gstreamer` feature, as the .deb is).
    Gstreamer,
    /// The built-in path: retina + OpenH264, H.264 only, in software.
    Openh264,
}

impl VideoDecoder {
    /// Whether this build has the GStreamer path.
    pub const GSTREAMER_BUILT: bool = cfg!(feature = "gstreamer");

    /// What `auto` means in this build.
    pub fn resolved(self) -> Self {
        match self {
            Self::Auto if Self::GSTREAMER_BUILT => Self::Gstreamer,
            Self::Auto => Self::Openh264,
            other => other,
        }
    }
}

/// Frigate-style motion: a frame goes to inference only when its downscaled grey picture differs
/// enough from a slowly adapting background, and then (with `regions`) only where it differs,
/// plus the objects found lately; the whole frame every `max_still_secs` all the same.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MotionConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Grey-level change (1–255) for a pixel of the downscaled frame to count as changed.
    #[serde(default = "default_pixel_threshold")]
    pub pixel_threshold: u8,
    /// Share of the downscaled frame (0–1) that must change for the frame to go to inference.
    #[serde(default = "default_min_changed_area")]
    pub min_changed_area: f64,
    /// The whole frame is inferred at least this often even when nothing moves: still objects
    /// (litter, a bag left behind) are found, and their time to clear runs. Below the judge's
    /// `max_lost_secs` and `end_after_secs` (5 s), so an object that stays keeps its event.
    #[serde(default = "default_max_still_secs")]
    pub max_still_secs: f64,
    /// Infer on the regions where something moved (and around the objects found lately) rather
    /// than on the whole frame of a frame with motion.
    #[serde(default = "default_true")]
    pub regions: bool,
}

impl Default for MotionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            pixel_threshold: default_pixel_threshold(),
            min_changed_area: default_min_changed_area(),
            max_still_secs: default_max_still_secs(),
            regions: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// Compressed by the camera: least USB bandwidth, so the default.
    #[default]
    Mjpeg,
    /// Uncompressed 4:2:2.
    Yuyv,
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PixelFormat::Mjpeg => "MJPEG",
            PixelFormat::Yuyv => "YUYV",
        })
    }
}

/// Which V4L2 device: a path (possibly a by-id link) or the N of `/dev/videoN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V4l2Device {
    Path(PathBuf),
    Index(u32),
}

impl fmt::Display for V4l2Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            V4l2Device::Path(path) => write!(f, "{}", path.display()),
            V4l2Device::Index(index) => write!(f, "/dev/video{index}"),
        }
    }
}

impl<'de> Deserialize<'de> for V4l2Device {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DeviceVisitor;
        impl serde::de::Visitor<'_> for DeviceVisitor {
            type Value = V4l2Device;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a device path like \"/dev/video0\" or an index like 0")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<V4l2Device, E> {
                if value.is_empty() {
                    return Err(E::invalid_value(serde::de::Unexpected::Str(value), &self));
                }
                Ok(V4l2Device::Path(PathBuf::from(value)))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<V4l2Device, E> {
                u32::try_from(value)
                    .map(V4l2Device::Index)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(value), &self))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<V4l2Device, E> {
                u32::try_from(value)
                    .map(V4l2Device::Index)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(value), &self))
            }
        }
        deserializer.deserialize_any(DeviceVisitor)
    }
}

/// An RTSP URL with its credentials kept apart: `Display` and `Debug` never show the password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RtspUrl {
    /// Without user name and password.
    bare: url::Url,
    username: String,
    password: String,
}

impl RtspUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut url = url::Url::parse(text).map_err(|e| {
            format!("{:?} is not a URL ({e}); expected rtsp://[user:password@]host[:port]/path", redact_userinfo(text))
        })?;
        if url.scheme() != "rtsp" {
            return Err(format!(
                "{:?} has scheme {:?}; expected rtsp://[user:password@]host[:port]/path",
                redact_userinfo(text),
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{:?} names no host; expected rtsp://host[:port]/path", redact_userinfo(text)));
        }
        let decode =
            |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
        let username = decode(url.username()).unwrap_or_default();
        let password = url.password().and_then(decode).unwrap_or_default();
        // Setting empty credentials cannot fail on an rtsp:// URL with a host.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Ok(Self { bare: url, username, password })
    }

    /// The URL to connect to, without credentials.
    pub fn bare(&self) -> &url::Url {
        &self.bare
    }

    /// User name and password, if the URL had them.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        (!self.username.is_empty() || !self.password.is_empty()).then_some((&self.username, &self.password))
    }
}

impl TryFrom<String> for RtspUrl {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl fmt::Display for RtspUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bare = self.bare.as_str();
        match (self.credentials(), bare.split_once("://")) {
            (Some((user, _)), Some((scheme, rest))) => write!(f, "{scheme}://{user}:***@{rest}"),
            _ => f.write_str(bare),
        }
    }
}

impl fmt::Debug for RtspUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RtspUrl({self})")
    }
}

fn default_true() -> bool {
    true
}

fn default_replay_fps() -> f64 {
    2.0
}

fn default_stall_timeout_secs() -> f64 {
    10.0
}

fn default_pixel_threshold() -> u8 {
    25
}

fn default_min_changed_area() -> f64 {
    0.005
}

fn default_max_still_secs() -> f64 {
    4.0
}

/// The demo camera: a replay of the sample images shipped with the models.
pub fn default_cameras(data_dir: &Path) -> Vec<CameraConfig> {
    vec![CameraConfig {
        id: "demo".into(),
        source: SourceConfig::Replay {
            path: data_dir.join("models/samples"),
            fps: default_replay_fps(),
            looping: true,
        },
        motion: None,
        enabled: true,
    }]
}

impl SourceConfig {
    /// A camera with two streams: the URL of its record stream (main stream), kept for clips only.
    pub fn record_only_url(&self) -> Option<&RtspUrl> {
        match self {
            SourceConfig::Rtsp { url, detect_url: Some(_), .. } => Some(url),
            _ => None,
        }
    }

    /// Whether this source is read through GStreamer in this build, whose encoded video can be
    /// kept for event clips (RTSP and video files; not picture folders or USB cameras).
    pub fn may_feed_video_tap(&self) -> bool {
        match self {
            SourceConfig::Rtsp { decoder, .. } => decoder.resolved() == VideoDecoder::Gstreamer,
            SourceConfig::File { path, decoder, .. } => !path.is_dir() && decoder.resolved() == VideoDecoder::Gstreamer,
            SourceConfig::Replay { .. } | SourceConfig::V4l2 { .. } => false,
        }
    }

    /// Longest wait between two reopen attempts: short for an RTSP camera (it should be back within
    /// its stall timeout) and a USB camera (replugging), long for a missing file.
    pub fn reopen_backoff_cap(&self) -> Duration {
        match self {
            SourceConfig::Rtsp { stall_timeout_secs, .. } => Duration::from_secs_f64(*stall_timeout_secs),
            SourceConfig::V4l2 { .. } => Duration::from_secs(5),
            SourceConfig::Replay { .. } | SourceConfig::File { .. } => Duration::from_secs(30),
        }
    }
}

/// What the models, the page and the evidence pictures get from a 1080p or 4K camera by default:
/// enough for a 416-pixel detector and a readable evidence picture, 2.25 times fewer pixels than
/// 1080p to convert and carry through the stages. The clip keeps the camera's full picture.
pub const DEFAULT_MAX_WIDTH: u32 = 1280;

fn default_max_width() -> u32 {
    DEFAULT_MAX_WIDTH
}

fn check_max_width(key: &str, max_width: u32) -> Result<(), Invalid> {
    if max_width == 0 || ((160..=8192).contains(&max_width) && max_width % 2 == 0) {
        Ok(())
    } else {
        Err(Invalid::new(
            format!("{key}.source.max_width"),
            format!("is {max_width}; expected an even width from 160 to 8192 pixels, or 0 for the camera's full size"),
        ))
    }
}

fn check_fps(key: &str, fps: f64) -> Result<(), Invalid> {
    if fps > 0.0 && fps <= 120.0 {
        Ok(())
    } else {
        Err(Invalid::new(
            format!("{key}.source.fps"),
            format!("is {fps}; expected a rate above 0 and at most 120 frames/s"),
        ))
    }
}

impl CameraConfig {
    /// The motion settings in force: as configured, else on (defaults) for a live camera, where
    /// the periodic whole frame keeps every event of a still scene, and off for picture folders
    /// and video files (recorded material, played for calibration and tests).
    pub fn motion_settings(&self) -> Option<MotionConfig> {
        match (&self.motion, &self.source) {
            (Some(motion), _) => Some(motion.clone()).filter(|m| m.enabled),
            (None, SourceConfig::Rtsp { .. } | SourceConfig::V4l2 { .. }) => Some(MotionConfig::default()),
            (None, SourceConfig::Replay { .. } | SourceConfig::File { .. }) => None,
        }
    }

    /// What inference looks at on this camera, in the installer's words (`check`, the page).
    pub fn inference_plan(&self) -> String {
        match self.motion_settings() {
            None => "every frame, whole".into(),
            Some(motion) if motion.regions => format!(
                "where something moved (motion regions and the objects found lately), whole frame every {} s",
                motion.max_still_secs
            ),
            Some(motion) => format!("frames with motion, whole; whole frame every {} s", motion.max_still_secs),
        }
    }

    pub fn resolve_paths(&mut self, base: &Path) {
        match &mut self.source {
            SourceConfig::Replay { path, .. } | SourceConfig::File { path, .. } => absolutise(path, base),
            SourceConfig::Rtsp { .. } | SourceConfig::V4l2 { .. } => {}
        }
    }

    /// `key` is where this camera sits in the file, e.g. `cameras[0]`.
    pub fn validate(&self, key: &str) -> Result<(), Invalid> {
        if !is_valid_topic_level(&self.id) {
            return Err(Invalid::new(
                format!("{key}.id"),
                format!("is {:?}; expected a non-empty name without '/', '+', '#'", self.id),
            ));
        }
        match &self.source {
            SourceConfig::Replay { fps, .. } => check_fps(key, *fps)?,
            SourceConfig::File { fps, max_width, .. } | SourceConfig::Rtsp { fps, max_width, .. } => {
                if let Some(fps) = fps {
                    check_fps(key, *fps)?;
                }
                check_max_width(key, *max_width)?;
            }
            SourceConfig::V4l2 { width, height, fps, .. } => {
                if width.is_some() != height.is_some() {
                    return Err(Invalid::new(
                        format!("{key}.source.{}", if width.is_some() { "height" } else { "width" }),
                        "is missing; give both width and height, or neither for the camera's default",
                    ));
                }
                if let Some(size) = width.iter().chain(height.iter()).find(|&&s| s == 0 || s > 8192) {
                    return Err(Invalid::new(
                        format!("{key}.source.{}", if width == &Some(*size) { "width" } else { "height" }),
                        format!("is {size}; expected 1 to 8192 pixels"),
                    ));
                }
                if let Some(fps) = fps {
                    check_fps(key, f64::from(*fps))?;
                }
            }
        }
        if let SourceConfig::File { decoder, .. } | SourceConfig::Rtsp { decoder, .. } = &self.source {
            if *decoder == VideoDecoder::Gstreamer && !VideoDecoder::GSTREAMER_BUILT {
                return Err(Invalid::new(
                    format!("{key}.source.decoder"),
                    "is \"gstreamer\" but this agent was built without GStreamer; build with \
                     `--features gstreamer` (the .deb is), or use \"openh264\" (H.264 only)",
                ));
            }
        }
        if let SourceConfig::Rtsp { detect_url: Some(_), decoder, .. } = &self.source {
            if decoder.resolved() != VideoDecoder::Gstreamer {
                return Err(Invalid::new(
                    format!("{key}.source.detect_url"),
                    "needs the GStreamer path (the main stream is kept for clips without decoding only there); \
                     remove `decoder = \"openh264\"`, or detect on `url` alone",
                ));
            }
        }
        if let SourceConfig::Rtsp { stall_timeout_secs, .. } = &self.source {
            if !(*stall_timeout_secs >= 1.0 && *stall_timeout_secs <= 600.0) {
                return Err(Invalid::new(
                    format!("{key}.source.stall_timeout_secs"),
                    format!("is {stall_timeout_secs}; expected 1 to 600 seconds"),
                ));
            }
        }
        if let Some(motion) = &self.motion {
            motion.validate(&format!("{key}.motion"))?;
        }
        Ok(())
    }
}

impl MotionConfig {
    fn validate(&self, key: &str) -> Result<(), Invalid> {
        if self.pixel_threshold == 0 {
            return Err(Invalid::new(format!("{key}.pixel_threshold"), "is 0; expected 1 to 255 grey levels"));
        }
        if !(self.min_changed_area > 0.0 && self.min_changed_area <= 1.0) {
            return Err(Invalid::new(
                format!("{key}.min_changed_area"),
                format!("is {}; expected a share of the frame above 0 and at most 1", self.min_changed_area),
            ));
        }
        if !(self.max_still_secs > 0.0 && self.max_still_secs <= 86_400.0) {
            return Err(Invalid::new(
                format!("{key}.max_still_secs"),
                format!("is {}; expected above 0 and at most 86400 seconds", self.max_still_secs),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        let config = Config::from_toml_str(text, Path::new("site.toml")).map_err(|e| e.to_string())?;
        config.validate(Path::new("site.toml")).map_err(|e| e.to_string())?;
        Ok(config)
    }

    fn camera(source: &str) -> String {
        format!("[[cameras]]\nid = \"gate\"\nsource = {source}\n")
    }

    #[test]
    fn every_source_kind_parses_with_its_defaults() {
        let config = parse(&format!(
            "{}{}{}{}",
            camera(r#"{ kind = "file", path = "clip.mp4" }"#).replace("gate", "a"),
            camera(r#"{ kind = "rtsp", url = "rtsp://10.0.0.9:554/stream1" }"#).replace("gate", "b"),
            camera(r#"{ kind = "v4l2", device = "/dev/video0" }"#).replace("gate", "c"),
            camera(r#"{ kind = "v4l2", device = 2, width = 1280, height = 720, pixel_format = "yuyv", fps = 15 }"#)
                .replace("gate", "d"),
        ))
        .unwrap();
        assert!(matches!(&config.cameras[0].source, SourceConfig::File { fps: None, looping: true, .. }));
        let SourceConfig::Rtsp { url, detect_url: None, fps, stall_timeout_secs, decoder, max_width } =
            &config.cameras[1].source
        else {
            panic!()
        };
        assert_eq!((*decoder, *max_width), (VideoDecoder::Auto, DEFAULT_MAX_WIDTH));
        assert_eq!((url.to_string().as_str(), *fps, *stall_timeout_secs), ("rtsp://10.0.0.9:554/stream1", None, 10.0));
        assert!(matches!(
            &config.cameras[2].source,
            SourceConfig::V4l2 { device: V4l2Device::Path(_), pixel_format: PixelFormat::Mjpeg, width: None, .. }
        ));
        assert!(matches!(
            &config.cameras[3].source,
            SourceConfig::V4l2 { device: V4l2Device::Index(2), pixel_format: PixelFormat::Yuyv, fps: Some(15), .. }
        ));
        assert!(config.cameras.iter().all(|c| c.motion.is_none()));
        let inferred: Vec<bool> = config.cameras.iter().map(|c| c.motion_settings().is_some()).collect();
        assert_eq!(inferred, [false, true, true, true], "motion on by default for live cameras only");
    }

    #[test]
    fn rtsp_credentials_never_show_in_debug_display_or_errors() {
        let url = RtspUrl::parse("rtsp://admin:s3cr%40t@10.0.0.9:554/Streaming/101?transport=tcp").unwrap();
        assert_eq!(url.credentials(), Some(("admin", "s3cr@t")));
        assert_eq!(url.bare().as_str(), "rtsp://10.0.0.9:554/Streaming/101?transport=tcp");
        assert_eq!(url.to_string(), "rtsp://admin:***@10.0.0.9:554/Streaming/101?transport=tcp");
        let config =
            parse(&camera(r#"{ kind = "rtsp", url = "rtsp://admin:s3cret@10.0.0.9/live", fps = 5.0 }"#)).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret") && debug.contains("admin:***@10.0.0.9"), "{debug}");
        let err = parse(&camera(r#"{ kind = "rtsp", url = "http://admin:s3cret@10.0.0.9/live" }"#)).unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(err.contains("url") && err.contains("rtsp://"), "{err}");
    }

    #[test]
    fn bad_source_values_name_the_key() {
        let cases = [
            (r#"{ kind = "file", path = "x.mp4", fps = 0.0 }"#, "cameras[0].source.fps"),
            (
                r#"{ kind = "rtsp", url = "rtsp://h/x", stall_timeout_secs = 0.1 }"#,
                "cameras[0].source.stall_timeout_secs",
            ),
            (r#"{ kind = "v4l2", device = 0, width = 640 }"#, "cameras[0].source.height"),
            (r#"{ kind = "v4l2", device = 0, width = 0, height = 480 }"#, "cameras[0].source.width"),
        ];
        for (source, key) in cases {
            let err = parse(&camera(source)).unwrap_err();
            assert!(err.contains(key), "{source}: {err}");
        }
        let err = parse(&camera(r#"{ kind = "v4l2", device = 0, pixel_format = "h264" }"#)).unwrap_err();
        assert!(err.contains("pixel_format") || err.contains("mjpeg"), "{err}");
        let err = parse(&camera(r#"{ kind = "v4l2", device = -1 }"#)).unwrap_err();
        assert!(err.contains("/dev/video0"), "{err}");
        // An unknown kind is named by its key and the kinds there are, not quoted.
        let err = parse(&camera(r#"{ kind = "usb", device = 0 }"#)).unwrap_err();
        assert!(err.contains("kind") && err.contains("rtsp") && !err.contains("usb"), "{err}");
    }

    /// The acceptance config's shape: the main stream recorded, the substream detected on.
    #[test]
    fn a_camera_with_a_detect_stream_keeps_its_main_stream_for_clips_only() {
        if !VideoDecoder::GSTREAMER_BUILT {
            let err = parse(&camera(r#"{ kind = "rtsp", url = "rtsp://h/main", detect_url = "rtsp://h/sub" }"#));
            assert!(err.unwrap_err().contains("detect_url"));
            return;
        }
        let config = parse(&camera(
            r#"{ kind = "rtsp", url = "rtsp://10.0.0.9/main", detect_url = "rtsp://admin:pw@10.0.0.9/sub" }"#,
        ))
        .unwrap();
        let source = &config.cameras[0].source;
        assert_eq!(source.record_only_url().map(ToString::to_string).as_deref(), Some("rtsp://10.0.0.9/main"));
        let SourceConfig::Rtsp { detect_url: Some(detect), .. } = source else { panic!() };
        assert_eq!(detect.to_string(), "rtsp://admin:***@10.0.0.9/sub");
        let one = parse(&camera(r#"{ kind = "rtsp", url = "rtsp://10.0.0.9/main" }"#)).unwrap();
        assert!(one.cameras[0].source.record_only_url().is_none(), "one stream: detected and recorded");
        let err = parse(&camera(
            r#"{ kind = "rtsp", url = "rtsp://h/main", detect_url = "rtsp://h/sub", decoder = "openh264" }"#,
        ))
        .unwrap_err();
        assert!(err.contains("cameras[0].source.detect_url") && err.contains("GStreamer"), "{err}");
    }

    #[test]
    fn motion_gating_is_configured_per_camera_and_checked() {
        let config = parse(&format!(
            "{}motion = {{ pixel_threshold = 30 }}\n",
            camera(r#"{ kind = "replay", path = "frames" }"#)
        ))
        .unwrap();
        let motion = config.cameras[0].motion.clone().unwrap();
        assert_eq!(motion, MotionConfig { pixel_threshold: 30, ..MotionConfig::default() });
        let err = parse(&format!(
            "{}motion = {{ min_changed_area = 2.0 }}\n",
            camera(r#"{ kind = "replay", path = "frames" }"#)
        ))
        .unwrap_err();
        assert!(err.contains("cameras[0].motion.min_changed_area"), "{err}");
    }
}
