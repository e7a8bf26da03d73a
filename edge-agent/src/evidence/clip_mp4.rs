//! Writes a camera's encoded pictures, as they came (no re-encode), into a fragmented MP4 through
//! GStreamer (`appsrc ! h264parse|h265parse ! mp4mux fragment-duration=… ! filesink`). Fragmented:
//! the header goes first and each second of video follows as its own fragment, so a clip cut short
//! by a crash or a power cut is still a playable file up to its last whole fragment.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::clips::{ClipSink, Reencoded, StopDeadline, REENCODE_GRACE};
use crate::source::video_tap::EncodedUnit;

/// Each fragment holds this much video: what a crash can cost at the end of a clip.
const FRAGMENT_MS: u32 = 1000;

pub struct Mp4ClipWriter {
    pipeline: gst::Pipeline,
    source: gst_app::AppSrc,
    /// Subtracted from every timestamp: the clip starts at zero.
    base_ns: Option<u64>,
}

impl Mp4ClipWriter {
    /// Starts writing `path` for a stream of `format` (GStreamer caps of H.264 or H.265).
    pub fn create(path: &Path, format: &str) -> Result<Self, String> {
        gst::init().map_err(|e| format!("cannot start GStreamer: {e}"))?;
        let caps = gst::Caps::from_str(format).map_err(|e| format!("unreadable stream format {format:?}: {e}"))?;
        let codec = caps.structure(0).map(|s| s.name().to_string()).unwrap_or_default();
        let parser_name = match codec.as_str() {
            "video/x-h264" => "h264parse",
            "video/x-h265" => "h265parse",
            other => return Err(format!("clips are written for H.264 and H.265; this camera sends {other:?}")),
        };
        let make =
            |name: &str| gst::ElementFactory::make(name).build().map_err(|e| format!("GStreamer has no {name}: {e}"));
        let source = gst_app::AppSrc::builder()
            .caps(&caps)
            .format(gst::Format::Time)
            .is_live(false)
            // Never block the evidence stage: the clip is a few megabytes at most.
            .block(false)
            .max_bytes(64 << 20)
            .build();
        let parser = make(parser_name)?;
        let muxer = make("mp4mux")?;
        muxer.set_property("fragment-duration", FRAGMENT_MS);
        // Nothing is rewritten at the end: the file is valid as it grows.
        muxer.set_property("streamable", true);
        let sink = make("filesink")?;
        sink.set_property("location", path.to_string_lossy().to_string());
        sink.set_property("async", false);
        // Each fragment goes to the file as it is made, not into a 64 KiB stdio buffer: a crash
        // keeps what was written (the page cache reaches the card within the kernel's writeback).
        sink.set_property_from_str("buffer-mode", "unbuffered");
        let pipeline = gst::Pipeline::new();
        pipeline
            .add_many([source.upcast_ref(), &parser, &muxer, &sink])
            .map_err(|e| format!("cannot build the clip pipeline: {e}"))?;
        gst::Element::link_many([source.upcast_ref(), &parser, &muxer, &sink])
            .map_err(|e| format!("cannot link the clip pipeline: {e}"))?;
        pipeline.set_state(gst::State::Playing).map_err(|e| format!("cannot start writing {}: {e}", path.display()))?;
        Ok(Self { pipeline, source, base_ns: None })
    }

    /// The first error the pipeline reported, if any.
    fn problem(&self) -> Option<String> {
        let bus = self.pipeline.bus()?;
        while let Some(message) = bus.timed_pop(gst::ClockTime::ZERO) {
            if let gst::MessageView::Error(error) = message.view() {
                return Some(error.error().to_string());
            }
        }
        None
    }
}

