//! The source stage: one long-lived task per camera that produces [`Frame`]s. Each camera hands its
//! newest frame to inference through a `watch` slot, so when inference is slower than capture the
//! older frame is replaced (newest frame wins) and never queued; the gap is counted as dropped.

pub mod config;
pub mod file;
#[cfg(feature = "gstreamer")]
pub mod gst;
pub mod h264;
pub mod motion;
pub mod record;
pub mod replay;
pub mod rtsp;
pub mod scale;
pub mod v4l2;
pub mod video_tap;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use image::RgbImage;
use tokio::sync::{watch, Notify};

use crate::base::backoff::Backoff;
use crate::base::liveness::{Heartbeat, Liveness};
use crate::base::shutdown::Shutdown;
use config::{CameraConfig, SourceConfig};
use motion::{Look, Motion, MotionDetector};
use video_tap::VideoTap;

/// One captured picture: the message from source to infer.
#[derive(Debug, Clone)]
pub struct Frame {
    pub camera: Arc<str>,
    /// Counts up per camera from 1; a gap seen by inference is a dropped frame.
    pub sequence: u64,
    pub captured_at: DateTime<Utc>,
    pub image: Arc<RgbImage>,
    /// The camera's recent encoded video (the pre-roll of event clips), when its source keeps it.
    pub video: Option<Arc<VideoTap>>,
    /// Where something moved, on a camera with motion on (None: infer the whole frame).
    pub motion: Option<Arc<Motion>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("camera {camera}: {message}")]
    Open { camera: String, message: String },
    #[error("camera {camera}: cannot decode {what}: {message}")]
    Decode { camera: String, what: String, message: String },
    #[error("camera {camera}: the source has ended")]
    Ended { camera: String },
    /// Was open, then failed: connection closed, device unplugged.
    #[error("camera {camera}: lost: {message}")]
    Lost { camera: String, message: String },
    /// Open but silent for too long (stall watchdog).
    #[error("camera {camera}: stalled: {message}")]
    Stalled { camera: String, message: String },
}

/// A camera's health, shared between its task, inference and the status page.
#[derive(Debug, Default)]
pub struct CameraHealth {
    pub frames_captured: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub frames_inferred: AtomicU64,
    /// Frames kept from inference because nothing had moved.
    pub frames_still: AtomicU64,
    /// Frames inferred on motion regions rather than whole (a part of `frames_inferred`).
    pub frames_by_region: AtomicU64,
    /// What inference looks at on this camera, in words (`CameraConfig::inference_plan`).
    pub inference_plan: String,
    pub errors: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// The video decoder making the pictures (`openh264 (software)`, `avdec_h265 (software,
    /// GStreamer)`, `nvv4l2decoder (hardware, GStreamer)`); None for pictures and USB cameras.
    pub decoder: Mutex<Option<String>>,
    /// Encoded video the camera keeps for event clips (its pre-roll), in bytes.
    pub video_buffered_bytes: AtomicU64,
    /// Set by `cameras[].enabled = false` or the `set` command: the task closes its source and
    /// waits until the camera is enabled again.
    pub disabled: std::sync::atomic::AtomicBool,
    /// A camera with a `detect_url`: its main stream, kept for clips (when clips are kept).
    pub record: Option<Arc<record::RecordStreamHealth>>,
}

impl CameraHealth {
    pub fn record_error(&self, error: &SourceError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error.to_string());
        }
    }

    pub fn clear_error(&self) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = None;
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }

    pub fn decoder(&self) -> Option<String> {
        self.decoder.lock().ok().and_then(|d| d.clone())
    }
}

/// What inference holds for one camera: its id, newest-frame slot and health.
pub struct CameraFeed {
    pub id: Arc<str>,
    pub frames: watch::Receiver<Option<Frame>>,
    pub health: Arc<CameraHealth>,
    /// Sequence of the last frame inference took, to count the ones it never saw.
    pub last_taken: u64,
}

impl CameraFeed {
    /// The newest frame if it has not been taken yet; frames replaced before being taken count as
    /// dropped.
    pub fn take_new(&mut self) -> Option<Frame> {
        if !self.frames.has_changed().unwrap_or(false) {
            return None;
        }
        let frame = self.frames.borrow_and_update().clone()?;
        let missed = frame.sequence.saturating_sub(self.last_taken + 1);
        if missed > 0 {
            self.health.frames_dropped.fetch_add(missed, Ordering::Relaxed);
        }
        self.last_taken = frame.sequence;
        Some(frame)
    }

