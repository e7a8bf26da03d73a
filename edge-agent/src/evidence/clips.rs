//! Event clips: video from `pre_roll_secs` before an event started to `post_roll_secs` after it
//! ended (at most `max_secs`), cut from the camera's encoded video as it came (the source's
//! [`VideoTap`]) without re-encoding, written as it happens into the evidence folder
//! (`<day>/<event_id>-clip.mp4`, fragmented MP4 in a GStreamer build: [`super::clip_mp4`]).
//!
//! The recorder decides; the file is written by a [`ClipSink`], so the decisions are tested apart
//! from GStreamer (and with it, in `clip_mp4`'s tests and end to end). When a clip is finished the
//! evidence stage hashes it and records it in the chain ([`super::store::EvidenceStore::keep_clip`]).
//!
//! Privacy: a clip is the camera's picture as it came. Where the camera's pictures are masked
//! (people blurred, privacy zones), a clip would show what its pictures hide, so none is kept; the
//! agent says so once per camera.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::config::ClipsConfig;
use crate::judge::lifecycle::LifecycleState;
use crate::judge::{Event, PrivacyMask};
use crate::source::video_tap::{EncodedUnit, VideoTap};
use crate::source::Frame;

/// Where a clip's pictures go.
pub trait ClipSink: Send {
    fn write(&mut self, unit: &EncodedUnit) -> Result<(), String>;
    fn finish(self: Box<Self>) -> Result<(), String>;
}

/// Opens the writer of a clip file for a stream format.
pub type OpenSink = Box<dyn Fn(&Path, &str) -> Result<Box<dyn ClipSink>, String> + Send>;

/// The writer of this build: fragmented MP4 through GStreamer, or none.
pub fn mp4_sink() -> OpenSink {
    Box::new(|path, format| {
        #[cfg(feature = "gstreamer")]
        {
            super::clip_mp4::Mp4ClipWriter::create(path, format).map(|w| Box::new(w) as Box<dyn ClipSink>)
        }
        #[cfg(not(feature = "gstreamer"))]
        {
            let _ = (path, format);
            Err("this build writes no clips (built without the `gstreamer` feature)".to_string())
        }
    })
}

/// A clip the recorder has finished writing.
#[derive(Debug, Clone)]
pub struct FinishedClip {
    pub event_id: Uuid,
    pub camera: String,
    /// Inside the evidence folder, e.g. `2026-11-30/<event_id>-clip.mp4`.
    pub file: String,
    /// The wall-clock times of its first and last pictures.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub pictures: u64,
    /// Pictures lost between the camera and the clip (the evidence stage fell behind the tap).
    pub missed: u64,
    /// Why it ended before its planned end, if it did (the stream's format changed, an error).
    pub cut_short: Option<String>,
}

struct Recording {
    event_id: Uuid,
    camera: String,
    file: String,
    path: PathBuf,
    tap: Arc<VideoTap>,
    /// The last unit taken from the tap.
    cursor: u64,
    /// Set when the event ends: the clip runs to here.
    until: Option<DateTime<Utc>>,
    /// The clip never runs past this (`max_secs` after its first picture).
    cap: DateTime<Utc>,
    sink: Option<Box<dyn ClipSink>>,
    format: Option<Arc<str>>,
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    pictures: u64,
    missed: u64,
    cut_short: Option<String>,
}

/// A tap that brings nothing for this long after a clip should have ended ends it anyway (the
/// camera went away).
const QUIET_TAP_SECS: i64 = 10;

pub struct ClipRecorder {
    settings: ClipsConfig,
    evidence_dir: PathBuf,
    open_sink: OpenSink,
    recordings: Vec<Recording>,
    /// Cameras whose clips privacy forbids, already said in the log.
    withheld: BTreeSet<String>,
}

impl ClipRecorder {
    pub fn new(settings: ClipsConfig, evidence_dir: &Path, open_sink: OpenSink) -> Self {
        Self {
            settings,
            evidence_dir: evidence_dir.to_owned(),
            open_sink,
            recordings: Vec::new(),
            withheld: BTreeSet::new(),
        }
    }

