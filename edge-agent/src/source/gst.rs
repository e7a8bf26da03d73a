//! RTSP cameras and video files through GStreamer (feature `gstreamer`): `uridecodebin` picks the
//! best decoder the box has (hardware where its plugin is installed, else FFmpeg or OpenH264) for
//! H.264 and H.265; an `appsink` keeping only the newest RGB picture hands them to the camera task.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use image::RgbImage;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::RtspUrl;
use super::video_tap::{ArrivingUnit, VideoTap};
use super::{scale, SourceError};
use crate::base::frame_pool::FramePool;
use crate::base::redact::redact_userinfo;

/// What a GStreamer source reads.
pub enum GstInput<'a> {
    Rtsp { url: &'a RtspUrl, stall_timeout: Duration },
    File { path: &'a Path, looping: bool },
}

/// What the camera task gets: at most `fps` pictures a second (all when None), at most
/// `max_width` pixels wide (0: the camera's size), scaled in the pipeline before the conversion to
/// RGB, so a 1080p or 4K camera is not converted at full size for a 416-pixel detector.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub fps: Option<f64>,
    pub max_width: u32,
}

/// A file that has not produced a picture for this long is broken, not slow.
const FILE_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A stream joined between two key frames waits this long at most for its first one (cameras
/// send one every 1 to 25 s); one that never marks a key frame is decoded as it comes after that.
const KEYFRAME_PATIENCE: Duration = Duration::from_secs(40);

/// The first key frame of a stream: nothing before it reaches the decoder, which would make
/// grey guesses of it (pictures that look like a covered lens to the tamper check).
#[derive(Debug)]
pub(super) struct FirstKeyframe {
    opened: std::time::Instant,
    seen: std::sync::atomic::AtomicBool,
    /// When the first key frame passed: the stall clock starts again from there.
    seen_at: Mutex<Option<std::time::Instant>>,
    units: std::sync::atomic::AtomicU64,
}

impl FirstKeyframe {
    pub(super) fn new() -> Self {
        Self { opened: std::time::Instant::now(), seen: false.into(), seen_at: Mutex::new(None), units: 0.into() }
    }

    /// Encoded pictures that came out of the parser so far.
    pub(super) fn units(&self) -> u64 {
        self.units.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether an arriving unit goes on to the decoder.
    fn pass(&self, keyframe: bool) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.units.fetch_add(1, Relaxed);
        if self.seen.load(Relaxed) {
            return true;
        }
        let open = keyframe || self.opened.elapsed() >= KEYFRAME_PATIENCE;
        if open {
            self.seen.store(true, Relaxed);
            if let Ok(mut at) = self.seen_at.lock() {
                *at = Some(std::time::Instant::now());
            }
        }
        open
    }

    /// No picture for `stall_timeout` is no stall while the stream's pictures arrive but wait for
    /// their first key frame, nor within `stall_timeout` after it came.
    fn excuses_silence(&self, stall_timeout: Duration) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.seen.load(Relaxed) {
            return self.units.load(Relaxed) > 0 && self.opened.elapsed() < KEYFRAME_PATIENCE;
        }
        self.seen_at.lock().ok().and_then(|at| *at).is_some_and(|at| at.elapsed() < stall_timeout)
    }
}

pub struct GstSource {
    camera: String,
    /// The URI with the password replaced by `***`, for messages.
    shown: String,
    pipeline: gst::Pipeline,
    pictures: mpsc::Receiver<RgbImage>,
    stall_timeout: Duration,
    /// Files: play again from the start at the end.
    looping: Option<bool>,
    decoder: Arc<Mutex<Option<String>>>,
    /// Buffers of pictures the stages are done with, filled again by the next picture.
    pool: Arc<FramePool>,
    first_keyframe: Arc<FirstKeyframe>,
}

/// GStreamer is initialised once per process; its error is kept for every later camera.
pub(super) fn init() -> Result<(), String> {
    static INIT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    INIT.get_or_init(|| gst::init().map_err(|e| format!("cannot start GStreamer: {e}"))).clone()
}