impl ClipSink for Mp4ClipWriter {
    fn write(&mut self, unit: &EncodedUnit) -> Result<(), String> {
        let Some(decode_ns) = unit.dts_ns.or(unit.pts_ns) else {
            return Err("a picture without a timestamp".into());
        };
        let base = *self.base_ns.get_or_insert(decode_ns);
        let mut buffer = gst::Buffer::from_mut_slice(unit.data.clone());
        {
            let buffer = buffer.get_mut().ok_or("a shared buffer")?;
            buffer.set_pts(unit.pts_ns.map(|p| gst::ClockTime::from_nseconds(p.saturating_sub(base))));
            buffer.set_dts(unit.dts_ns.map(|d| gst::ClockTime::from_nseconds(d.saturating_sub(base))));
            buffer.set_duration(unit.duration_ns.map(gst::ClockTime::from_nseconds));
            if !unit.keyframe {
                buffer.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        if let Some(problem) = self.problem() {
            return Err(problem);
        }
        self.source.push_buffer(buffer).map(|_| ()).map_err(|e| format!("the clip writer stopped: {e:?}"))
    }

    fn finish(self: Box<Self>, by: Instant) -> Result<(), String> {
        let _ = self.source.end_of_stream();
        let outcome = match wait_for_end(&self.pipeline, by) {
            Ok(()) => Ok(()),
            Err(e) => Err(format!("writing the clip: {e}")),
        };
        let _ = self.pipeline.set_state(gst::State::Null);
        outcome
    }
}

impl Drop for Mp4ClipWriter {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Waits until `by` at most for a pipeline's end of stream; an error or the time running out is
/// the error. The caller then sets it to NULL (what was written stays: fragments are whole).
fn wait_for_end(pipeline: &gst::Pipeline, by: Instant) -> Result<(), String> {
    let bus = pipeline.bus().ok_or("the pipeline has no bus")?;
    let left = by.saturating_duration_since(Instant::now());
    let wait = gst::ClockTime::from_nseconds(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX));
    match bus.timed_pop_filtered(wait, &[gst::MessageType::Eos, gst::MessageType::Error]) {
        Some(message) => match message.view() {
            gst::MessageView::Error(error) => Err(format!("{} (from {})", error.error(), source_name(&message))),
            _ => Ok(()),
        },
        None => Err(format!("the file did not end within {:.1} s; cut there", left.as_secs_f64())),
    }
}

/// The first error a pipeline has posted, if any (without waiting).
fn pipeline_error(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    let message = bus.timed_pop_filtered(gst::ClockTime::ZERO, &[gst::MessageType::Error])?;
    match message.view() {
        gst::MessageView::Error(error) => Some(format!("{} (from {})", error.error(), source_name(&message))),
        _ => None,
    }
}

fn source_name(message: &gst::Message) -> String {
    message.src().map(|s| s.name().to_string()).unwrap_or_default()
}

/// The GStreamer elements clips need that this box lacks (`masked`: also an encoder).
pub fn missing_elements(masked: bool) -> Vec<String> {
    if gst::init().is_err() {
        return vec!["GStreamer itself".into()];
    }
    let mut missing: Vec<String> = ["mp4mux", "h264parse", "h265parse", "filesink", "appsrc"]
        .into_iter()
        .filter(|name| gst::ElementFactory::find(name).is_none())
        .map(String::from)
        .collect();
    if masked && MASKED_ENCODERS.iter().all(|name| gst::ElementFactory::find(name).is_none()) {
        missing.push(format!("an H.264 encoder (one of {})", MASKED_ENCODERS.join(", ")));
    }
    missing
}

/// Software encoders tried in this order when the box has no hardware one that takes plain
/// pictures (`v4l2h264enc` on a Raspberry Pi, `vah264enc` on Intel); x264 is GStreamer's "ugly"
/// plugins, OpenH264 its "bad" ones.
const MASKED_ENCODERS: [&str; 4] = ["v4l2h264enc", "vah264enc", "x264enc", "openh264enc"];

/// x264's constant-quality level for masked clips (its CRF: lower is better; x264's own default
/// is 23).
const MASKED_QUALITY: u32 = 21;

/// Masked pictures waiting for the encoder at most.
const QUEUED_PICTURES: u64 = 4;

/// A raw clip whose decoder gives no picture for this long is broken (a pipeline that stopped
/// without an end of stream): the re-encoding ends instead of waiting for it.
const DECODER_SILENT_LIMIT: Duration = Duration::from_secs(30);

/// How often the re-encoding looks at its pipelines' buses and the stop deadline while it waits.
const POLL: Duration = Duration::from_millis(100);

/// Decodes a raw clip, masks each picture (`mask` gets its time from the clip's start) at `size`
/// (width in pixels, at most that many pictures a second), and encodes the result into `out` as
/// fragmented H.264 MP4. Runs on the caller's thread (a thread of its own). Never waits on a
/// pipeline for ever: an error posted on either pipeline ends it, and at the `stop` deadline it
/// ends the file with the pictures written so far (`Reencoded::stopped`).
pub fn reencode_masked(
    raw: &Path,
    out: &Path,
    size: (u32, u32),
    stop: &StopDeadline,
    mut mask: impl FnMut(chrono::Duration, &mut image::RgbImage),
) -> Result<Reencoded, String> {
    let (width, fps) = size;
    gst::init().map_err(|e| format!("cannot start GStreamer: {e}"))?;
    let make =
        |name: &str| gst::ElementFactory::make(name).build().map_err(|e| format!("GStreamer has no {name}: {e}"));
    // Decoding: the raw clip to RGB pictures of the masked size and rate. Pictures are dropped to
    // the rate and scaled in the decoder's format before the conversion to RGB: converting every
    // full-size picture first cost about 40 % more CPU (bench/RESULTS.md, camera benchmark).
    let decoding = gst::Pipeline::new();
    let source = make("filesrc")?;
    source.set_property("location", raw.to_string_lossy().to_string());
    let decode = make("decodebin")?;
    if let Ok(bin) = decode.clone().downcast::<gst::Bin>() {
        bin.connect_deep_element_added(|_, _, element| {
            crate::source::gst::tune_ffmpeg_decoder(element, crate::source::gst::FfmpegThreads::One)
        });
    }
    let rate = make("videorate")?;
    rate.set_property("drop-only", true);
    let scale = make("videoscale")?;
    let convert = make("videoconvert")?;
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", "RGB")
        .field("width", i32::try_from(width).unwrap_or(640))
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
        .field("framerate", gst::FractionRange::new(gst::Fraction::new(0, 1), gst::Fraction::new(fps as i32, 1)))
        .build();
    let pictures = gst_app::AppSink::builder().caps(&caps).sync(false).max_buffers(4).build();
    decoding
        .add_many([&source, &decode, &rate, &scale, &convert, pictures.upcast_ref()])
        .map_err(|e| format!("cannot build the decoding pipeline: {e}"))?;
    source.link(&decode).map_err(|e| format!("cannot link the decoder: {e}"))?;
    gst::Element::link_many([&rate, &scale, &convert, pictures.upcast_ref()])
        .map_err(|e| format!("cannot link the decoding pipeline: {e}"))?;
    let rate_sink = rate.static_pad("sink").ok_or("videorate has no sink pad")?;
    decode.connect_pad_added(move |_, pad| {
        if !rate_sink.is_linked() {
            let _ = pad.link(&rate_sink);
        }
    });
    decoding.set_state(gst::State::Playing).map_err(|e| format!("cannot decode {}: {e}", raw.display()))?;

    let mut encoder: Option<MaskedEncoder> = None;
    let mut made = Reencoded { pictures: 0, shown: chrono::Duration::zero(), stopped: false };
    let mut last_picture = Instant::now();
    // Pictures may come out of the decoder in any order of time (a clip cut mid-group); the
    // encoder gets them on one rising timeline.
    let mut last_pts: Option<u64> = None;
    let outcome = loop {
        if stop.passed() {
            made.stopped = true;
            break Ok(());
        }
        let Some(sample) = pictures.try_pull_sample(gst::ClockTime::from_nseconds(POLL.as_nanos() as u64)) else {
            if pictures.is_eos() {
                break Ok(());
            }
            if let Some(error) = pipeline_error(&decoding) {
                break Err(format!("the raw clip cannot be decoded: {error}"));
            }
            if last_picture.elapsed() >= DECODER_SILENT_LIMIT {
                break Err(format!("the raw clip's decoder gave no picture for {} s", DECODER_SILENT_LIMIT.as_secs()));
            }
            continue;
        };
        last_picture = Instant::now();
        let mut picture = match crate::source::gst::rgb_picture(&sample) {
            Ok(picture) => picture,
            Err(e) => break Err(format!("a picture of the raw clip: {e}")),
        };
        let Some(pts) = sample.buffer().and_then(|b| b.pts()).map(gst::ClockTime::nseconds) else {
            // A picture without a time cannot be placed in the clip, nor masked by time.
            continue;
        };
        if last_pts.is_some_and(|last| pts <= last) {
            continue;
        }
        last_pts = Some(pts);
        let offset = chrono::Duration::nanoseconds(i64::try_from(pts).unwrap_or(i64::MAX));
        mask(offset, &mut picture);
        if encoder.is_none() {
            match MaskedEncoder::start(out, picture.width(), picture.height(), fps) {
                Ok(started) => encoder = Some(started),
                Err(e) => break Err(e),
            }
        }
        let Some(encoding) = &encoder else { break Err("no encoder".into()) };
        match encoding.push(picture, pts, || stop.passed()) {
            Ok(true) => {
                made.pictures += 1;
                made.shown = offset;
            }
            Ok(false) => {
                made.stopped = true;
                break Ok(());
            }
            Err(e) => break Err(e),
        }
    };
    let _ = decoding.set_state(gst::State::Null);
    let finished = match encoder {
        Some(encoding) => encoding.finish(stop.within(Duration::from_secs(60)) + REENCODE_GRACE),
        None => Ok(()),
    };
    outcome?;
    finished?;
    Ok(made)
}

/// The masked clip's encoding pipeline and its input.
struct MaskedEncoder {
    pipeline: gst::Pipeline,
    input: gst_app::AppSrc,
    /// Bytes of pictures the input may hold before the masking waits (`QUEUED_PICTURES`).
    most_queued: u64,
}

impl MaskedEncoder {
    fn start(out: &Path, width: u32, height: u32, fps: u32) -> Result<Self, String> {
        let (pipeline, input) = masked_encoder(out, width, height, fps)?;
        Ok(Self { pipeline, input, most_queued: QUEUED_PICTURES * u64::from(width) * u64::from(height) * 3 })
    }

    /// Hands a picture to the encoder once it has room for it; false (the picture not written)
    /// when `give_up` says so first: the stop deadline came, or the caller cannot wait.
    /// Whether the input holds fewer than `QUEUED_PICTURES` pictures' bytes.
    fn has_room(&self) -> bool {
        self.input.current_level_bytes() < self.most_queued
    }

    fn push(&self, picture: image::RgbImage, pts: u64, give_up: impl Fn() -> bool) -> Result<bool, String> {
        // The input does not block: a pipeline that stopped on an error would hold the caller for
        // ever. Wait here instead, watching for errors and `give_up`.
        loop {
            if let Some(error) = pipeline_error(&self.pipeline) {
                return Err(format!("encoding the masked clip failed: {error}"));
            }
            if self.has_room() {
                break;
            }
            if give_up() {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut buffer = gst::Buffer::from_mut_slice(picture.into_raw());
        if let Some(buffer) = buffer.get_mut() {
            buffer.set_pts(gst::ClockTime::from_nseconds(pts));
        }
        self.input.push_buffer(buffer).map_err(|e| format!("the encoder stopped: {e:?}"))?;
        Ok(true)
    }

    /// Ends the file: the encoder's last pictures and the last fragment, until `by` at most.
    fn finish(self, by: Instant) -> Result<(), String> {
        let _ = self.input.end_of_stream();
        let ended = wait_for_end(&self.pipeline, by);
        let _ = self.pipeline.set_state(gst::State::Null);
        ended.map_err(|e| format!("encoding the masked clip: {e}"))
    }
}

/// A masked clip written picture by picture as the camera's frames are judged (a camera whose
/// frames are decoded from the stream its clips are cut from): the pictures come masked, at the
/// clip's size, so nothing is decoded a second time.
pub struct MaskedClipWriter(MaskedEncoder);

impl MaskedClipWriter {
    pub fn create(out: &Path, (width, height): (u32, u32), fps: u32) -> Result<Self, String> {
        gst::init().map_err(|e| format!("cannot start GStreamer: {e}"))?;
        MaskedEncoder::start(out, width, height, fps).map(Self)
    }
}

impl super::clips::PictureSink for MaskedClipWriter {
    fn write(
        &mut self,
        picture: image::RgbImage,
        since_start: Duration,
        wait_by: Option<Instant>,
    ) -> Result<bool, String> {
        let pts = u64::try_from(since_start.as_nanos()).unwrap_or(u64::MAX);
        self.0.push(picture, pts, || wait_by.is_none_or(|by| Instant::now() >= by))
    }

    fn has_room(&self) -> bool {
        self.0.has_room()
    }

    fn finish(self: Box<Self>, by: Instant) -> Result<(), String> {
        self.0.finish(by)
    }
}

/// `appsrc (RGB) ! videoconvert ! <encoder> ! h264parse ! mp4mux (fragments) ! filesink`, playing.
fn masked_encoder(out: &Path, width: u32, height: u32, fps: u32) -> Result<(gst::Pipeline, gst_app::AppSrc), String> {
    let make =
        |name: &str| gst::ElementFactory::make(name).build().map_err(|e| format!("GStreamer has no {name}: {e}"));
    let name = MASKED_ENCODERS.iter().find(|name| gst::ElementFactory::find(name).is_some()).ok_or_else(|| {
        format!("no H.264 encoder: install one of {MASKED_ENCODERS:?} (gstreamer1.0-plugins-ugly has x264enc)")
    })?;
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", "RGB")
        .field("width", i32::try_from(width).map_err(|_| "picture too wide")?)
        .field("height", i32::try_from(height).map_err(|_| "picture too high")?)
        .field("framerate", gst::Fraction::new(fps as i32, 1))
        .build();
    // A few pictures wait for the encoder; the masking thread waits beyond that (`MaskedEncoder`).
    let picture_bytes = u64::from(width) * u64::from(height) * 3;
    let input = gst_app::AppSrc::builder()
        .caps(&caps)
        .format(gst::Format::Time)
        .block(false)
        .max_bytes(QUEUED_PICTURES * picture_bytes)
        .build();
    let convert = make("videoconvert")?;
    let encode = make(name)?;
    if *name == "x264enc" {
        encode.set_property_from_str("speed-preset", "veryfast");
        encode.set_property("key-int-max", fps * 2);
        // No look-ahead and no B-frames: x264 otherwise holds dozens of pictures per thread (about
        // 50 MB at a 60 s clip's end), for a clip no one watches live. Same bitrate.
        encode.set_property_from_str("tune", "zerolatency");
        // Constant quality (x264's CRF) instead of x264enc's default 2 Mbit/s, which then becomes
        // the ceiling: a 640×360 clip at 5 pictures a second needs far less. On the camera
        // benchmark's scene: 0.29× the file, 0.57× the encoder's CPU, SSIM 0.990 against 0.995
        // (bench/RESULTS.md).
        encode.set_property_from_str("pass", "qual");
        encode.set_property("quantizer", MASKED_QUALITY);
        // x264enc turns trellis quantisation on whatever the preset (veryfast has it off): about
        // a third of the encoder's CPU for 2 % smaller files, SSIM 0.9941 against 0.9942 on the
        // benchmark's scene (bench/RESULTS.md).
        encode.set_property("trellis", false);
    }
    let parse = make("h264parse")?;
    let muxer = make("mp4mux")?;
    muxer.set_property("fragment-duration", FRAGMENT_MS);
    muxer.set_property("streamable", true);
    let sink = make("filesink")?;
    sink.set_property("location", out.to_string_lossy().to_string());
    sink.set_property_from_str("buffer-mode", "unbuffered");
    let pipeline = gst::Pipeline::new();
    pipeline
        .add_many([input.upcast_ref(), &convert, &encode, &parse, &muxer, &sink])
        .map_err(|e| format!("cannot build the encoding pipeline: {e}"))?;
    gst::Element::link_many([input.upcast_ref(), &convert, &encode, &parse, &muxer, &sink])
        .map_err(|e| format!("cannot link the encoding pipeline ({name}): {e}"))?;
    pipeline.set_state(gst::State::Playing).map_err(|e| format!("cannot start encoding with {name}: {e}"))?;
    Ok((pipeline, input))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::clips::{masked_reencoder, masked_writer, mp4_sink, ClipRecorder};
    use crate::evidence::config::ClipsConfig;
    use crate::judge::fixtures::{detail, pixels, test_event};
    use crate::judge::PrivacyMask;
    use crate::source::gst::{run_to_end, GstInput, GstSource, Output};
    use crate::source::video_tap::VideoTap;
    use crate::source::{Frame, SourceError};
    use crate::wire::EventKind;
    use crate::wire::LifecycleState;
    use std::sync::Arc;

    const FULL_SIZE: Output = Output { fps: None, max_width: 0 };

    /// Encodes a test pattern into a file with GStreamer's own encoder (`x264enc` or `x265enc`).
    fn encoded_file(dir: &Path, encoder: &str, parser: &str, pictures: u32) -> Option<std::path::PathBuf> {
        gst::init().ok()?;
        if gst::ElementFactory::find(encoder).is_none() {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "GStreamer's {encoder} is missing");
            eprintln!("skipped: GStreamer's {encoder} is not installed");
            return None;
        }
        let path = dir.join(format!("{encoder}.mp4"));
        // A key frame every second, closed groups of pictures as cameras send them (x265's default
        // open groups start with pictures that need the group before: a clip drops those).
        let options = match encoder {
            "x265enc" => "key-int-max=10 option-string=open-gop=0",
            _ => "key-int-max=10",
        };
        let line = format!(
            "videotestsrc num-buffers={pictures} pattern=ball ! video/x-raw,width=320,height=240,framerate=10/1 ! \
             {encoder} {options} ! {parser} ! mp4mux ! filesink location={}",
            path.display()
        );
        run_to_end(&line);
        Some(path)
    }

    /// What `ffprobe` says of a file: codec and the number of pictures, read by decoding it.
    fn ffprobe(path: &Path) -> Option<(String, u64)> {
        let output = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
            .args(["-show_entries", "stream=codec_name,nb_read_frames", "-of", "csv=p=0"])
            .arg(path)
            .output();
        let output = match output {
            Ok(output) => output,
            Err(e) => {
                assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "ffprobe is missing: {e}");
                eprintln!("not checked with ffprobe: {e}");
                return None;
            }
        };
        assert!(
            output.status.success(),
            "ffprobe cannot read {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let (codec, frames) = text.split_once(',').unwrap_or((&text, "0"));
        Some((codec.to_string(), frames.trim().parse().unwrap_or(0)))
    }

    /// A real file through the real source into the tap, then a clip around an event in the
    /// middle, written by the real writer and read back by ffprobe.
    async fn clip_of(encoder: &str, parser: &str, codec: &str) {
        let dir = tempfile::tempdir().unwrap();
        let Some(video) = encoded_file(dir.path(), encoder, parser, 80) else { return };
        let tap = Arc::new(VideoTap::new(std::time::Duration::from_secs(60), 16 << 20));
        let mut source =
            GstSource::open("gate", GstInput::File { path: &video, looping: false }, FULL_SIZE, Some(tap.clone()))
                .unwrap();
        let mut frames = Vec::new();
        loop {
            match source.next_image().await {
                Ok(image) => frames.push(Frame {
                    camera: "gate".into(),
                    sequence: frames.len() as u64 + 1,
                    captured_at: chrono::Utc::now(),
                    image: Arc::new(image),
                    video: Some(tap.clone()),
                    motion: None,
                }),
                Err(SourceError::Ended { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(frames.len() >= 70, "{} of 80 pictures", frames.len());
        assert!(tap.since(0).units.len() >= 70, "the tap kept every encoded picture");

        let evidence = dir.path().join("evidence");
        let settings = ClipsConfig { pre_roll_secs: 0.0, post_roll_secs: 0.0, ..Default::default() };
        let mut clips = ClipRecorder::new(settings, &evidence, &dir.path().join("raw"), mp4_sink(), masked_reencoder());
        let open = PrivacyMask { people: vec![], blur_people: false, zones: vec![], ..PrivacyMask::default() };
        let mut event = test_event(EventKind::Object, LifecycleState::Start, frames[30].captured_at);
        event.camera = "gate".into();
        clips.observe(&frames[30], [event.clone()].iter(), &open);
        event.state = LifecycleState::End;
        clips.observe(&frames[60], [event.clone()].iter(), &open);
        let stop_by = Instant::now() + Duration::from_secs(60);
        let done = clips.finish_all(frames.last().unwrap().captured_at + chrono::Duration::seconds(30), stop_by);
        assert_eq!(done.len(), 1);
        let clip = &done[0];
        assert!(clip.cut_short.is_none(), "{:?}", clip.cut_short);
        let path = evidence.join(&clip.file);
        assert!(path.is_file());
        // About pictures 30 to 60 from a key frame: a file is parsed a little ahead of the
        // pictures shown (GStreamer's queues), so the cut is by the parser's clock, not exact.
        assert!((10..80).contains(&clip.pictures), "{} pictures", clip.pictures);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[4..8], b"ftyp");
        assert!(bytes.windows(4).any(|w| w == b"moof"), "a fragmented MP4");
        if let Some((probed_codec, probed_frames)) = ffprobe(&path) {
            assert_eq!(probed_codec, codec);
            assert_eq!(probed_frames, clip.pictures, "ffprobe decodes every picture of the clip");
        }
    }

    /// The girl of person.jpg on a 1280-pixel camera with people-blurring on: the clip is re-encoded
    /// at 640 pixels with her blurred in every picture, the horse beside her still sharp, and no
    /// raw video left behind.
    #[tokio::test]
    async fn a_masked_camera_clip_is_reencoded_with_every_person_blurred() {
        masked_clip_of_the_girl(MaskedFrom::RawClip).await;
    }

    /// The same camera with one stream (its frames decoded from the stream its clips are cut
    /// from): the masked clip is made of its judged frames as they come, with the same standard.
    #[tokio::test]
    async fn a_one_stream_camera_masked_clip_is_made_of_its_frames_with_every_person_blurred() {
        masked_clip_of_the_girl(MaskedFrom::Frames).await;
    }

    #[derive(PartialEq)]
    enum MaskedFrom {
        RawClip,
        Frames,
    }

    async fn masked_clip_of_the_girl(from: MaskedFrom) {
        let dir = tempfile::tempdir().unwrap();
        if gst::init().is_err() || gst::ElementFactory::find("x264enc").is_none() {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "GStreamer's x264enc is missing");
            eprintln!("skipped: GStreamer's x264enc is not installed");
            return;
        }
        let person_jpg = crate::judge::fixtures::models_dir().join("samples/person.jpg");
        let video = dir.path().join("person.mp4");
        let line = format!(
            "filesrc location={} ! jpegdec ! videoconvert ! videoscale ! video/x-raw,width=1280,height=848 ! \
             imagefreeze num-buffers=60 ! video/x-raw,framerate=10/1 ! videoconvert ! x264enc key-int-max=10 ! \
             h264parse ! mp4mux ! filesink location={}",
            person_jpg.display(),
            video.display()
        );
        run_to_end(&line);

        let original = crate::judge::fixtures::sample("person.jpg");
        let people: Vec<crate::infer::BoundingBox> = crate::judge::fixtures::detect(&original)
            .into_iter()
            .filter(|d| d.label == "person")
            .map(|d| d.bbox)
            .collect();
        assert_eq!(people.len(), 1, "the detector finds the girl");
        // The camera's frames are twice the picture's size: so are the judge's boxes.
        let on_camera: Vec<_> = people
            .iter()
            .map(|b| crate::infer::BoundingBox { x1: b.x1 * 2.0, y1: b.y1 * 2.0, x2: b.x2 * 2.0, y2: b.y2 * 2.0 })
            .collect();
        let masked = PrivacyMask { people: on_camera, blur_people: true, zones: vec![], ..PrivacyMask::default() };

        let tap = VideoTap::new(std::time::Duration::from_secs(60), 16 << 20);
        let tap = Arc::new(if from == MaskedFrom::Frames { tap.with_frames_decoded_from_it() } else { tap });
        let mut source =
            GstSource::open("station", GstInput::File { path: &video, looping: false }, FULL_SIZE, Some(tap.clone()))
                .unwrap();
        let evidence = dir.path().join("evidence");
        let raw = dir.path().join("raw");
        let settings = ClipsConfig { pre_roll_secs: 0.0, post_roll_secs: 0.0, ..Default::default() };
        let mut clips = ClipRecorder::new(settings, &evidence, &raw, mp4_sink(), masked_reencoder())
            .masking_frames_into(masked_writer());
        let mut event = test_event(EventKind::Object, LifecycleState::Start, chrono::Utc::now());
        event.camera = "station".into();
        let mut sequence = 0;
        loop {
            let image = match source.next_image().await {
                Ok(image) => image,
                Err(SourceError::Ended { .. }) => break,
                Err(e) => panic!("{e}"),
            };
            sequence += 1;
            let frame = Frame {
                camera: "station".into(),
                sequence,
                captured_at: chrono::Utc::now(),
                image: Arc::new(image),
                video: Some(tap.clone()),
                motion: None,
            };
            // After 2.5 s: a camera's frames must have come at the clip's rate for 2 s to be used for it.
            let starting = (sequence == 25).then(|| event.clone());
            clips.observe(&frame, starting.iter(), &masked);
            clips.pump(frame.captured_at);
        }
        let done = clips
            .finish_all(chrono::Utc::now() + chrono::Duration::seconds(30), Instant::now() + Duration::from_secs(60));
        assert_eq!(done.len(), 1, "one masked clip");
        assert_eq!(std::fs::read_dir(&raw).map(|d| d.count()).unwrap_or(0), 0, "the raw clip is gone");
        if from == MaskedFrom::Frames {
            assert!(!raw.exists(), "a clip made of the frames writes no raw clip");
            // Its last second of pictures (waiting for their masks) goes to the encoder at once
            // when it ends: none is left out for want of room.
            assert_eq!(done[0].missed, 0, "pictures left out at the end");
        }
        let path = evidence.join(&done[0].file);

        let mut reading =
            GstSource::open("check", GstInput::File { path: &path, looping: false }, FULL_SIZE, None).unwrap();
        let (girl, horse) = (people[0], crate::infer::BoundingBox { x1: 400.0, y1: 140.0, x2: 590.0, y2: 330.0 });
        let (girl_before, horse_before) = (detail(&original, pixels(&girl)), detail(&original, pixels(&horse)));
        let mut pictures = 0;
        loop {
            let picture = match reading.next_image().await {
                Ok(picture) => picture,
                Err(SourceError::Ended { .. }) => break,
                Err(e) => panic!("{e}"),
            };
            assert_eq!(picture.dimensions(), (640, 424), "re-encoded at masked_width");
            let (girl_after, horse_after) = (detail(&picture, pixels(&girl)), detail(&picture, pixels(&horse)));
            // Blurred once, as in the evidence pictures (whose test asks the same): before, she was
            // blurred again for each judged frame near the picture, which left less (3.8× here now,
            // after the encoder; 4× was asked).
            assert!(girl_after * 3 < girl_before, "picture {pictures}: the girl shows: {girl_before} → {girl_after}");
            assert!(
                horse_after * 2 > horse_before,
                "picture {pictures}: the horse is blurred too: {horse_before} → {horse_after}"
            );
            pictures += 1;
        }
        // The source shows a file at its pace and may skip a picture; ffprobe counts them all.
        assert!(pictures >= 5, "{pictures} pictures in the masked clip");
        if let Some((codec, probed)) = ffprobe(&path) {
            assert_eq!(codec, "h264");
            assert_eq!(probed, done[0].pictures, "every picture written is decodable");
        }
    }

    /// The box loses power while a clip is written: the file as it is on disk at that moment (a
    /// copy taken while the writer still runs, never finished) plays up to its last whole fragment.
    #[tokio::test]
    async fn a_clip_cut_off_while_it_is_written_still_plays_up_to_its_last_fragment() {
        let dir = tempfile::tempdir().unwrap();
        let Some(video) = encoded_file(dir.path(), "x264enc", "h264parse", 60) else { return };
        let tap = Arc::new(VideoTap::new(std::time::Duration::from_secs(60), 16 << 20));
        let mut source =
            GstSource::open("gate", GstInput::File { path: &video, looping: false }, FULL_SIZE, Some(tap.clone()))
                .unwrap();
        while source.next_image().await.is_ok() {}
        let units = tap.since(0).units;
        assert!(units.len() >= 50, "{} encoded pictures", units.len());
        let path = dir.path().join("clip.mp4");
        let mut writer = Mp4ClipWriter::create(&path, &units[0].format).unwrap();
        for unit in &units {
            writer.write(unit).unwrap();
        }
        // Let the muxer write what it has (fragments close every second of video); then the
        // power goes: copy the file as it is, the writer never finishes.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let cut = dir.path().join("cut.mp4");
        std::fs::copy(&path, &cut).unwrap();
        std::mem::forget(writer);
        let bytes = std::fs::read(&cut).unwrap();
        assert_eq!(&bytes[4..8], b"ftyp", "the header is written first");
        if let Some((codec, pictures)) = ffprobe(&cut) {
            assert_eq!(codec, "h264");
            // 60 pictures at 10 a second in fragments of one second: all but the open one.
            assert!(pictures >= 40, "only {pictures} of {} pictures play", units.len());
        }
    }

    #[tokio::test]
    async fn an_h264_clip_around_an_event_is_a_fragmented_mp4_that_ffprobe_reads() {
        clip_of("x264enc", "h264parse", "h264").await;
    }

    #[tokio::test]
    async fn an_h265_clip_around_an_event_is_a_fragmented_mp4_that_ffprobe_reads() {
        clip_of("x265enc", "h265parse", "hevc").await;
    }
}