    /// Clips being written now.
    pub fn recording(&self) -> usize {
        self.recordings.len()
    }

    /// Starts a clip for each event that starts on this frame (and has pictures), plans the end of
    /// each that ends.
    pub fn observe<'a>(&mut self, frame: &Frame, events: impl Iterator<Item = &'a Event>, privacy: &PrivacyMask) {
        for event in events {
            match event.state {
                LifecycleState::Start => self.start(frame, event, privacy),
                LifecycleState::End => {
                    let until = frame.captured_at + seconds(self.settings.post_roll_secs);
                    if let Some(recording) = self.recordings.iter_mut().find(|r| r.event_id == event.event_id) {
                        recording.until = Some(until);
                    }
                }
                _ => {}
            }
        }
    }

    fn start(&mut self, frame: &Frame, event: &Event, privacy: &PrivacyMask) {
        let Some(tap) = &frame.video else { return };
        if privacy.blur_people || !privacy.zones.is_empty() {
            if self.withheld.insert(event.camera.clone()) {
                tracing::warn!(
                    camera = %event.camera,
                    "no event clips are kept for this camera: its pictures are masked (people blurred or privacy zones) and a clip would show what they hide"
                );
            }
            return;
        }
        if self.recordings.iter().any(|r| r.event_id == event.event_id) {
            return;
        }
        let from = frame.captured_at - seconds(self.settings.pre_roll_secs);
        let Some(cursor) = tap.start_before(from) else {
            tracing::warn!(camera = %event.camera, event_id = %event.event_id, "no clip: the camera's video has no key frame yet");
            return;
        };
        let day = frame.captured_at.format("%Y-%m-%d").to_string();
        let file = format!("{day}/{}-clip.mp4", event.event_id);
        self.recordings.push(Recording {
            event_id: event.event_id,
            camera: event.camera.clone(),
            path: self.evidence_dir.join(&file),
            file,
            tap: tap.clone(),
            cursor,
            until: None,
            cap: frame.captured_at + seconds(self.settings.max_secs - self.settings.pre_roll_secs),
            sink: None,
            format: None,
            first: None,
            last: None,
            pictures: 0,
            missed: 0,
            cut_short: None,
        });
    }

    /// Writes what the cameras sent since the last call; returns the clips that are complete.
    pub fn pump(&mut self, now: DateTime<Utc>) -> Vec<FinishedClip> {
        let mut finished = Vec::new();
        let mut index = 0;
        while index < self.recordings.len() {
            let done = self.write_new(index, now);
            if done {
                let recording = self.recordings.remove(index);
                finished.extend(self.finish(recording));
            } else {
                index += 1;
            }
        }
        finished
    }

    /// Ends every clip now (the agent stops): what was written is kept.
    pub fn finish_all(&mut self, now: DateTime<Utc>) -> Vec<FinishedClip> {
        for recording in &mut self.recordings {
            recording.until = Some(recording.until.map_or(now, |u| u.min(now)));
        }
        let mut finished = self.pump(now);
        for recording in std::mem::take(&mut self.recordings) {
            finished.extend(self.finish(recording));
        }
        finished
    }

    /// Writes a recording's new units; true when it is complete.
    fn write_new(&mut self, index: usize, now: DateTime<Utc>) -> bool {
        let open_sink = &self.open_sink;
        let recording = &mut self.recordings[index];
        let end = recording.until.map_or(recording.cap, |u| u.min(recording.cap));
        let since = recording.tap.since(recording.cursor);
        if recording.pictures > 0 || recording.cursor > 0 {
            recording.missed += since.missed;
        }
        for unit in &since.units {
            recording.cursor = unit.seq;
            if unit.received_at > end {
                return true;
            }
            if recording.format.as_ref().is_some_and(|f| *f != unit.format) {
                recording.cut_short = Some("the camera's stream format changed".into());
                return true;
            }
            if recording.sink.is_none() {
                if !unit.keyframe {
                    continue;
                }
                if let Some(parent) = recording.path.parent() {
                    if let Err(e) = std::fs::create_dir_all(parent) {
                        recording.cut_short = Some(format!("cannot make {}: {e}", parent.display()));
                        return true;
                    }
                }
                match open_sink(&recording.path, &unit.format) {
                    Ok(sink) => recording.sink = Some(sink),
                    Err(e) => {
                        recording.cut_short = Some(e);
                        return true;
                    }
                }
                recording.format = Some(unit.format.clone());
            }
            let Some(sink) = recording.sink.as_mut() else { return true };
            if let Err(e) = sink.write(unit) {
                recording.cut_short = Some(e);
                return true;
            }
            recording.first.get_or_insert(unit.received_at);
            recording.last = Some(unit.received_at);
            recording.pictures += 1;
        }
        // The camera went quiet after the clip's end: nothing more will come in time.
        now > end + chrono::Duration::seconds(QUIET_TAP_SECS)
    }

    fn finish(&self, recording: Recording) -> Option<FinishedClip> {
        let Recording { event_id, camera, file, path, sink, first, last, pictures, missed, mut cut_short, .. } =
            recording;
        let sink = sink?;
        if let Err(e) = sink.finish() {
            cut_short = Some(e);
        }
        if let Some(why) = &cut_short {
            tracing::warn!(%camera, %event_id, "the event clip ended early: {why}");
        }
        if missed > 0 {
            tracing::warn!(%camera, %event_id, missed, "the event clip lacks pictures the evidence stage read too late");
        }
        // An empty or unreadable file is no evidence.
        if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) == 0 {
            tracing::error!(%camera, %event_id, file = %path.display(), "the event clip is empty");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        Some(FinishedClip { event_id, camera, file, from: first?, to: last?, pictures, missed, cut_short })
    }
}

