//! Cameras: each enabled camera is opened the way the agent opens it and its first frame is kept
//! as a JPEG, so the installer can look at the aim, focus and light; like every picture the agent
//! stores, with people blurred and privacy zones blacked out. A few undecodable frames on the way
//! are tolerated, as the running agent tolerates them.

use std::path::Path;
use std::time::{Duration, Instant};

use image::RgbImage;

use super::{frame_path, ConfigName, Finding};
use crate::config::{CameraConfig, Config, SourceConfig};
use crate::evidence::{draw, privacy};
use crate::infer::BoundingBox;
use crate::judge::PrivacyMask;
use crate::source::{OpenSource, SourceError};

/// Undecodable frames before a camera counts as broken.
const MAX_DECODE_ERRORS: usize = 10;

/// A camera's verdict and, when it delivered one, its frame (for the models to run on).
pub struct CameraOutcome {
    pub finding: Finding,
    pub frame: Option<GrabbedFrame>,
}

pub struct GrabbedFrame {
    pub camera: String,
    pub image: RgbImage,
    /// People the detectors found on it, to blur before it is saved; None until a detector ran.
    pub people: Option<Vec<BoundingBox>>,
}

/// Every camera at once: an RTSP camera that does not answer must not make the others wait.
pub async fn check_cameras(config: &Config, name: &ConfigName, timeout: Duration) -> Vec<CameraOutcome> {
    let checks = config.cameras.iter().enumerate().map(|(index, camera)| check_camera(index, camera, name, timeout));
    futures::future::join_all(checks).await
}

pub async fn check_camera(index: usize, camera: &CameraConfig, name: &ConfigName, timeout: Duration) -> CameraOutcome {
    let check = format!("camera {}", camera.id);
    let key = format!("cameras[{index}]");
    if !camera.enabled {
        let detail =
            format!("disabled: {} is false, so the agent does not open it", name.key(&format!("{key}.enabled")));
        return CameraOutcome { finding: Finding::skipped(check, detail), frame: None };
    }
    let source = describe_source(&camera.source);
    let fix = source_fix(&camera.source, &key, name);
    let started = Instant::now();
    let (image, decoder) = match tokio::time::timeout(timeout, grab_first_frame(camera)).await {
        Err(_) => {
            let detail = format!("no frame from {source} within {} s", timeout.as_secs_f64());
            return CameraOutcome { finding: Finding::fail(check, detail, fix), frame: None };
        }
        Ok(Err(error)) => {
            let detail = without_camera_prefix(&error.to_string(), &camera.id);
            return CameraOutcome { finding: Finding::fail(check, detail, fix), frame: None };
        }
        Ok(Ok(grabbed)) => grabbed,
    };
    let decoded_by = decoder.map(|d| format!(", decoded by {d}")).unwrap_or_default();
    let mut seen = format!(
        "{source}: frame {}×{} in {:.1} s{decoded_by}; inference: {}",
        image.width(),
        image.height(),
        started.elapsed().as_secs_f64(),
        camera.inference_plan()
    );
    let frame = GrabbedFrame { camera: camera.id.clone(), image, people: None };
    if let Some(url) = camera.source.record_only_url() {
        match record_stream(camera, url, timeout).await {
            Ok(format) => seen.push_str(&format!("; main stream {url}: {format}, kept for clips, not decoded")),
            Err(error) => {
                let detail = format!("{seen}; but the main stream {url}, kept for clips, gives nothing: {error}");
                let fix = source_fix(&camera.source, &key, name);
                return CameraOutcome { finding: Finding::warn(check, detail, fix), frame: Some(frame) };
            }
        }
    }
    CameraOutcome { finding: Finding::pass(check, seen), frame: Some(frame) }
}