    /// The newest frame, taken or not, without taking it (a model test for the installer).
    pub fn newest(&self) -> Option<Frame> {
        self.frames.borrow().clone()
    }
}

/// Encoded video a camera's tap holds at most, whatever its pre-roll: a camera that sends key
/// frames rarely or far more bytes than promised cannot take the box's memory.
pub const VIDEO_TAP_MAX_BYTES: usize = 24 << 20;

/// The tap reaches back this much further than the pre-roll: an event is judged a moment after
/// its frame was captured, and the clip starts from that frame's time.
const VIDEO_TAP_SLACK: Duration = Duration::from_secs(5);

/// The size a `width`×`height` picture is given: at most `max_width` wide (0: no limit), the same
/// shape, even sides (what YUV to RGB conversion wants).
pub fn scaled_size(width: u32, height: u32, max_width: u32) -> (u32, u32) {
    if max_width == 0 || width <= max_width || width == 0 {
        return (width, height);
    }
    let scaled_height = (f64::from(height) * f64::from(max_width) / f64::from(width)).round() as u32;
    (max_width & !1, (scaled_height & !1).max(2))
}

/// Starts one task per camera; returns the feeds inference reads and a `Notify` that fires on
/// every new frame of any camera. With a `video_pre_roll`, cameras whose source can (GStreamer)
/// keep that much of their encoded video for event clips.
pub fn start_cameras(
    cameras: &[CameraConfig],
    video_pre_roll: Option<Duration>,
    liveness: &Liveness,
    shutdown: &Shutdown,
) -> (Vec<CameraFeed>, Arc<Notify>) {
    let new_frame = Arc::new(Notify::new());
    let feeds = cameras
        .iter()
        .map(|camera| {
            let (sender, receiver) = watch::channel(None);
            let id: Arc<str> = Arc::from(camera.id.as_str());
            // The main stream of a camera with two is opened only to keep it for clips; a camera
            // with one keeps the stream its frames are decoded from.
            let record_only = camera.source.record_only_url().is_some();
            let tap = video_pre_roll.filter(|_| camera.source.may_feed_video_tap()).map(|keep| {
                let tap = VideoTap::new(keep + VIDEO_TAP_SLACK, VIDEO_TAP_MAX_BYTES);
                Arc::new(if record_only { tap } else { tap.with_frames_decoded_from_it() })
            });
            let record = tap.as_ref().filter(|_| record_only).map(|_| Arc::default());
            let health = Arc::new(CameraHealth {
                record: record.clone(),
                inference_plan: camera.inference_plan(),
                ..CameraHealth::default()
            });
            health.disabled.store(!camera.enabled, Ordering::Relaxed);
            #[cfg(feature = "gstreamer")]
            if let (Some(url), Some(tap), Some(stream)) = (camera.source.record_only_url(), &tap, &record) {
                let task = RecordTask {
                    camera: id.clone(),
                    url: url.clone(),
                    backoff_cap: camera.source.reopen_backoff_cap(),
                    tap: tap.clone(),
                    health: stream.clone(),
                    camera_health: health.clone(),
                };
                tokio::spawn(task.run(shutdown.clone()));
            }
            let task = CameraTask {
                tap,
                camera: camera.clone(),
                id: id.clone(),
                sender,
                health: health.clone(),
                new_frame: new_frame.clone(),
                heartbeat: liveness.register(format!("camera {}", camera.id)),
            };
            tokio::spawn(task.run(shutdown.clone()));
            CameraFeed { id, frames: receiver, health, last_taken: 0 }
        })
        .collect();
    (feeds, new_frame)
}

struct CameraTask {
    camera: CameraConfig,
    /// The camera's encoded video for clips; kept across reconnections.
    tap: Option<Arc<VideoTap>>,
    id: Arc<str>,
    sender: watch::Sender<Option<Frame>>,
    health: Arc<CameraHealth>,
    new_frame: Arc<Notify>,
    heartbeat: Arc<Heartbeat>,
}

/// An open source of any kind (also what `edge-agent check` grabs its test frame from).
pub enum OpenSource {
    Replay(replay::ReplaySource),
    File(file::VideoFileSource),
    Rtsp(Box<rtsp::RtspSource>),
    V4l2(v4l2::V4l2Source),
    #[cfg(feature = "gstreamer")]
    Gstreamer(Box<gst::GstSource>),
}