impl GstSource {
    /// Opens the pipeline; with a `tap`, every encoded picture the decoder gets is also kept there
    /// (the pre-roll of event clips).
    pub fn open(
        camera: &str,
        input: GstInput<'_>,
        output: Output,
        tap: Option<Arc<VideoTap>>,
    ) -> Result<Self, SourceError> {
        let Output { fps, max_width } = output;
        let open_error = |message: String| SourceError::Open { camera: camera.to_string(), message };
        init().map_err(open_error)?;
        let (uri, shown, credentials, stall_timeout, looping) = match &input {
            GstInput::Rtsp { url, stall_timeout } => {
                let credentials = url.credentials().map(|(u, p)| (u.to_string(), p.to_string()));
                (url.bare().to_string(), url.to_string(), credentials, *stall_timeout, None)
            }
            GstInput::File { path, looping } => {
                let absolute = std::fs::canonicalize(path)
                    .map_err(|e| open_error(format!("cannot open video file {}: {e}", path.display())))?;
                let uri = gst::glib::filename_to_uri(&absolute, None)
                    .map_err(|e| open_error(format!("cannot name video file {}: {e}", path.display())))?
                    .to_string();
                (uri.clone(), uri, None, FILE_STALL_TIMEOUT, Some(*looping))
            }
        };
        let build_error = |what: &str, e: &dyn std::fmt::Display| {
            open_error(format!(
                "cannot build the GStreamer pipeline for {shown} ({what}: {e}); is the plugin installed?"
            ))
        };
        let pipeline = gst::Pipeline::new();
        let source = gst::ElementFactory::make("uridecodebin")
            .property("uri", &uri)
            .build()
            .map_err(|e| build_error("uridecodebin", &e))?;
        let rate = gst::ElementFactory::make("videorate")
            .property("drop-only", true)
            .build()
            .map_err(|e| build_error("videorate", &e))?;
        // Scaled in the decoder's own format first: the conversion to RGB then has fewer pixels.
        let scale = gst::ElementFactory::make("videoscale").build().map_err(|e| build_error("videoscale", &e))?;
        let convert = gst::ElementFactory::make("videoconvert").build().map_err(|e| build_error("videoconvert", &e))?;
        // I420 (what FFmpeg's decoders give) passes through videoconvert and is turned into RGB
        // here (`rgb_picture_into`), several times faster; anything else videoconvert makes RGB.
        let mut caps = gst::Caps::builder("video/x-raw").field("format", gst::List::new(["I420", "RGB"]));
        if let Some(fps) = fps {
            // videorate drops pictures above this rate before they are converted.
            let per_second = fps.clamp(0.01, 1000.0);
            let fraction = gst::Fraction::approximate_f64(per_second).unwrap_or(gst::Fraction::new(1, 1));
            caps = caps.field("framerate", gst::FractionRange::new(gst::Fraction::new(0, 1), fraction));
        }
        let caps = caps.build();
        let sink = gst_app::AppSink::builder()
            .caps(&caps)
            .max_buffers(1)
            .drop(true)
            // A live camera is read as fast as it comes; a file plays at its own pace.
            .sync(looping.is_some())
            .build();
        pipeline
            .add_many([&source, &rate, &scale, &convert, sink.upcast_ref()])
            .map_err(|e| build_error("pipeline", &e))?;
        gst::Element::link_many([&rate, &scale, &convert, sink.upcast_ref()]).map_err(|e| build_error("link", &e))?;

        set_up_rtsp_source(&source, credentials, stall_timeout);
        // uridecodebin's video pad appears once the stream is known: link it then.
        let rate_sink = rate.static_pad("sink").ok_or_else(|| build_error("videorate", &"no sink pad"))?;
        let sized_sink = sink.clone();
        source.connect_pad_added(move |_, pad| {
            let pad_caps = pad.current_caps();
            let structure = pad_caps.as_ref().and_then(|caps| caps.structure(0));
            let is_video = structure.is_some_and(|s| s.name().starts_with("video/"));
            if is_video && !rate_sink.is_linked() {
                // Now the camera's size is known: ask for the scaled one.
                let size = structure.and_then(|s| Some((s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?)));
                if let Some((width, height)) = size {
                    let (width, height) = (u32::try_from(width).unwrap_or(0), u32::try_from(height).unwrap_or(0));
                    let (to_width, to_height) = super::scaled_size(width, height, max_width);
                    if (to_width, to_height) != (width, height) {
                        let sized_to = |(width, height): (u32, u32)| {
                            let mut sized = caps.clone();
                            if let Some(structure) = sized.make_mut().structure_mut(0) {
                                structure.set("width", i32::try_from(width).unwrap_or(i32::MAX));
                                structure.set("height", i32::try_from(height).unwrap_or(i32::MAX));
                            }
                            sized
                        };
                        let mut sized = sized_to((to_width, to_height));
                        // Two thirds (1080p to 720p): the decoder's I420 at its own size first,
                        // shrunk here (`rgb_picture_into`); anything else scaled by videoscale.
                        if scale::is_two_thirds((width, height), (to_width, to_height)) {
                            let mut whole = sized_to((width, height));
                            if let Some(structure) = whole.make_mut().structure_mut(0) {
                                structure.set("format", "I420");
                            }
                            whole.make_mut().append(sized);
                            sized = whole;
                        }
                        sized_sink.set_caps(Some(&sized));
                    }
                }
                if let Err(e) = pad.link(&rate_sink) {
                    tracing::warn!("GStreamer: cannot link the decoded video: {e:?}");
                }
            }
        });
        // The decoder uridecodebin chose, for health and the page.
        let decoder = Arc::new(Mutex::new(None));
        let chosen = decoder.clone();
        let first_keyframe = Arc::new(FirstKeyframe::new());
        let gate = first_keyframe.clone();
        if let Ok(bin) = source.clone().downcast::<gst::Bin>() {
            bin.connect_deep_element_added(move |_, _, element| {
                let Some(factory) = element.factory() else {
                    return;
                };
                let klass = factory.metadata("klass").unwrap_or_default();
                if klass.contains("Parser") && klass.contains("Video") {
                    watch_parser_output(element, tap.clone(), gate.clone());
                }
                if klass.contains("Decoder") && klass.contains("Video") {
                    tune_ffmpeg_decoder(element, FfmpegThreads::Default);
                    let hardware = klass.contains("Hardware");
                    let name = factory.name().to_string();
                    let kind = if hardware || is_hardware_decoder(&name) { "hardware" } else { "software" };
                    if let Ok(mut slot) = chosen.lock() {
                        *slot = Some(format!("{name} ({kind}, GStreamer)"));
                    }
                }
            });
        }

        let (sender, pictures) = mpsc::channel(2);
        let camera_name = camera.to_string();
        let pool = Arc::new(FramePool::default());
        let idle = pool.clone();
        let mut shrinking = Shrinking { max_width, ..Shrinking::default() };
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    match rgb_picture_into(&sample, &mut shrinking, |width, height| idle.idle(width, height)) {
                        Ok(picture) => {
                            // Full: the camera task is behind; the newest picture waits for it.
                            let _ = sender.try_send(picture);
                        }
                        Err(e) => tracing::warn!(camera = %camera_name, "GStreamer picture dropped: {e}"),
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        pipeline.set_state(gst::State::Playing).map_err(|_| open_error(format!("GStreamer cannot play {shown}")))?;
        let opened = Self {
            camera: camera.to_string(),
            shown,
            pipeline,
            pictures,
            stall_timeout,
            looping,
            decoder,
            pool,
            first_keyframe,
        };
        // An unreachable camera or a missing file fails here, not at the first picture.
        if let Some(error) = opened.bus_problem() {
            return Err(match error {
                SourceError::Lost { message, .. } => open_error(message),
                other => other,
            });
        }
        Ok(opened)
    }

    pub fn decoder(&self) -> Option<String> {
        self.decoder.lock().ok().and_then(|d| d.clone())
    }

    /// Remembers a picture given out as a frame, so that its buffer comes back once the stages are
    /// done with it.
    pub fn track(&self, frame: &Arc<RgbImage>) {
        self.pool.track(frame);
    }

    pub async fn next_image(&mut self) -> Result<RgbImage, SourceError> {
        let deadline = Instant::now() + self.stall_timeout;
        loop {
            if let Some(problem) = self.bus_problem() {
                return Err(problem);
            }
            match tokio::time::timeout(Duration::from_millis(200), self.pictures.recv()).await {
                Ok(Some(picture)) => return Ok(picture),
                Ok(None) => return Err(self.lost("the pipeline stopped".into())),
                Err(_) if Instant::now() >= deadline && !self.first_keyframe.excuses_silence(self.stall_timeout) => {
                    return Err(SourceError::Stalled {
                        camera: self.camera.clone(),
                        message: format!("no picture from {} for {} s", self.shown, self.stall_timeout.as_secs_f64()),
                    })
                }
                Err(_) => {}
            }
        }
    }

    fn lost(&self, message: String) -> SourceError {
        SourceError::Lost {
            camera: self.camera.clone(),
            message: redact_userinfo(&format!("{}: {message}", self.shown)),
        }
    }

    /// An error or the end of the stream, if the pipeline has reported one.
    fn bus_problem(&self) -> Option<SourceError> {
        let bus = self.pipeline.bus()?;
        // Every waiting message, not `timed_pop_filtered`: with a zero timeout that one missed EOS.
        while let Some(message) = bus.timed_pop(gst::ClockTime::ZERO) {
            match message.view() {
                gst::MessageView::Latency(_) => {
                    let _ = self.pipeline.recalculate_latency();
                }
                // A decoder's warning is a picture it could not decode (under its `max-errors`):
                // counted like the built-in path's decode errors, and the stream goes on.
                gst::MessageView::Warning(warning) => {
                    let from = warning.src().map(|s| s.name().to_string()).unwrap_or_default();
                    return Some(SourceError::Decode {
                        camera: self.camera.clone(),
                        what: format!("a frame from {}", self.shown),
                        message: redact_userinfo(&format!("{} (from {from})", warning.error())),
                    });
                }
                gst::MessageView::Error(error) => {
                    let from = error.src().map(|s| s.name().to_string()).unwrap_or_default();
                    return Some(self.lost(format!("{} (from {from})", error.error())));
                }
                gst::MessageView::Eos(_) => match self.looping {
                    Some(true) => {
                        if self.pipeline.seek_simple(gst::SeekFlags::FLUSH, gst::ClockTime::ZERO).is_err() {
                            return Some(self.lost("cannot go back to the start of the file".into()));
                        }
                    }
                    Some(false) => return Some(SourceError::Ended { camera: self.camera.clone() }),
                    None => return Some(self.lost("the server ended the stream".into())),
                },
                _ => {}
            }
        }
        None
    }
}

impl Drop for GstSource {
    fn drop(&mut self) {
        stop_off_the_workers(&self.pipeline);
    }
}

/// Stops a pipeline on a thread of its own: stopping waits for GStreamer's threads (an RTSP
/// teardown may wait for the camera), never on the async workers that also serve the page.
pub(super) fn stop_off_the_workers(pipeline: &gst::Pipeline) {
    let stopping_pipeline = pipeline.clone();
    let stopping = std::thread::Builder::new()
        .name("gst-stop".into())
        .spawn(move || stopping_pipeline.set_state(gst::State::Null).map(|_| ()));
    if stopping.is_err() {
        let _ = pipeline.set_state(gst::State::Null);
    }
}

/// Sets up the `rtspsrc` that `uridecodebin` makes for an RTSP URI, when it appears: TCP, the
/// stall time as its timeout, the password as a property (never in the URI, so GStreamer's own
/// messages cannot show it). Other sources are left as they are.
pub(super) fn set_up_rtsp_source(
    source: &gst::Element,
    credentials: Option<(String, String)>,
    stall_timeout: Duration,
) {
    let tcp_timeout_us = u64::try_from(stall_timeout.as_micros()).unwrap_or(u64::MAX);
    source.connect("source-setup", false, move |values| {
        if let Some(element) = values.get(1).and_then(|v| v.get::<gst::Element>().ok()) {
            // rtspsrc is made inside uridecodebin: set up when it appears. The password goes in
            // `user-pw`, never the URI, so GStreamer's own messages cannot show it.
            if let (Some((user, password)), true) = (&credentials, element.has_property("user-id")) {
                element.set_property("user-id", user);
                element.set_property("user-pw", password);
            }
            if element.has_property("protocols") {
                // TCP interleaved: no UDP ports to open through the site's firewall.
                element.set_property_from_str("protocols", "tcp");
                element.set_property("latency", 200u32);
                // A camera that stops answering is given up after the stall time, not 20 s.
                element.set_property("tcp-timeout", tcp_timeout_us);
            }
        }
        None
    });
}

/// Watches what a video parser (`h264parse`, `h265parse`) hands the decoder: copies it into the
/// tap, if any (its caps when they are set, each access unit as it passes: the compressed
/// picture, a few kilobytes, in GStreamer's streaming thread), and holds back what comes before
/// the stream's first key frame.
pub(super) fn watch_parser_output(
    parser: &gst::Element,
    tap: Option<Arc<VideoTap>>,
    first_keyframe: Arc<FirstKeyframe>,
) {
    let Some(pad) = parser.static_pad("src") else { return };
    pad.add_probe(gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        match &info.data {
            Some(gst::PadProbeData::Event(event)) => {
                if let (gst::EventView::Caps(caps), Some(tap)) = (event.view(), &tap) {
                    tap.set_format(&caps.caps().to_string());
                }
            }
            Some(gst::PadProbeData::Buffer(buffer)) => {
                let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
                if let (Some(tap), Ok(map)) = (&tap, buffer.map_readable()) {
                    let unit = ArrivingUnit {
                        pts_ns: buffer.pts().map(gst::ClockTime::nseconds),
                        dts_ns: buffer.dts().map(gst::ClockTime::nseconds),
                        duration_ns: buffer.duration().map(gst::ClockTime::nseconds),
                        keyframe,
                        data: map.as_slice().to_vec(),
                    };
                    tap.push(unit, chrono::Utc::now());
                }
                if !first_keyframe.pass(keyframe) {
                    return gst::PadProbeReturn::Drop;
                }
            }
            _ => {}
        }
        gst::PadProbeReturn::Ok
    });
}

