//! A camera's record stream: its main stream when it also names a `detect_url`. Read through
//! GStreamer as far as the parser and kept in the camera's video tap for event clips, never
//! decoded (only a masked clip is, when it is re-encoded); its own task reconnects it like the
//! detect stream's, and its health is reported apart, so either stream may fail alone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::video_tap::VideoTap;
use super::SourceError;

/// What the page, the status and the camera's health topic say of a record stream.
#[derive(Debug, Default)]
pub struct RecordStreamHealth {
    /// Encoded pictures kept since the start.
    pub units: AtomicU64,
    pub errors: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Pictures arrive on the open stream; false while it (re)opens or fails.
    pub online: AtomicBool,
}

impl RecordStreamHealth {
    pub fn record_error(&self, error: &SourceError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.online.store(false, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error.to_string());
        }
    }

    fn arrived(&self, units: u64) {
        self.units.fetch_add(units, Ordering::Relaxed);
        self.online.store(true, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = None;
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }
}

#[cfg(feature = "gstreamer")]
pub use pipeline::RecordStream;

#[cfg(feature = "gstreamer")]
mod pipeline {
    use super::*;
    use crate::base::redact::redact_userinfo;
    use crate::source::config::RtspUrl;
    use crate::source::gst::{init, set_up_rtsp_source, watch_parser_output, FirstKeyframe};
    use gstreamer as gst;
    use gstreamer::prelude::*;
    use tokio::time::Instant;

    /// `uridecodebin` stops here: the parsed video, as it came.
    const PARSED_VIDEO: &str = "video/x-h264,parsed=true;video/x-h265,parsed=true";

    /// An open record stream: `uridecodebin` (source, depayloader, parser; no decoder) into a
    /// fakesink, the parser's output copied into the tap.
    pub struct RecordStream {
        camera: String,
        shown: String,
        pipeline: gst::Pipeline,
        stall_timeout: Duration,
        parsed: Arc<FirstKeyframe>,
        /// The stream had already ended when it opened (a short file, under load): `run` says so.
        ended_at_open: bool,
    }

    impl RecordStream {
        pub fn open(
            camera: &str,
            url: &RtspUrl,
            stall_timeout: Duration,
            tap: Arc<VideoTap>,
        ) -> Result<Self, SourceError> {
            let credentials = url.credentials().map(|(u, p)| (u.to_string(), p.to_string()));
            Self::open_uri(camera, url.bare().as_str(), url.to_string(), credentials, stall_timeout, tap)
        }