impl OpenSource {
    /// Opens the camera's source; a GStreamer source also fills `tap` with its encoded video.
    #[cfg_attr(not(feature = "gstreamer"), allow(unused_variables))]
    pub async fn open(camera: &CameraConfig, tap: Option<Arc<VideoTap>>) -> Result<Self, SourceError> {
        let id = camera.id.as_str();
        Ok(match &camera.source {
            SourceConfig::Replay { path, fps, looping } => {
                Self::Replay(replay::ReplaySource::open(id, path, *fps, *looping)?)
            }
            SourceConfig::File { path, fps, looping, .. } if path.is_dir() => {
                Self::Replay(replay::ReplaySource::open(id, path, fps.unwrap_or(2.0), *looping)?)
            }
            #[cfg(feature = "gstreamer")]
            SourceConfig::File { path, fps, looping, decoder, max_width }
                if decoder.resolved() == config::VideoDecoder::Gstreamer =>
            {
                let (camera, path, looping, fps, max_width) =
                    (id.to_string(), path.clone(), *looping, *fps, *max_width);
                let opened = off_the_workers(id, move || {
                    let input = gst::GstInput::File { path: &path, looping };
                    gst::GstSource::open(&camera, input, gst::Output { fps, max_width }, tap)
                });
                Self::Gstreamer(Box::new(opened.await?))
            }
            SourceConfig::File { path, fps, looping, .. } => {
                Self::File(file::VideoFileSource::open(id, path, *fps, *looping).await?)
            }
            #[cfg(feature = "gstreamer")]
            SourceConfig::Rtsp { url, detect_url, fps, stall_timeout_secs, decoder, max_width }
                if decoder.resolved() == config::VideoDecoder::Gstreamer =>
            {
                let stall_timeout = Duration::from_secs_f64(*stall_timeout_secs);
                // Two streams: the detect stream is decoded; the main one is kept by `RecordTask`.
                let (url, tap) = match detect_url {
                    Some(detect_url) => (detect_url, None),
                    None => (url, tap),
                };
                let (camera, url, fps, max_width) = (id.to_string(), url.clone(), *fps, *max_width);
                let opened = off_the_workers(id, move || {
                    let input = gst::GstInput::Rtsp { url: &url, stall_timeout };
                    gst::GstSource::open(&camera, input, gst::Output { fps, max_width }, tap)
                });
                Self::Gstreamer(Box::new(opened.await?))
            }
            SourceConfig::Rtsp { url, fps, stall_timeout_secs, .. } => Self::Rtsp(Box::new(
                rtsp::RtspSource::open(id, url, *fps, Duration::from_secs_f64(*stall_timeout_secs)).await?,
            )),
            SourceConfig::V4l2 { device, width, height, pixel_format, fps } => {
                let settings = v4l2::V4l2Settings {
                    device: device.clone(),
                    request: v4l2::FormatRequest { pixel_format: *pixel_format, size: width.zip(*height), fps: *fps },
                };
                Self::V4l2(v4l2::V4l2Source::open(id, &settings).await?)
            }
        })
    }

    pub async fn next_image(&mut self) -> Result<RgbImage, SourceError> {
        match self {
            Self::Replay(source) => source.next_image().await,
            Self::File(source) => source.next_image().await,
            Self::Rtsp(source) => source.next_image().await,
            Self::V4l2(source) => source.next_image().await,
            #[cfg(feature = "gstreamer")]
            Self::Gstreamer(source) => source.next_image().await,
        }
    }

    /// A picture given out as a frame: a GStreamer source fills its buffer again once the stages
    /// are done with it (`base::frame_pool`).
    #[cfg_attr(not(feature = "gstreamer"), allow(unused_variables))]
    pub fn track(&self, frame: &Arc<RgbImage>) {
        match self {
            #[cfg(feature = "gstreamer")]
            Self::Gstreamer(source) => source.track(frame),
            _ => {}
        }
    }

    /// Whether this source fills the camera's video tap (GStreamer sources do).
    pub fn feeds_tap(&self) -> bool {
        match self {
            #[cfg(feature = "gstreamer")]
            Self::Gstreamer(_) => true,
            _ => false,
        }
    }

    /// The decoder that makes the pictures, in words (`openh264`, or the GStreamer element).
    pub fn decoder(&self) -> Option<String> {
        match self {
            Self::File(_) | Self::Rtsp(_) => Some("openh264 (software)".into()),
            #[cfg(feature = "gstreamer")]
            Self::Gstreamer(source) => source.decoder(),
            Self::Replay(_) | Self::V4l2(_) => None,
        }
    }
}