/// Runs a `gst-launch-1.0` line to its end: how tests make their video files with GStreamer's own
/// encoders.
#[cfg(test)]
pub(crate) fn run_to_end(line: &str) {
    let pipeline = gst::parse::launch(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let done =
        bus.timed_pop_filtered(gst::ClockTime::from_seconds(60), &[gst::MessageType::Eos, gst::MessageType::Error]);
    assert!(matches!(done.as_ref().map(|m| m.type_()), Some(gst::MessageType::Eos)), "{line}: {done:?}");
    pipeline.set_state(gst::State::Null).unwrap();
}

/// How many threads an FFmpeg decoder may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfmpegThreads {
    /// FFmpeg's choice (one per core): a live camera's pictures come in time.
    Default,
    /// One: work in the background beside the cameras and inference (each of FFmpeg's frame
    /// threads also holds pictures of its own, about 20 MB more at 1080p).
    One,
}

/// Settings for GStreamer's FFmpeg decoders (`avdec_*`); other decoders are left as they are.
/// Pictures FFmpeg knows to be damaged are not passed on.
///
/// Direct rendering off: with it, FFmpeg keeps a reference to each output picture it will predict
/// from, so GStreamer's decoder base copies every picture into freshly allocated memory before
/// passing it on (at 1080p 3.1 MB and about 770 page faults a picture under `run`'s allocator
/// settings). Without it FFmpeg decodes into its own reused pictures and the one copy goes into a
/// pooled buffer: about 13 % less CPU for decoding and converting a 1080p camera
/// (bench/RESULTS.md, camera benchmark).
pub fn tune_ffmpeg_decoder(element: &gst::Element, threads: FfmpegThreads) {
    if !element.factory().is_some_and(|f| f.name().starts_with("avdec_")) {
        return;
    }
    if element.has_property("direct-rendering") {
        element.set_property("direct-rendering", false);
    }
    // A stream joined between two key frames (a camera that sends one every 25 s) decodes into
    // grey guesses until the next: not pictures of the scene (they looked like a covered lens).
    if element.has_property("output-corrupt") {
        element.set_property("output-corrupt", false);
    }
    if threads == FfmpegThreads::One && element.has_property("max-threads") {
        element.set_property("max-threads", 1i32);
    }
}