        /// [`Self::open`] for any URI GStreamer reads (`shown` in messages, without a password).
        pub(crate) fn open_uri(
            camera: &str,
            uri: &str,
            shown: String,
            credentials: Option<(String, String)>,
            stall_timeout: Duration,
            tap: Arc<VideoTap>,
        ) -> Result<Self, SourceError> {
            let open_error = |message: String| SourceError::Open { camera: camera.to_string(), message };
            init().map_err(open_error)?;
            let build_error = |what: &str, e: &dyn std::fmt::Display| {
                open_error(format!(
                    "cannot build the record pipeline for {shown} ({what}: {e}); is the plugin installed?"
                ))
            };
            let caps = PARSED_VIDEO.parse::<gst::Caps>().map_err(|e| build_error("caps", &e))?;
            let source = gst::ElementFactory::make("uridecodebin")
                .property("uri", uri)
                .property("caps", &caps)
                .build()
                .map_err(|e| build_error("uridecodebin", &e))?;
            let sink = gst::ElementFactory::make("fakesink")
                .property("sync", false)
                .property("async", false)
                .build()
                .map_err(|e| build_error("fakesink", &e))?;
            let pipeline = gst::Pipeline::new();
            pipeline.add_many([&source, &sink]).map_err(|e| build_error("pipeline", &e))?;
            set_up_rtsp_source(&source, credentials, stall_timeout);
            let sink_pad = sink.static_pad("sink").ok_or_else(|| build_error("fakesink", &"no sink pad"))?;
            source.connect_pad_added(move |_, pad| {
                let caps = pad.current_caps();
                let is_video =
                    caps.as_ref().and_then(|c| c.structure(0)).is_some_and(|s| s.name().starts_with("video/"));
                if is_video && !sink_pad.is_linked() {
                    if let Err(e) = pad.link(&sink_pad) {
                        tracing::warn!("GStreamer: cannot link the record stream: {e:?}");
                    }
                }
            });
            let parsed = Arc::new(FirstKeyframe::new());
            let watched = parsed.clone();
            if let Ok(bin) = source.clone().downcast::<gst::Bin>() {
                bin.connect_deep_element_added(move |_, _, element| {
                    let klass =
                        element.factory().and_then(|f| f.metadata("klass").map(str::to_string)).unwrap_or_default();
                    if klass.contains("Parser") && klass.contains("Video") {
                        watch_parser_output(element, Some(tap.clone()), watched.clone());
                    }
                });
            }
            pipeline
                .set_state(gst::State::Playing)
                .map_err(|_| open_error(format!("GStreamer cannot play {shown}")))?;
            // Only an error is a failed open. A stream that already ended (a short file) opened
            // and delivered: `run` reports its end. (Popping takes the end off the bus, and
            // GStreamer drops what it pops past, so the end is remembered, not looked for again.)
            let early =
                pipeline.bus().and_then(|bus| bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Eos]));
            if let Some(gst::MessageView::Error(error)) = early.as_ref().map(|m| m.view()) {
                return Err(open_error(redact_userinfo(&format!("record stream {shown}: {}", error_text(error)))));
            }
            let ended_at_open = matches!(early.as_ref().map(|m| m.view()), Some(gst::MessageView::Eos(_)));
            Ok(Self { camera: camera.to_string(), shown, pipeline, stall_timeout, parsed, ended_at_open })
        }

        /// Keeps the stream until it fails (an error, its end, nothing for `stall_timeout`),
        /// counting what arrives into `health`; returns how it failed.
        pub async fn run(&mut self, health: &RecordStreamHealth) -> SourceError {
            let mut counted = 0;
            let mut last_arrival = Instant::now();
            loop {
                let units = self.parsed.units();
                if units > counted {
                    health.arrived(units - counted);
                    counted = units;
                    last_arrival = Instant::now();
                }
                if let Some(problem) = self.bus_problem() {
                    return problem;
                }
                if last_arrival.elapsed() >= self.stall_timeout {
                    return SourceError::Stalled {
                        camera: self.camera.clone(),
                        message: format!(
                            "no video from the record stream {} for {} s",
                            self.shown,
                            self.stall_timeout.as_secs_f64()
                        ),
                    };
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }

        fn bus_problem(&self) -> Option<SourceError> {
            let bus = self.pipeline.bus()?;
            let lost = |message: String| SourceError::Lost {
                camera: self.camera.clone(),
                message: redact_userinfo(&format!("record stream {}: {message}", self.shown)),
            };
            if self.ended_at_open {
                return Some(lost("the server ended the stream".into()));
            }
            while let Some(message) = bus.timed_pop(gst::ClockTime::ZERO) {
                match message.view() {
                    gst::MessageView::Latency(_) => {
                        let _ = self.pipeline.recalculate_latency();
                    }
                    gst::MessageView::Error(error) => return Some(lost(error_text(error))),
                    gst::MessageView::Eos(_) => return Some(lost("the server ended the stream".into())),
                    _ => {}
                }
            }
            None
        }

        /// The elements of the pipeline that decode video: none (what this stream promises).
        #[cfg(test)]
        pub(crate) fn decoders(&self) -> Vec<String> {
            let mut found = Vec::new();
            let mut iterator = self.pipeline.iterate_recurse();
            while let Ok(Some(element)) = iterator.next() {
                let klass = element.factory().and_then(|f| f.metadata("klass").map(str::to_string)).unwrap_or_default();
                // Decoding bins are "Generic/Bin/Decoder"; decoders themselves "Codec/Decoder/…".
                if klass.contains("Codec") && klass.contains("Decoder") {
                    found.push(element.name().to_string());
                }
            }
            found
        }
    }

    /// A GStreamer error as the agent says it: what went wrong, and which element said so.
    fn error_text(error: &gst::message::Error) -> String {
        let from = error.src().map(|s| s.name().to_string()).unwrap_or_default();
        format!("{} (from {from})", error.error())
    }

    impl Drop for RecordStream {
        fn drop(&mut self) {
            crate::source::gst::stop_off_the_workers(&self.pipeline);
        }
    }
}

#[cfg(all(test, feature = "gstreamer"))]
mod tests {
    use super::*;
    use crate::source::gst::run_to_end;
    use gstreamer as gst;

    /// A main stream kept for clips: every encoded picture reaches the tap with its format, and
    /// nothing in the pipeline decodes.
    #[tokio::test]
    async fn a_record_stream_fills_the_tap_without_decoding() {
        if init_or_skip() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("main.mp4");
        let line = format!(
            "videotestsrc num-buffers=30 pattern=ball ! video/x-raw,width=640,height=360,framerate=10/1 ! \
             x264enc key-int-max=10 ! h264parse ! mp4mux ! filesink location={}",
            path.display()
        );
        run_to_end(&line);
        let tap = Arc::new(VideoTap::new(Duration::from_secs(60), 16 << 20));
        let uri = gst::glib::filename_to_uri(&path, None).unwrap().to_string();
        let mut stream =
            RecordStream::open_uri("gate", &uri, uri.clone(), None, Duration::from_secs(5), tap.clone()).unwrap();
        let health = RecordStreamHealth::default();
        // A file ends: what it held is in the tap by then.
        let ended = stream.run(&health).await;
        assert!(matches!(ended, SourceError::Lost { .. }), "{ended}");
        assert_eq!(stream.decoders(), Vec::<String>::new(), "the record stream is never decoded");
        let units = tap.since(0).units;
        assert_eq!(units.len(), 30, "every encoded picture is kept");
        assert!(units[0].keyframe && units[0].format.starts_with("video/x-h264"), "{}", units[0].format);
        assert_eq!(health.units.load(Ordering::Relaxed), 30);
    }

    fn init_or_skip() -> bool {
        if crate::source::gst::init().is_err() || gst::ElementFactory::find("x264enc").is_none() {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "GStreamer's x264enc is missing");
            eprintln!("skipped: GStreamer's x264enc is not installed");
            return true;
        }
        false
    }
}