fn seconds(value: f64) -> chrono::Duration {
    chrono::Duration::milliseconds((value * 1000.0).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::EventKind;
    use crate::source::video_tap::ArrivingUnit;
    use std::sync::Mutex;

    fn at(seconds: f64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap() + chrono::Duration::milliseconds((seconds * 1000.0) as i64)
    }

    /// A sink that records what it was given (beside the real writer's tests in `clip_mp4`).
    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<(u64, bool)>>>);

    struct ListSink(Written, PathBuf);

    impl ClipSink for ListSink {
        fn write(&mut self, unit: &EncodedUnit) -> Result<(), String> {
            self.0 .0.lock().unwrap().push((unit.seq, unit.keyframe));
            std::fs::write(&self.1, b"video").map_err(|e| e.to_string())
        }
        fn finish(self: Box<Self>) -> Result<(), String> {
            Ok(())
        }
    }

    fn recorder(dir: &Path, written: &Written) -> ClipRecorder {
        let written = written.clone();
        let open: OpenSink = Box::new(move |path, _| Ok(Box::new(ListSink(written.clone(), path.to_owned()))));
        ClipRecorder::new(ClipsConfig::default(), dir, open)
    }

    /// 10 pictures a second, a key frame each second, from `from` to `to` seconds.
    fn feed(tap: &VideoTap, from: f64, to: f64) {
        for tenth in (from * 10.0).round() as u64..(to * 10.0).round() as u64 {
            let ns = tenth * 100_000_000;
            let unit = ArrivingUnit {
                pts_ns: Some(ns),
                dts_ns: Some(ns),
                duration_ns: None,
                keyframe: tenth % 10 == 0,
                data: vec![1; 10],
            };
            tap.push(
                unit,
                DateTime::from_timestamp(1_700_000_000, 0).unwrap()
                    + chrono::Duration::milliseconds(tenth as i64 * 100),
            );
        }
    }

    fn frame(tap: &Arc<VideoTap>, seconds: f64) -> Frame {
        Frame {
            camera: "gate".into(),
            sequence: 1,
            captured_at: at(seconds),
            image: Arc::new(image::RgbImage::new(4, 4)),
            video: Some(tap.clone()),
        }
    }

    fn event(id: Uuid, state: LifecycleState) -> Event {
        let mut event = crate::judge::fixtures::test_event(EventKind::Object, state, at(0.0));
        event.event_id = id;
        event.camera = "gate".into();
        event
    }

    fn open_privacy() -> PrivacyMask {
        PrivacyMask { people: vec![], blur_people: false, zones: vec![] }
    }

    #[test]
    fn a_clip_runs_from_the_pre_roll_before_the_start_to_the_post_roll_after_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let written = Written::default();
        let mut clips = recorder(dir.path(), &written);
        let tap = Arc::new(VideoTap::new(std::time::Duration::from_secs(10), 1 << 20));
        tap.set_format("video/x-h264");
        let id = Uuid::now_v7();
        feed(&tap, 0.0, 20.0);
        clips.observe(&frame(&tap, 20.0), [event(id, LifecycleState::Start)].iter(), &open_privacy());
        assert_eq!(clips.recording(), 1);
        assert!(clips.pump(at(20.0)).is_empty());
        feed(&tap, 20.0, 30.0);
        clips.observe(&frame(&tap, 30.0), [event(id, LifecycleState::End)].iter(), &open_privacy());
        assert!(clips.pump(at(30.0)).is_empty(), "the post-roll is still to come");
        feed(&tap, 30.0, 36.0);
        let done = clips.pump(at(36.0));
        assert_eq!(done.len(), 1);
        let clip = &done[0];
        // From the key frame at 15 s (5 s before the start) to 35 s (5 s after the end).
        assert_eq!(clip.from, at(15.0));
        assert_eq!(clip.to, at(35.0));
        assert_eq!(clip.pictures, 201);
        assert!(written.0.lock().unwrap()[0].1, "the clip starts with a key frame");
        assert!(clip.file.ends_with(&format!("{id}-clip.mp4")));
        assert!(dir.path().join(&clip.file).is_file());
        assert_eq!(clips.recording(), 0);
    }

    #[test]
    fn a_long_event_is_cut_at_max_secs_and_a_masked_camera_keeps_no_clip() {
        let dir = tempfile::tempdir().unwrap();
        let written = Written::default();
        let mut clips = recorder(dir.path(), &written);
        let tap = Arc::new(VideoTap::new(std::time::Duration::from_secs(10), 1 << 20));
        tap.set_format("video/x-h264");
        feed(&tap, 0.0, 10.0);
        let masked = PrivacyMask { blur_people: true, ..open_privacy() };
        clips.observe(&frame(&tap, 10.0), [event(Uuid::now_v7(), LifecycleState::Start)].iter(), &masked);
        assert_eq!(clips.recording(), 0, "a masked camera's clip would show what its pictures hide");

        clips.observe(&frame(&tap, 10.0), [event(Uuid::now_v7(), LifecycleState::Start)].iter(), &open_privacy());
        let mut done = Vec::new();
        for second in 10..80 {
            feed(&tap, second as f64, second as f64 + 1.0);
            done.extend(clips.pump(at(second as f64 + 1.0)));
        }
        assert_eq!(done.len(), 1, "the event never ended, the clip did");
        let length = (done[0].to - done[0].from).num_milliseconds();
        assert!((59_000..=60_000).contains(&length), "{length} ms");
    }

    #[test]
    fn a_camera_that_goes_quiet_ends_the_clip_with_what_came() {
        let dir = tempfile::tempdir().unwrap();
        let written = Written::default();
        let mut clips = recorder(dir.path(), &written);
        let tap = Arc::new(VideoTap::new(std::time::Duration::from_secs(10), 1 << 20));
        tap.set_format("video/x-h264");
        let id = Uuid::now_v7();
        feed(&tap, 0.0, 12.0);
        clips.observe(&frame(&tap, 12.0), [event(id, LifecycleState::Start)].iter(), &open_privacy());
        clips.observe(&frame(&tap, 12.0), [event(id, LifecycleState::End)].iter(), &open_privacy());
        assert!(clips.pump(at(12.0)).is_empty());
        assert!(clips.pump(at(20.0)).is_empty(), "the post-roll and the quiet time are not over");
        let done = clips.pump(at(28.0));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].from, at(7.0));
    }
}