/// Decoder elements that run on the box's video hardware, by name (some do not say so in their
/// class).
fn is_hardware_decoder(name: &str) -> bool {
    ["nvv4l2", "v4l2", "va", "vaapi", "omx", "nvdec", "msdk", "qsv"].iter().any(|prefix| name.starts_with(prefix))
}

/// The RGB picture of a sample, rows copied out of GStreamer's (possibly padded) buffer.
pub(crate) fn rgb_picture(sample: &gst::Sample) -> Result<RgbImage, String> {
    rgb_picture_into(sample, &mut Shrinking::default(), |_, _| None)
}

/// The pictures' widest (0: as they come) and the working space for shrinking I420 pictures
/// by two thirds on their way to RGB ([`scale::two_thirds`]), kept from picture to picture.
#[derive(Default)]
struct Shrinking {
    max_width: u32,
    planes: [Vec<u8>; 3],
    row: Vec<u16>,
}

/// [`rgb_picture`], into a buffer `spare(width, height)` gives when it has one of that size; an
/// I420 picture two thirds of whose size is `shrinking.max_width` wide is shrunk to it first.
fn rgb_picture_into(
    sample: &gst::Sample,
    shrinking: &mut Shrinking,
    spare: impl FnOnce(u32, u32) -> Option<RgbImage>,
) -> Result<RgbImage, String> {
    let caps = sample.caps().ok_or("a picture without caps")?;
    let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| format!("unreadable caps: {e}"))?;
    let buffer = sample.buffer().ok_or("a sample without a buffer")?;
    if info.format() == gst_video::VideoFormat::I420 {
        return i420_to_rgb(buffer, &info, shrinking, spare);
    }
    let map = buffer.map_readable().map_err(|e| format!("cannot read the picture: {e}"))?;
    let (width, height) = (info.width(), info.height());
    let stride = usize::try_from(*info.stride().first().ok_or("no stride")?).map_err(|_| "negative stride")?;
    let row = width as usize * 3;
    let data = map.as_slice();
    if stride < row || data.len() < stride * (height as usize - 1) + row {
        return Err(format!("a {width}×{height} picture in {} bytes (stride {stride})", data.len()));
    }
    if let Some(mut picture) = spare(width, height) {
        for (y, out) in picture.chunks_exact_mut(row).enumerate() {
            out.copy_from_slice(&data[y * stride..y * stride + row]);
        }
        return Ok(picture);
    }
    let mut pixels = Vec::with_capacity(row * height as usize);
    for y in 0..height as usize {
        pixels.extend_from_slice(&data[y * stride..y * stride + row]);
    }
    RgbImage::from_raw(width, height, pixels).ok_or_else(|| "picture size mismatch".to_string())
}