/// Runs a source's blocking open (GStreamer's state changes wait for its threads) on tokio's
/// blocking pool, so a slow camera cannot hold up the async workers that serve the page.
#[cfg(feature = "gstreamer")]
async fn off_the_workers<T: Send + 'static>(
    camera: &str,
    open: impl FnOnce() -> Result<T, SourceError> + Send + 'static,
) -> Result<T, SourceError> {
    tokio::task::spawn_blocking(open).await.unwrap_or_else(|e| {
        Err(SourceError::Open { camera: camera.to_string(), message: format!("the opening task failed: {e}") })
    })
}

impl CameraTask {
    /// Waits out a backoff delay; a camera waiting to retry is not a hung camera.
    async fn back_off(&self, shutdown: &mut Shutdown, delay: Duration) -> bool {
        self.heartbeat.pause();
        let stopped = shutdown.sleep(delay).await;
        self.heartbeat.beat();
        stopped
    }

    /// Open, read until error, back off, reopen; until shutdown.
    async fn run(self, mut shutdown: Shutdown) {
        let cap = self.camera.source.reopen_backoff_cap();
        let mut backoff = Backoff::new(Duration::from_millis(500).min(cap), cap);
        let mut sequence = 0u64;
        let mut detector = self.camera.motion_settings().map(MotionDetector::new);
        loop {
            if self.wait_while_disabled(&mut shutdown).await {
                return;
            }
            let opened = tokio::select! {
                opened = OpenSource::open(&self.camera, self.tap.clone()) => opened,
                _ = shutdown.wait() => return,
            };
            let mut source = match opened {
                Ok(source) => source,
                Err(error) => {
                    tracing::error!(camera = %self.id, "{error}; retrying");
                    self.health.record_error(&error);
                    if self.back_off(&mut shutdown, backoff.next_delay()).await {
                        return;
                    }
                    continue;
                }
            };
            tracing::info!(camera = %self.id, "source open");
            // The built-in path knows its decoder now; GStreamer once the stream's caps are known.
            if let Ok(mut decoder) = self.health.decoder.lock() {
                *decoder = source.decoder();
            }
            loop {
                if self.health.disabled.load(Ordering::Relaxed) {
                    tracing::info!(camera = %self.id, "camera disabled; source closed");
                    break;
                }
                let next = tokio::select! {
                    next = source.next_image() => next,
                    _ = shutdown.wait() => return,
                };
                self.heartbeat.beat();
                match next {
                    Ok(image) => {
                        backoff.reset();
                        self.health.clear_error();
                        // Known once the stream's first picture is decoded.
                        if let Ok(mut decoder) = self.health.decoder.lock() {
                            if decoder.is_none() {
                                *decoder = source.decoder();
                                if let Some(name) = decoder.as_deref() {
                                    tracing::info!(camera = %self.id, "decoding with {name}");
                                }
                            }
                        }
                        self.health.frames_captured.fetch_add(1, Ordering::Relaxed);
                        let (image, motion) = match detector.take() {
                            None => (image, None),
                            Some(mut looking) => {
                                // A pass over every pixel: keep it off the async workers.
                                let looked = tokio::task::spawn_blocking(move || {
                                    let look = looking.look(&image, Instant::now());
                                    (looking, image, look)
                                })
                                .await;
                                let Ok((looking, image, look)) = looked else {
                                    tracing::error!(camera = %self.id, "motion check failed; motion off");
                                    continue;
                                };
                                detector = Some(looking);
                                match look {
                                    Look::Moved(motion) | Look::Due(motion) => (image, Some(Arc::new(motion))),
                                    Look::Still => {
                                        self.health.frames_still.fetch_add(1, Ordering::Relaxed);
                                        continue;
                                    }
                                }
                            }
                        };
                        sequence += 1;
                        if let Some(tap) = &self.tap {
                            self.health.video_buffered_bytes.store(tap.bytes() as u64, Ordering::Relaxed);
                        }
                        let image = Arc::new(image);
                        source.track(&image);
                        // A second stream feeds the tap: its clips only while it delivers.
                        let video = match &self.health.record {
                            Some(record) => self.tap.clone().filter(|_| record.is_online()),
                            None => self.tap.clone().filter(|_| source.feeds_tap()),
                        };
                        let frame =
                            Frame { camera: self.id.clone(), sequence, captured_at: Utc::now(), image, video, motion };
                        self.sender.send_replace(Some(frame));
                        self.new_frame.notify_one();
                    }
                    Err(SourceError::Ended { .. }) => {
                        tracing::info!(camera = %self.id, "source ended; no more frames");
                        self.heartbeat.retire();
                        shutdown.wait().await;
                        return;
                    }
                    Err(error @ SourceError::Decode { .. }) => {
                        // One bad picture is not a broken camera: count it and go on.
                        tracing::warn!(camera = %self.id, "{error}");
                        self.health.record_error(&error);
                    }
                    Err(error) => {
                        tracing::error!(camera = %self.id, "{error}; reopening");
                        self.health.record_error(&error);
                        drop(source);
                        if self.back_off(&mut shutdown, backoff.next_delay()).await {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    }
}

/// A camera's record stream (its main stream when it has a `detect_url`): open, keep in the tap
/// until it fails, back off, reopen; until shutdown. Closed while the camera is disabled.
#[cfg(feature = "gstreamer")]
struct RecordTask {
    camera: Arc<str>,
    url: config::RtspUrl,
    backoff_cap: Duration,
    tap: Arc<VideoTap>,
    health: Arc<record::RecordStreamHealth>,
    camera_health: Arc<CameraHealth>,
}

#[cfg(feature = "gstreamer")]
impl RecordTask {
    async fn run(self, mut shutdown: Shutdown) {
        let mut backoff = Backoff::new(Duration::from_millis(500).min(self.backoff_cap), self.backoff_cap);
        loop {
            while self.camera_health.disabled.load(Ordering::Relaxed) {
                self.health.online.store(false, Ordering::Relaxed);
                if shutdown.sleep(Duration::from_millis(250)).await {
                    return;
                }
            }
            let (camera, url, tap, stall) =
                (self.camera.to_string(), self.url.clone(), self.tap.clone(), self.backoff_cap);
            let opening = off_the_workers(&self.camera, move || record::RecordStream::open(&camera, &url, stall, tap));
            let opened = tokio::select! {
                opened = opening => opened,
                _ = shutdown.wait() => return,
            };
            let failed = match opened {
                Ok(mut stream) => {
                    tracing::info!(camera = %self.camera, "record stream open (kept for clips, not decoded)");
                    let failed = tokio::select! {
                        failed = stream.run(&self.health) => failed,
                        _ = shutdown.wait() => return,
                        _ = self.wait_until_disabled() => continue,
                    };
                    backoff.reset();
                    failed
                }
                Err(error) => error,
            };
            tracing::error!(camera = %self.camera, "{failed}; reopening the record stream");
            self.health.record_error(&failed);
            self.camera_health.video_buffered_bytes.store(self.tap.bytes() as u64, Ordering::Relaxed);
            if shutdown.sleep(backoff.next_delay()).await {
                return;
            }
        }
    }

    async fn wait_until_disabled(&self) {
        while !self.camera_health.disabled.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl CameraTask {
    /// Waits while the camera is disabled; returns true if shutdown came first.
    async fn wait_while_disabled(&self, shutdown: &mut Shutdown) -> bool {
        if !self.health.disabled.load(Ordering::Relaxed) {
            return false;
        }
        // Switched off on purpose: idle, not hung.
        self.heartbeat.pause();
        while self.health.disabled.load(Ordering::Relaxed) {
            if shutdown.sleep(Duration::from_millis(250)).await {
                return true;
            }
        }
        self.heartbeat.beat();
        tracing::info!(camera = %self.id, "camera enabled; opening source");
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_wider_than_max_width_keep_their_shape_with_even_sides() {
        assert_eq!(scaled_size(1920, 1080, 1280), (1280, 720));
        assert_eq!(scaled_size(3840, 2160, 1280), (1280, 720));
        assert_eq!(scaled_size(2560, 1440, 1000), (1000, 562));
        assert_eq!(scaled_size(768, 576, 1280), (768, 576), "never scaled up");
        assert_eq!(scaled_size(1920, 1080, 0), (1920, 1080), "0: the camera's size");
    }

    #[test]
    fn frames_replaced_before_inference_takes_them_count_as_dropped() {
        let (sender, receiver) = watch::channel(None);
        let health = Arc::new(CameraHealth::default());
        let mut feed = CameraFeed { id: "gate".into(), frames: receiver, health: health.clone(), last_taken: 0 };
        let frame = |sequence| Frame {
            camera: "gate".into(),
            sequence,
            captured_at: Utc::now(),
            image: Arc::new(RgbImage::new(1, 1)),
            video: None,
            motion: None,
        };
        assert!(feed.take_new().is_none());
        sender.send_replace(Some(frame(1)));
        assert_eq!(feed.take_new().map(|f| f.sequence), Some(1));
        assert!(feed.take_new().is_none(), "a frame is taken once");
        for sequence in 2..=5 {
            sender.send_replace(Some(frame(sequence)));
        }
        assert_eq!(feed.take_new().map(|f| f.sequence), Some(5), "newest frame wins");
        assert_eq!(health.frames_dropped.load(Ordering::Relaxed), 3);
    }
}
