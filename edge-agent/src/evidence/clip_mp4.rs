//! Writes a camera's encoded pictures, as they came (no re-encode), into a fragmented MP4 through
//! GStreamer (`appsrc ! h264parse|h265parse ! mp4mux fragment-duration=… ! filesink`). Fragmented:
//! the header goes first and each second of video follows as its own fragment, so a clip cut short
//! by a crash or a power cut is still a playable file up to its last whole fragment.

use std::path::Path;
use std::str::FromStr;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::clips::ClipSink;
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

    fn finish(self: Box<Self>) -> Result<(), String> {
        let _ = self.source.end_of_stream();
        let bus = self.pipeline.bus().ok_or("the clip pipeline has no bus")?;
        let outcome = match bus
            .timed_pop_filtered(gst::ClockTime::from_seconds(20), &[gst::MessageType::Eos, gst::MessageType::Error])
        {
            Some(message) => match message.view() {
                gst::MessageView::Error(error) => Err(format!("writing the clip failed: {}", error.error())),
                _ => Ok(()),
            },
            None => Err("the clip writer did not finish within 20 s".into()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::clips::{mp4_sink, ClipRecorder};
    use crate::evidence::config::ClipsConfig;
    use crate::judge::fixtures::test_event;
    use crate::judge::lifecycle::LifecycleState;
    use crate::judge::{EventKind, PrivacyMask};
    use crate::source::gst::{GstInput, GstSource};
    use crate::source::video_tap::VideoTap;
    use crate::source::{Frame, SourceError};
    use std::sync::Arc;

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
        let encoding = gst::parse::launch(&line).unwrap();
        encoding.set_state(gst::State::Playing).unwrap();
        let bus = encoding.bus().unwrap();
        let done =
            bus.timed_pop_filtered(gst::ClockTime::from_seconds(60), &[gst::MessageType::Eos, gst::MessageType::Error]);
        assert!(matches!(done.map(|m| m.type_()), Some(gst::MessageType::Eos)));
        encoding.set_state(gst::State::Null).unwrap();
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
            GstSource::open("gate", GstInput::File { path: &video, looping: false }, None, Some(tap.clone())).unwrap();
        let mut frames = Vec::new();
        loop {
            match source.next_image().await {
                Ok(image) => frames.push(Frame {
                    camera: "gate".into(),
                    sequence: frames.len() as u64 + 1,
                    captured_at: chrono::Utc::now(),
                    image: Arc::new(image),
                    video: Some(tap.clone()),
                }),
                Err(SourceError::Ended { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(frames.len() >= 70, "{} of 80 pictures", frames.len());
        assert!(tap.since(0).units.len() >= 70, "the tap kept every encoded picture");

        let evidence = dir.path().join("evidence");
        let settings = ClipsConfig { pre_roll_secs: 0.0, post_roll_secs: 0.0, max_secs: 60.0, enabled: true };
        let mut clips = ClipRecorder::new(settings, &evidence, mp4_sink());
        let open = PrivacyMask { people: vec![], blur_people: false, zones: vec![] };
        let mut event = test_event(EventKind::Object, LifecycleState::Start, frames[30].captured_at);
        event.camera = "gate".into();
        clips.observe(&frames[30], [event.clone()].iter(), &open);
        event.state = LifecycleState::End;
        clips.observe(&frames[60], [event.clone()].iter(), &open);
        let done = clips.finish_all(frames.last().unwrap().captured_at + chrono::Duration::seconds(30));
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

    #[tokio::test]
    async fn an_h264_clip_around_an_event_is_a_fragmented_mp4_that_ffprobe_reads() {
        clip_of("x264enc", "h264parse", "h264").await;
    }

    #[tokio::test]
    async fn an_h265_clip_around_an_event_is_a_fragmented_mp4_that_ffprobe_reads() {
        clip_of("x265enc", "h265parse", "hevc").await;
    }
}