/// An I420 picture as RGB, by the colour matrix and range its caps give (BT.709 for HD and
/// BT.601 for SD where the stream says nothing, as GStreamer assumes).
fn i420_to_rgb(
    buffer: &gst::BufferRef,
    info: &gst_video::VideoInfo,
    shrinking: &mut Shrinking,
    spare: impl FnOnce(u32, u32) -> Option<RgbImage>,
) -> Result<RgbImage, String> {
    use yuvutils_rs::{yuv420_to_rgb, YuvPlanarImage, YuvRange, YuvStandardMatrix};
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info)
        .map_err(|e| format!("cannot read the picture: {e}"))?;
    let (mut width, mut height) = (info.width(), info.height());
    let plane = |i: u32| frame.plane_data(i).map_err(|e| format!("cannot read plane {i} of the picture: {e}"));
    let stride = |i: usize| {
        info.stride().get(i).and_then(|s| u32::try_from(*s).ok()).ok_or_else(|| format!("no stride for plane {i}"))
    };
    let mut image = YuvPlanarImage {
        y_plane: plane(0)?,
        y_stride: stride(0)?,
        u_plane: plane(1)?,
        u_stride: stride(1)?,
        v_plane: plane(2)?,
        v_stride: stride(2)?,
        width,
        height,
    };
    let to = super::scaled_size(width, height, shrinking.max_width);
    if scale::is_two_thirds((width, height), to) {
        let Shrinking { planes: [y, u, v], row, .. } = shrinking;
        let (luma, chroma) = ((width as usize, height as usize), (width as usize / 2, height as usize / 2));
        scale::two_thirds(image.y_plane, image.y_stride as usize, luma, y, row)?;
        scale::two_thirds(image.u_plane, image.u_stride as usize, chroma, u, row)?;
        scale::two_thirds(image.v_plane, image.v_stride as usize, chroma, v, row)?;
        (width, height) = to;
        image = YuvPlanarImage {
            y_plane: y,
            y_stride: width,
            u_plane: u,
            u_stride: width / 2,
            v_plane: v,
            v_stride: width / 2,
            width,
            height,
        };
    }
    let colorimetry = info.colorimetry();
    let range = match colorimetry.range() {
        gst_video::VideoColorRange::Range0_255 => YuvRange::Full,
        _ => YuvRange::Limited,
    };
    let matrix = match colorimetry.matrix() {
        gst_video::VideoColorMatrix::Bt709 => YuvStandardMatrix::Bt709,
        gst_video::VideoColorMatrix::Bt2020 => YuvStandardMatrix::Bt2020,
        gst_video::VideoColorMatrix::Smpte240m => YuvStandardMatrix::Smpte240,
        _ => YuvStandardMatrix::Bt601,
    };
    let mut picture = spare(width, height).unwrap_or_else(|| RgbImage::new(width, height));
    yuv420_to_rgb(&image, &mut picture, width * 3, range, matrix)
        .map_err(|e| format!("a {width}×{height} I420 picture that cannot be converted: {e}"))?;
    Ok(picture)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL_SIZE: Output = Output { fps: None, max_width: 0 };

    /// One picture of `line` (ending in an appsink named `out`).
    fn one_sample(line: &str) -> gst::Sample {
        let pipeline = gst::parse::launch(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let pipeline = pipeline.downcast::<gst::Pipeline>().unwrap();
        let sink = pipeline.by_name("out").unwrap().downcast::<gst_app::AppSink>().unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        let sample = sink.pull_sample().unwrap();
        pipeline.set_state(gst::State::Null).unwrap();
        sample
    }

    /// The decoder's I420 pictures turned into RGB here are GStreamer's own RGB of them, within
    /// rounding, in SD (BT.601) and HD (BT.709) sizes and an odd one.
    #[test]
    fn i420_pictures_become_the_rgb_videoconvert_makes_of_them() {
        if init().is_err() {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "GStreamer is missing");
            return;
        }
        for (width, height) in [(640, 480), (1280, 720), (322, 242)] {
            let source = format!(
                "videotestsrc num-buffers=1 pattern=smpte ! video/x-raw,format=I420,width={width},height={height}"
            );
            let ours = rgb_picture(&one_sample(&format!("{source} ! appsink name=out"))).unwrap();
            let theirs = rgb_picture(&one_sample(&format!(
                "{source} ! videoconvert ! video/x-raw,format=RGB ! appsink name=out"
            )))
            .unwrap();
            assert_eq!(ours.dimensions(), (width, height));
            let differences: Vec<u32> =
                ours.as_raw().iter().zip(theirs.as_raw()).map(|(a, b)| u32::from(a.abs_diff(*b))).collect();
            let mean = differences.iter().sum::<u32>() as f64 / differences.len() as f64;
            // Chroma at the bars' edges is upsampled differently; the colours are the same.
            assert!(mean < 2.0, "{width}×{height}: mean difference {mean}");
            let far = differences.iter().filter(|d| **d > 24).count();
            assert!(
                far * 100 < differences.len(),
                "{width}×{height}: {far} of {} values differ by more than 24",
                differences.len()
            );
        }
    }

    /// A 1080p I420 picture with `max_width = 1280` is shrunk by two thirds on its way to RGB:
    /// the same picture as GStreamer's own videoscale makes of it (then made RGB the same way),
    /// within rounding.
    #[test]
    fn a_1080p_picture_shrunk_here_is_the_picture_videoscale_makes_of_it() {
        if init().is_err() {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "GStreamer is missing");
            return;
        }
        let source = "videotestsrc num-buffers=1 pattern=smpte ! video/x-raw,format=I420,width=1920,height=1080";
        let mut shrinking = Shrinking { max_width: 1280, ..Shrinking::default() };
        let ours = rgb_picture_into(&one_sample(&format!("{source} ! appsink name=out")), &mut shrinking, |_, _| None)
            .unwrap();
        let theirs = rgb_picture(&one_sample(&format!(
            "{source} ! videoscale ! video/x-raw,format=I420,width=1280,height=720 ! appsink name=out"
        )))
        .unwrap();
        assert_eq!(ours.dimensions(), (1280, 720));
        let differences: Vec<u32> =
            ours.as_raw().iter().zip(theirs.as_raw()).map(|(a, b)| u32::from(a.abs_diff(*b))).collect();
        let mean = differences.iter().sum::<u32>() as f64 / differences.len() as f64;
        // The bars' edges fall between pixels; both mix their neighbours, with other roundings.
        assert!(mean < 1.0, "mean difference {mean}");
        let far = differences.iter().filter(|d| **d > 24).count();
        assert!(far * 100 < differences.len(), "{far} of {} values differ by more than 24", differences.len());
        // Other sizes pass as they come: the pipeline has scaled them already.
        let mut shrinking = Shrinking { max_width: 1000, ..Shrinking::default() };
        let unscaled =
            rgb_picture_into(&one_sample(&format!("{source} ! appsink name=out")), &mut shrinking, |_, _| None)
                .unwrap();
        assert_eq!(unscaled.dimensions(), (1920, 1080));
    }

    #[test]
    fn hardware_decoders_are_named_by_their_elements() {
        assert!(is_hardware_decoder("nvv4l2decoder"));
        assert!(is_hardware_decoder("v4l2slh264dec"));
        assert!(is_hardware_decoder("vah265dec"));
        assert!(!is_hardware_decoder("avdec_h264"));
        assert!(!is_hardware_decoder("openh264dec"));
        assert!(!is_hardware_decoder("libde265dec"));
    }

    /// The first picture of a short H.264 file of SMPTE bars `width`×`height`, read through a
    /// source with `max_width`, and the source; None where x264enc is missing (a failure in CI).
    async fn first_picture_of_bars(width: u32, height: u32, max_width: u32) -> Option<(RgbImage, GstSource)> {
        if init().is_err() || gst::ElementFactory::find("x264enc").is_none() {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "GStreamer's x264enc is missing");
            eprintln!("skipped: GStreamer's x264enc is not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bars.mp4");
        run_to_end(&format!(
            "videotestsrc num-buffers=3 pattern=smpte ! video/x-raw,width={width},height={height},framerate=10/1 ! \
             x264enc speed-preset=ultrafast ! h264parse ! mp4mux ! filesink location={}",
            path.display()
        ));
        let scaled = Output { fps: None, max_width };
        let mut source = GstSource::open("bars", GstInput::File { path: &path, looping: false }, scaled, None).unwrap();
        let picture = source.next_image().await.unwrap();
        // Light grey bar on the left, blue on the right of the top row, as in the full picture.
        let (left, right) = (picture.get_pixel(10, 10), picture.get_pixel(picture.width() - 10, 10));
        assert!(left[0] > 150 && left[1] > 150 && left[2] > 150, "{left:?}");
        assert!(right[2] > 150 && right[0] < 100, "{right:?}");
        Some((picture, source))
    }

    /// A 640×480 H.264 file read with `max_width = 320`: the pipeline hands over 320×240 pictures
    /// of the same scene (the SMPTE bars in the same places).
    #[tokio::test]
    async fn pictures_are_scaled_in_the_pipeline_to_max_width() {
        let Some((picture, _)) = first_picture_of_bars(640, 480, 320).await else { return };
        assert_eq!(picture.dimensions(), (320, 240));
    }

    /// A 1080p H.264 camera read with `max_width = 1280`: the decoder's pictures reach the
    /// appsink at their own size (videoscale passes them through) and come out 1280×720, the
    /// bars in their places.
    #[tokio::test]
    async fn a_1080p_camera_is_shrunk_by_two_thirds_after_the_pipeline() {
        let Some((picture, source)) = first_picture_of_bars(1920, 1080, 1280).await else { return };
        assert_eq!(picture.dimensions(), (1280, 720));
        let appsink = source.pipeline.iterate_sinks().into_iter().flatten().next().unwrap();
        let negotiated = appsink.static_pad("sink").and_then(|pad| pad.current_caps()).unwrap();
        let structure = negotiated.structure(0).unwrap();
        assert_eq!(structure.get::<&str>("format").unwrap(), "I420", "{negotiated}");
        assert_eq!(structure.get::<i32>("width").unwrap(), 1920, "not scaled in the pipeline: {negotiated}");
    }

    /// A real pipeline: an H.265 file made by GStreamer's own encoder from a test pattern, read
    /// back through the source.
    #[tokio::test]
    async fn an_h265_file_is_read_through_gstreamer() {
        if init().is_err() || gst::ElementFactory::find("x265enc").is_none() {
            // CI installs gstreamer1.0-plugins-bad (scripts/test.sh): missing there is a failure.
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "GStreamer's x265enc is missing");
            eprintln!("skipped: GStreamer's x265enc is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pattern.mp4");
        let line = format!(
            "videotestsrc num-buffers=20 pattern=smpte ! video/x-raw,width=320,height=240,framerate=10/1 ! \
             x265enc ! h265parse ! mp4mux ! filesink location={}",
            path.display()
        );
        run_to_end(&line);

        let mut source =
            GstSource::open("pattern", GstInput::File { path: &path, looping: false }, FULL_SIZE, None).unwrap();
        let picture = source.next_image().await.unwrap();
        assert_eq!(picture.dimensions(), (320, 240));
        // The SMPTE bars start with light grey on the left, blue on the right of the top row.
        let left = picture.get_pixel(10, 10);
        assert!(left[0] > 150 && left[1] > 150 && left[2] > 150, "{left:?}");
        let decoder = source.decoder().unwrap_or_default();
        assert!(decoder.contains("265") || decoder.contains("avdec"), "{decoder}");
        let mut pictures = 1;
        loop {
            match source.next_image().await {
                Ok(_) => pictures += 1,
                Err(SourceError::Ended { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(pictures >= 10, "{pictures} of 20 pictures");
    }
}