/// Opens a camera's record stream as the agent does (parsed, not decoded) and waits for its
/// first picture; its codec and size.
#[cfg(feature = "gstreamer")]
async fn record_stream(
    camera: &CameraConfig,
    url: &crate::source::config::RtspUrl,
    timeout: Duration,
) -> Result<String, String> {
    use crate::source::record::{RecordStream, RecordStreamHealth};
    use crate::source::video_tap::VideoTap;
    let tap = std::sync::Arc::new(VideoTap::new(Duration::from_secs(1), 8 << 20));
    let (id, url, kept) = (camera.id.clone(), url.clone(), tap.clone());
    let opened = tokio::task::spawn_blocking(move || RecordStream::open(&id, &url, timeout, kept))
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = opened.map_err(|e| without_camera_prefix(&e.to_string(), &camera.id))?;
    let health = RecordStreamHealth::default();
    let first = async {
        loop {
            if let Some(unit) = tap.since(0).units.first() {
                return Ok(describe_format(&unit.format));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        format = first => format,
        failed = stream.run(&health) => Err(without_camera_prefix(&failed.to_string(), &camera.id)),
        _ = tokio::time::sleep(timeout) => Err(format!("no picture within {} s", timeout.as_secs_f64())),
    }
}

#[cfg(not(feature = "gstreamer"))]
async fn record_stream(_: &CameraConfig, _: &crate::source::config::RtspUrl, _: Duration) -> Result<String, String> {
    Err("this agent was built without GStreamer".into())
}

/// `H.265 1920×1080` from a stream's caps (`video/x-h265, …, width=(int)1920, height=(int)1080`).
fn describe_format(caps: &str) -> String {
    let codec = if caps.starts_with("video/x-h265") {
        "H.265"
    } else if caps.starts_with("video/x-h264") {
        "H.264"
    } else {
        "video"
    };
    let field = |name: &str| {
        caps.split(", ")
            .find_map(|f| f.strip_prefix(&format!("{name}=(int)")))
            .and_then(|v| v.trim_end_matches(';').parse::<u32>().ok())
    };
    match (field("width"), field("height")) {
        (Some(w), Some(h)) => format!("{codec} {w}×{h}"),
        _ => codec.to_string(),
    }
}

/// Saves the camera's frame for the installer with the privacy every stored picture gets: people
/// blurred (found by the detectors on this frame) and privacy zones blacked out. Without a
/// detector to find people on a camera that blurs them, the frame is not saved.
pub fn keep_frame(config: &Config, outcome: &mut CameraOutcome, frames_dir: &Path) {
    let Some(frame) = &outcome.frame else {
        return;
    };
    let finding = &mut outcome.finding;
    let scene = config.scene_of(&frame.camera);
    let people = match (&frame.people, scene.blur_people) {
        (Some(people), _) => people.as_slice(),
        (None, false) => &[],
        (None, true) => {
            finding.detail.push_str("; not saved: no detector ran on it to blur people (`privacy.blur_people`)");
            return;
        }
    };
    let mut picture = frame.image.clone();
    privacy::apply(&mut picture, &PrivacyMask::with_people(&scene, people.to_vec()));
    let path = frame_path(frames_dir, &frame.camera);
    match save_jpeg(&picture, &path) {
        Ok(()) => {
            finding.detail.push_str(&format!(", saved to {}", path.display()));
            match (scene.blur_people, people.len()) {
                (true, 0) => {}
                (true, 1) => finding.detail.push_str(" (1 person blurred)"),
                (true, n) => finding.detail.push_str(&format!(" ({n} people blurred)")),
                (false, _) => finding.detail.push_str(" (people not blurred: `blur_people` is off for this camera)"),
            }
        }
        Err(e) => {
            *finding = Finding::warn(
                finding.check.clone(),
                format!("{}, but it cannot be saved to {}: {e}", finding.detail, path.display()),
                "make the state folder writable (see `state folder`) to look at the frame",
            );
        }
    }
}

/// Opens the source and reads until a frame decodes.
/// The camera's first picture, and the decoder that made it (hardware or software, by name).
async fn grab_first_frame(camera: &CameraConfig) -> Result<(RgbImage, Option<String>), SourceError> {
    let mut source = OpenSource::open(camera, None).await?;
    let mut last_error = None;
    for _ in 0..MAX_DECODE_ERRORS {
        match source.next_image().await {
            Ok(image) => return Ok((image, source.decoder())),
            Err(error @ SourceError::Decode { .. }) => last_error = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last_error.unwrap_or(SourceError::Ended { camera: camera.id.clone() }))
}

fn save_jpeg(image: &RgbImage, path: &Path) -> Result<(), String> {
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder).map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
    }
    let jpeg = draw::encode_jpeg(image, 90).map_err(|e| e.to_string())?;
    std::fs::write(path, jpeg).map_err(|e| e.to_string())
}

/// The source in the installer's words; RTSP passwords are shown as `***`.
pub fn describe_source(source: &SourceConfig) -> String {
    match source {
        SourceConfig::Replay { path, .. } => format!("replay folder {}", path.display()),
        SourceConfig::File { path, .. } if path.is_dir() => format!("picture folder {}", path.display()),
        SourceConfig::File { path, .. } => format!("video file {}", path.display()),
        SourceConfig::Rtsp { url, detect_url: None, .. } => format!("RTSP {url}"),
        SourceConfig::Rtsp { detect_url: Some(detect), .. } => format!("RTSP {detect} (detect stream)"),
        SourceConfig::V4l2 { device, .. } => format!("V4L2 device {device}"),
    }
}

/// What to change for a camera that gave no frame, naming its key.
pub fn source_fix(source: &SourceConfig, key: &str, name: &ConfigName) -> String {
    match source {
        SourceConfig::Replay { .. } => {
            format!("set {} to a folder of .jpg/.png pictures", name.key(&format!("{key}.source.path")))
        }
        SourceConfig::File { .. } => {
            format!("set {} to an H.264 .mp4 file or a folder of pictures", name.key(&format!("{key}.source.path")))
        }
        SourceConfig::Rtsp { .. } => format!(
            "check {} (host, port, path, user and password) and that the camera is powered and reachable \
             from this box",
            name.key(&format!("{key}.source.url"))
        ),
        SourceConfig::V4l2 { .. } => format!(
            "check {} (`ls -l /dev/v4l/by-id/`), that the camera is plugged in, and that the agent's user \
             is in group `video`",
            name.key(&format!("{key}.source.device"))
        ),
    }
}

/// Source errors start with `camera <id>: `; the table's first column says that already.
fn without_camera_prefix(message: &str, camera: &str) -> String {
    message.strip_prefix(&format!("camera {camera}: ")).unwrap_or(message).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::check::Outcome;

    #[test]
    fn a_stream_format_is_named_by_codec_and_size() {
        let caps = "video/x-h265, stream-format=(string)hvc1, alignment=(string)au, width=(int)1920, height=(int)1080, parsed=(boolean)true";
        assert_eq!(describe_format(caps), "H.265 1920×1080");
        assert_eq!(describe_format("video/x-h264, parsed=(boolean)true"), "H.264");
    }

    fn camera(source: &str) -> CameraConfig {
        let text = format!("[[cameras]]\nid = \"gate\"\nsource = {source}\n");
        Config::from_toml_str(&text, Path::new("site.toml")).unwrap().cameras.remove(0)
    }

    fn samples() -> String {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/samples").display().to_string()
    }

    fn name() -> ConfigName {
        ConfigName::new(Some(Path::new("site.toml")))
    }

    #[tokio::test]
    async fn a_replay_camera_gives_a_frame_that_is_saved() {
        let dir = tempfile::tempdir().unwrap();
        let camera = camera(&format!("{{ kind = \"replay\", path = \"{}\" }}", samples()));
        let mut outcome = check_camera(0, &camera, &name(), Duration::from_secs(10)).await;
        assert_eq!(outcome.finding.outcome, Outcome::Pass, "{:?}", outcome.finding);
        if let Some(frame) = &mut outcome.frame {
            frame.people = Some(Vec::new());
        }
        keep_frame(&Config::embedded_defaults(), &mut outcome, dir.path());
        let saved = dir.path().join("gate.jpg");
        assert!(outcome.finding.detail.contains(&saved.display().to_string()), "{:?}", outcome.finding);
        let picture = image::open(&saved).unwrap();
        // coffee.png comes first in name order.
        assert_eq!((picture.width(), picture.height()), (600, 400));
        assert_eq!(outcome.frame.map(|f| f.camera), Some("gate".to_string()));
    }

    #[test]
    fn a_saved_frame_has_people_blurred_and_privacy_zones_black() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_toml_str(
            "[[cameras]]\nid = \"gate\"\nsource = { kind = \"replay\", path = \"x\" }\n\
             [[scenes.gate.zones]]\nid = \"neighbour\"\nrole = \"privacy\"\n\
             polygon = [[0.0, 0.0], [0.25, 0.0], [0.25, 0.25], [0.0, 0.25]]\n",
            Path::new("site.toml"),
        )
        .unwrap();
        // Stripes: blurring a box smooths them away.
        let image = RgbImage::from_fn(200, 200, |x, _| image::Rgb([if x % 2 == 0 { 255 } else { 0 }; 3]));
        let person = BoundingBox { x1: 100.0, y1: 100.0, x2: 180.0, y2: 180.0 };
        let frame = GrabbedFrame { camera: "gate".into(), image, people: Some(vec![person]) };
        let mut outcome = CameraOutcome { finding: Finding::pass("camera gate", "frame"), frame: Some(frame) };
        keep_frame(&config, &mut outcome, dir.path());
        assert!(outcome.finding.detail.contains("(1 person blurred)"), "{:?}", outcome.finding);
        let saved = image::open(dir.path().join("gate.jpg")).unwrap().to_rgb8();
        assert!(saved.get_pixel(20, 20).0.iter().all(|c| *c < 20), "privacy zone black");
        let (a, b) = (saved.get_pixel(140, 140).0[0], saved.get_pixel(141, 140).0[0]);
        assert!(a.abs_diff(b) < 60, "stripes blurred inside the person: {a} {b}");
        let (a, b) = (saved.get_pixel(60, 140).0[0], saved.get_pixel(61, 140).0[0]);
        assert!(a.abs_diff(b) > 150, "stripes kept elsewhere: {a} {b}");
    }

    #[test]
    fn a_frame_no_detector_looked_at_is_not_saved_when_people_must_be_blurred() {
        let dir = tempfile::tempdir().unwrap();
        let frame = GrabbedFrame { camera: "gate".into(), image: RgbImage::new(8, 8), people: None };
        let mut outcome = CameraOutcome { finding: Finding::pass("camera gate", "frame"), frame: Some(frame) };
        keep_frame(&Config::embedded_defaults(), &mut outcome, dir.path());
        let detail = &outcome.finding.detail;
        assert!(detail.contains("not saved") && detail.contains("privacy.blur_people"), "{detail}");
        assert!(!dir.path().join("gate.jpg").exists());
    }

    #[tokio::test]
    async fn a_missing_folder_fails_naming_it_and_the_key() {
        let camera = camera("{ kind = \"replay\", path = \"/nonexistent/frames\" }");
        let outcome = check_camera(3, &camera, &name(), Duration::from_secs(5)).await;
        assert!(outcome.frame.is_none());
        let finding = outcome.finding;
        assert_eq!(finding.outcome, Outcome::Fail);
        assert!(finding.detail.starts_with("cannot read replay folder /nonexistent/frames"), "{finding:?}");
        assert!(finding.fix.unwrap().contains("`cameras[3].source.path` in site.toml"));
    }

    #[tokio::test]
    async fn a_camera_that_never_answers_fails_after_the_timeout() {
        // A listener that accepts and then says nothing: an RTSP camera that hangs.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let camera = camera(&format!("{{ kind = \"rtsp\", url = \"rtsp://user:pw-secret@127.0.0.1:{port}/s\" }}"));
        let started = Instant::now();
        let outcome = check_camera(0, &camera, &name(), Duration::from_secs(1)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        let finding = outcome.finding;
        assert_eq!(finding.outcome, Outcome::Fail, "{finding:?}");
        assert!(finding.detail.contains("within 1 s") && finding.detail.contains("user:***@"), "{finding:?}");
        assert!(!finding.detail.contains("pw-secret"));
        assert!(finding.fix.unwrap().contains("`cameras[0].source.url`"));
        drop(listener);
    }

    #[tokio::test]
    async fn a_disabled_camera_is_skipped() {
        let mut camera = camera("{ kind = \"replay\", path = \"/nonexistent\" }");
        camera.enabled = false;
        let outcome = check_camera(0, &camera, &name(), Duration::from_secs(1)).await;
        assert_eq!(outcome.finding.outcome, Outcome::Skipped);
        assert!(outcome.finding.detail.contains("`cameras[0].enabled` in site.toml"));
    }
}
