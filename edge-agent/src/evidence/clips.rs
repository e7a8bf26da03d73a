//! Event clips: video from `pre_roll_secs` before an event started to `post_roll_secs` after it
//! ended (at most `max_secs`), cut from the camera's encoded video as it came (the source's
//! [`VideoTap`]) without re-encoding, written as it happens into the evidence folder
//! (`<day>/<event_id>-clip.mp4`, fragmented MP4 in a GStreamer build: [`super::clip_mp4`]).
//!
//! The recorder decides; the file is written by a [`ClipSink`], so the decisions are tested apart
//! from GStreamer (and with it, in `clip_mp4`'s tests and end to end). When a clip is finished the
//! evidence stage hashes it and records it in the chain ([`super::store::EvidenceStore::keep_clip`]).
//!
//! Privacy: the camera's video as it came shows what a masked camera's pictures hide (people,
//! privacy zones). A masked camera's clip is therefore first cut into a private folder outside the
//! evidence (`state_dir/clips-raw`, emptied at every start), then re-encoded on a thread of its own
//! at `masked_width` and `masked_fps` with every picture masked ([`MaskTrack`]: the people the judge
//! found in the camera's frames within a second of it, blurred; the whole picture blurred where
//! the judge saw no frame that near; privacy zones black), and only that goes into the evidence.
//! A camera whose frames are decoded from the stream its clips are cut from (one stream per
//! camera) needs no second decoder: its masked clip is made of its judged frames as they come
//! ([`PictureSink`]), each shrunk to `masked_width` at `masked_fps` and masked a second after it
//! (when the frames around it are judged), with the pre-roll from the camera's last pictures
//! kept in memory ([`RecentPictures`]); no raw clip is written.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use image::RgbImage;
use uuid::Uuid;

use super::config::ClipsConfig;
use crate::infer::BoundingBox;
use crate::judge::zones::Zone;
use crate::judge::PrivacyMask;
use crate::source::video_tap::{EncodedUnit, VideoTap};
use crate::source::Frame;
use crate::wire::Event;
use crate::wire::LifecycleState;

/// The folder of raw clips of masked cameras, under the state folder: never served, never sent.
pub const RAW_CLIPS_DIR: &str = "clips-raw";

/// A picture of a masked clip is masked with the people of the camera's frames this near in time.
const MASK_NEAR_MS: i64 = 1000;

/// How long past a pre-roll and its masks' second a picture of a clip made of the frames may wait
/// for room in its encoder (which holds a few pictures) before it is left out: x264 takes a
/// whole pre-roll (25 pictures at 640×360) in about a tenth of a second.
const ENCODER_GRACE_MS: i64 = 2000;

/// The people (and plates to blur) the judge found in one frame of a camera.
#[derive(Debug, Clone)]
struct MaskSample {
    at: DateTime<Utc>,
    people: Vec<BoundingBox>,
    plates: Vec<BoundingBox>,
    /// The frame's size, which the boxes are in.
    frame: (u32, u32),
}

/// A masked camera's recent masks: what a clip's pictures between the judged frames must hide.
#[derive(Debug, Clone, Default)]
pub struct MaskTrack {
    samples: VecDeque<MaskSample>,
    zones: Vec<Zone>,
    blur_people: bool,
    blur_plates: bool,
}

impl MaskTrack {
    fn note(&mut self, at: DateTime<Utc>, privacy: &PrivacyMask, frame: (u32, u32), keep: chrono::Duration) {
        self.blur_people = privacy.blur_people;
        self.blur_plates = privacy.blur_plates;
        self.zones = privacy.zones.clone();
        let (people, plates) = (privacy.people.clone(), privacy.plates.clone());
        self.samples.push_back(MaskSample { at, people, plates, frame });
        while self.samples.front().is_some_and(|s| s.at < at - keep) {
            self.samples.pop_front();
        }
    }

    /// Masks a clip picture shown at `at`, of any size: privacy zones black; with people-blurring
    /// (or plate-blurring), every person (plate) the judge found within a second of it blurred
    /// (boxes of all those frames, as a person moves between them), or the whole picture when the
    /// judge saw no frame that near.
    pub fn apply(&self, at: DateTime<Utc>, picture: &mut RgbImage) {
        let (width, height) = picture.dimensions();
        if self.blur_people || self.blur_plates {
            let near: Vec<&MaskSample> =
                self.samples.iter().filter(|s| (s.at - at).num_milliseconds().abs() <= MASK_NEAR_MS).collect();
            if near.is_empty() {
                super::privacy::blur_box(
                    picture,
                    &BoundingBox { x1: 0.0, y1: 0.0, x2: width as f32, y2: height as f32 },
                );
            }
            let (mut people, mut plates) = (Vec::new(), Vec::new());
            for sample in near {
                let (sx, sy) =
                    (width as f32 / sample.frame.0.max(1) as f32, height as f32 / sample.frame.1.max(1) as f32);
                let scaled =
                    |b: &BoundingBox| BoundingBox { x1: b.x1 * sx, y1: b.y1 * sy, x2: b.x2 * sx, y2: b.y2 * sy };
                if self.blur_people {
                    people.extend(sample.people.iter().map(scaled));
                }
                plates.extend(sample.plates.iter().map(scaled));
            }
            // The same person on the twenty frames around the picture is blurred once.
            for person in super::privacy::merged_boxes(people) {
                super::privacy::blur_box(picture, &person);
            }
            for plate in super::privacy::merged_boxes(plates) {
                super::privacy::blur_plate(picture, &plate);
            }
        }
        for zone in &self.zones {
            super::privacy::black_out(picture, zone);
        }
    }
}

/// Whether a camera's clips must be re-encoded masked: its pictures blur people or plates, or
/// black out zones.
fn masks(privacy: &PrivacyMask) -> bool {
    privacy.blur_people || privacy.blur_plates || !privacy.zones.is_empty()
}

/// When the clips' work must be over: set when the agent stops (systemd waits `TimeoutStopSec`
/// for it), read by the writers and the re-encoding thread, so nothing waits on a GStreamer
/// pipeline past it.
#[derive(Debug, Clone, Default)]
pub struct StopDeadline(Arc<Mutex<Option<Instant>>>);

impl StopDeadline {
    pub fn set(&self, at: Instant) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
    }

    pub fn get(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn passed(&self) -> bool {
        self.get().is_some_and(|at| Instant::now() >= at)
    }

    /// `limit` from now, or the deadline when that comes first.
    pub fn within(&self, limit: Duration) -> Instant {
        let by = Instant::now() + limit;
        self.get().map_or(by, |at| at.min(by))
    }
}

/// What a masked clip's re-encoding made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reencoded {
    pub pictures: u64,
    /// The last picture written, from the clip's start.
    pub shown: chrono::Duration,
    /// Ended at the stop deadline before the raw clip's end.
    pub stopped: bool,
}

/// Re-encodes a masked camera's raw clip with its masks, stopping at the deadline.
pub type Reencode = Arc<
    dyn Fn(&Path, &Path, &ClipsConfig, &MaskTrack, DateTime<Utc>, &StopDeadline) -> Result<Reencoded, String>
        + Send
        + Sync,
>;

/// The re-encoder of this build: GStreamer, or none.
pub fn masked_reencoder() -> Reencode {
    Arc::new(|raw, out, settings, masks, from, stop| {
        #[cfg(feature = "gstreamer")]
        {
            let size = (settings.masked_width, settings.masked_fps);
            super::clip_mp4::reencode_masked(raw, out, size, stop, |offset, picture| {
                masks.apply(from + offset, picture)
            })
        }
        #[cfg(not(feature = "gstreamer"))]
        {
            let _ = (raw, out, settings, masks, from, stop);
            Err("this build writes no clips (built without the `gstreamer` feature)".to_string())
        }
    })
}

/// Where the pictures of a masked clip made from the camera's frames go, as they come.
pub trait PictureSink: Send {
    /// Hands the encoder a masked picture shown `since_start` after the clip's first; false when
    /// the encoder has no room for it (the picture is left out): now, or by `wait_by` when the
    /// clip is ending (while frames come, the evidence stage does not wait).
    fn write(&mut self, picture: RgbImage, since_start: Duration, wait_by: Option<Instant>) -> Result<bool, String>;
    /// Whether the encoder has room for a picture now (while frames come, one it has no room
    /// for waits in memory for the next frame).
    fn has_room(&self) -> bool;
    /// Ends the file, waiting until `by` at most (what was written stays playable).
    fn finish(self: Box<Self>, by: Instant) -> Result<(), String>;
}

/// Opens the writer of a masked clip made from the camera's frames: its file, picture size and
/// pictures a second.
pub type OpenPictureSink = Box<dyn Fn(&Path, (u32, u32), u32) -> Result<Box<dyn PictureSink>, String> + Send>;

/// The masked clip writer of this build: H.264 in fragmented MP4 through GStreamer, or none.
pub fn masked_writer() -> OpenPictureSink {
    Box::new(|path, size, fps| {
        #[cfg(feature = "gstreamer")]
        {
            super::clip_mp4::MaskedClipWriter::create(path, size, fps).map(|w| Box::new(w) as Box<dyn PictureSink>)
        }
        #[cfg(not(feature = "gstreamer"))]
        {
            let _ = (path, size, fps);
            Err("this build writes no clips (built without the `gstreamer` feature)".to_string())
        }
    })
}

/// A masked camera's last pictures, shrunk to the masked clips' size and rate, unmasked and in
/// memory only (never served): the pre-roll of its next clip made from its frames, and the
/// pictures of the last second, which wait for the masks of the frames after them. Kept only
/// while its judged frames come at the masked clips' rate: a camera read at fewer frames a
/// second (its `fps`), or an overloaded box, would give a choppier clip than its raw video
/// re-encoded, so its clips are made that way instead.
#[derive(Default)]
struct RecentPictures {
    pictures: VecDeque<(DateTime<Utc>, RgbImage)>,
    /// The camera's newest frame: pictures a second older than it have all their masks.
    newest: Option<DateTime<Utc>>,
    /// The times of its frames of the last `RATE_WINDOW_MS`.
    frames: VecDeque<DateTime<Utc>>,
}

/// Over how long a camera's judged frames must come at the masked clips' rate (at least
/// `KEEPING_UP` of it) for its clips to be made of them.
const RATE_WINDOW_MS: i64 = 2000;
const KEEPING_UP: f64 = 0.8;

impl RecentPictures {
    /// Notes a frame; false when it is not newer than the last.
    fn note(&mut self, at: DateTime<Utc>) -> bool {
        if self.newest.is_some_and(|newest| at <= newest) {
            return false;
        }
        self.newest = Some(at);
        self.frames.push_back(at);
        while self.frames.front().is_some_and(|t| *t <= at - chrono::Duration::milliseconds(RATE_WINDOW_MS)) {
            self.frames.pop_front();
        }
        true
    }

    /// Whether the camera's frames came at `fps` (at least `KEEPING_UP` of it) over the whole of
    /// the last `RATE_WINDOW_MS`.
    fn keeps_up(&self, fps: u32) -> bool {
        let (Some(oldest), Some(newest)) = (self.frames.front(), self.newest) else { return false };
        let window = chrono::Duration::milliseconds(RATE_WINDOW_MS);
        let full_window = *oldest <= newest - window * 9 / 10;
        let wanted = RATE_WINDOW_MS as f64 / 1000.0 * f64::from(fps) * KEEPING_UP;
        full_window && self.frames.len() as f64 >= wanted
    }
}

/// Shrinks frames to a masked clip's width (area average; `fast_image_resize`, whose SIMD
/// makes a 1280×720 frame 640×360 in about 1 ms, ten times less than `image`'s thumbnail).
#[derive(Default)]
struct Shrinker(fast_image_resize::Resizer);

impl Shrinker {
    /// `picture` at most `width` wide (and even sides), keeping its shape; or exactly `size`.
    fn shrink(&mut self, picture: &RgbImage, width: u32, size: Option<(u32, u32)>) -> Result<RgbImage, String> {
        let (from_width, from_height) = picture.dimensions();
        let (to_width, to_height) = size.unwrap_or_else(|| crate::source::scaled_size(from_width, from_height, width));
        if (to_width, to_height) == (from_width, from_height) {
            return Ok(picture.clone());
        }
        use fast_image_resize::{images, FilterType, PixelType, ResizeAlg, ResizeOptions};
        let source = images::ImageRef::new(from_width, from_height, picture.as_raw(), PixelType::U8x3)
            .map_err(|e| format!("a {from_width}×{from_height} picture: {e}"))?;
        let mut shrunk = images::Image::new(to_width.max(1), to_height.max(1), PixelType::U8x3);
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Box));
        self.0.resize(&source, &mut shrunk, &options).map_err(|e| format!("shrinking a picture: {e}"))?;
        RgbImage::from_raw(shrunk.width(), shrunk.height(), shrunk.into_vec())
            .ok_or_else(|| "a shrunk picture of the wrong size".to_string())
    }
}

/// A masked clip made from the camera's frames as they come.
#[derive(Default)]
struct FromFrames {
    /// Opened at the first picture (its size is the clip's).
    sink: Option<Box<dyn PictureSink>>,
    size: Option<(u32, u32)>,
    /// The clip's pictures start here (its pre-roll).
    from: DateTime<Utc>,
    /// The last picture handed on.
    written_until: Option<DateTime<Utc>>,
    /// The writer failed (the clip is cut short there): nothing more is written.
    failed: bool,
}

/// Where a clip's pictures go.
pub trait ClipSink: Send {
    fn write(&mut self, unit: &EncodedUnit) -> Result<(), String>;
    /// Ends the file, waiting until `by` at most (what was written stays playable).
    fn finish(self: Box<Self>, by: Instant) -> Result<(), String>;
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
    /// Other events of the camera the clip covers (they started while it was recording).
    pub also: Vec<Uuid>,
    pub camera: String,
    /// Inside the evidence folder, e.g. `2026-11-30/<event_id>-clip.mp4`.
    pub file: String,
    /// The wall-clock times of its first and last pictures.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub pictures: u64,
    /// Pictures lost between the camera and the clip (the evidence stage fell behind the tap; or,
    /// made from the frames, the encoder had no room).
    pub missed: u64,
    /// Why it ended before its planned end, if it did (the stream's format changed, an error).
    pub cut_short: Option<String>,
}

struct Recording {
    /// The event the clip was started for; it names the file.
    event_id: Uuid,
    /// Events of the same camera that started while it was recording: the clip serves them too.
    also: Vec<Uuid>,
    /// Those of its events that have not ended: the clip goes on while any is open.
    open: BTreeSet<Uuid>,
    camera: String,
    file: String,
    /// Where the video is cut to: the evidence file, or for a masked camera its raw file.
    path: PathBuf,
    /// A masked camera's clip goes through re-encoding with its masks.
    masked: bool,
    /// A masked clip made from the camera's frames instead (nothing cut from the tap).
    from_frames: Option<FromFrames>,
    tap: Arc<VideoTap>,
    /// The last unit taken from the tap.
    cursor: u64,
    /// `post_roll_secs` after the latest end of its events.
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

/// Masked clips waiting for their re-encoding at most: more are not kept (logged), so a busy
/// scene cannot pile up work and memory.
const MAX_WAITING_REENCODES: usize = 3;

/// A clip writer is given this long to end its file.
const FINISH_LIMIT: Duration = Duration::from_secs(20);

/// After the stop deadline the re-encoder still ends its file (its encoder's last pictures and
/// the MP4's last fragment): this long at most.
pub const REENCODE_GRACE: Duration = Duration::from_secs(2);

/// Why a clip ends before its planned end when the agent stops.
const STOPPED: &str = "the agent stopped before the clip's planned end";

/// A masked clip for the re-encoding thread.
struct ReencodeJob {
    event_id: Uuid,
    raw: PathBuf,
    out: PathBuf,
    masks: MaskTrack,
    from: DateTime<Utc>,
}

/// The one thread that re-encodes masked clips, one after the other (started at the first).
struct ReencodeWorker {
    jobs: mpsc::Sender<ReencodeJob>,
    results: mpsc::Receiver<(Uuid, Result<Reencoded, String>)>,
    thread: std::thread::JoinHandle<()>,
}

pub struct ClipRecorder {
    settings: ClipsConfig,
    evidence_dir: PathBuf,
    raw_dir: PathBuf,
    open_sink: OpenSink,
    reencode: Reencode,
    recordings: Vec<Recording>,
    /// Masked clips handed to the worker, waiting for its answer.
    reencoding: Vec<FinishedClip>,
    worker: Option<ReencodeWorker>,
    /// The masks of each masked camera's recent frames.
    masks: BTreeMap<String, MaskTrack>,
    /// Where masked clips made from the cameras' frames are written; none: every masked clip is
    /// its raw clip re-encoded.
    open_picture_sink: Option<OpenPictureSink>,
    /// Each such camera's last pictures.
    recent: BTreeMap<String, RecentPictures>,
    shrinker: Shrinker,
    /// Set when the agent stops.
    stop: StopDeadline,
}

impl ClipRecorder {
    /// A recorder writing into `evidence_dir`, masked cameras' raw clips into `raw_dir` (emptied
    /// now: a raw clip left by a crash is unmasked video and goes).
    pub fn new(
        settings: ClipsConfig,
        evidence_dir: &Path,
        raw_dir: &Path,
        open_sink: OpenSink,
        reencode: Reencode,
    ) -> Self {
        if let Ok(entries) = std::fs::read_dir(raw_dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Self {
            settings,
            evidence_dir: evidence_dir.to_owned(),
            raw_dir: raw_dir.to_owned(),
            open_sink,
            reencode,
            recordings: Vec::new(),
            reencoding: Vec::new(),
            worker: None,
            masks: BTreeMap::new(),
            open_picture_sink: None,
            recent: BTreeMap::new(),
            shrinker: Shrinker::default(),
            stop: StopDeadline::default(),
        }
    }

    /// Makes the masked clips of cameras whose frames are decoded from their clips' stream from
    /// those frames, written by `open`.
    pub fn masking_frames_into(mut self, open: OpenPictureSink) -> Self {
        self.open_picture_sink = Some(open);
        self
    }

    /// Clips being written or re-encoded now.
    pub fn recording(&self) -> usize {
        self.recordings.len() + self.reencoding.len()
    }

    /// How long a camera's masks are kept: from the pre-roll of a clip to its end.
    fn mask_memory(&self) -> chrono::Duration {
        seconds(self.settings.pre_roll_secs + self.settings.max_secs + self.settings.post_roll_secs + 15.0)
    }

    /// Starts a clip for each event that starts on this frame (and has pictures), plans the end of
    /// each that ends.
    pub fn observe<'a>(&mut self, frame: &Frame, events: impl Iterator<Item = &'a Event>, privacy: &PrivacyMask) {
        if frame.video.is_some() && masks(privacy) {
            let keep = self.mask_memory();
            let size = frame.image.dimensions();
            self.masks.entry(frame.camera.to_string()).or_default().note(frame.captured_at, privacy, size, keep);
        }
        // The pictures the camera's clip made from its frames has yet to get are kept whatever
        // their age (frames may come slower than a picture's second of waiting for its masks).
        let unwritten = self.recordings.iter().filter(|r| *r.camera == *frame.camera).find_map(|r| {
            let frames = r.from_frames.as_ref()?;
            Some(frames.written_until.map_or(frames.from, |last| last + chrono::Duration::nanoseconds(1)))
        });
        if unwritten.is_some() || (masks(privacy) && self.can_mask_frames(frame)) {
            self.keep_picture(frame, unwritten);
        }
        for event in events {
            match event.state {
                LifecycleState::Start => self.start(frame, event, privacy),
                LifecycleState::End => {
                    let until = frame.captured_at + seconds(self.settings.post_roll_secs);
                    if let Some(recording) = self.recordings.iter_mut().find(|r| r.open.contains(&event.event_id)) {
                        recording.open.remove(&event.event_id);
                        recording.until = Some(recording.until.map_or(until, |u| u.max(until)));
                    }
                }
                _ => {}
            }
        }
        self.write_from_frames(&frame.camera);
    }

    /// Whether this camera's pictures may be kept for masked clips made of its frames.
    fn can_mask_frames(&self, frame: &Frame) -> bool {
        self.open_picture_sink.is_some() && frame.video.as_ref().is_some_and(|tap| tap.frames_are_decoded_from_it())
    }

    /// Whether this camera's next masked clip is made of its frames: they may be, and they come
    /// at the clip's rate.
    fn masks_frames_now(&self, frame: &Frame) -> bool {
        self.can_mask_frames(frame)
            && self.recent.get(&*frame.camera).is_some_and(|recent| recent.keeps_up(self.settings.masked_fps))
    }

    /// Keeps the frame's picture, shrunk, when the masked clip's rate is due one; forgets those
    /// older than a pre-roll, except those from `unwritten` on (a clip still needs them).
    fn keep_picture(&mut self, frame: &Frame, unwritten: Option<DateTime<Utc>>) {
        let interval = chrono::Duration::milliseconds(1000 / i64::from(self.settings.masked_fps.max(1)));
        let keep = seconds(self.settings.pre_roll_secs.max(MASK_NEAR_MS as f64 / 1000.0)) + interval;
        let recent = self.recent.entry(frame.camera.to_string()).or_default();
        if !recent.note(frame.captured_at) {
            return;
        }
        if unwritten.is_none() && !recent.keeps_up(self.settings.masked_fps) {
            recent.pictures.clear();
            return;
        }
        // A little early is on time: frames come with some jitter.
        let due = recent.pictures.back().is_none_or(|(at, _)| frame.captured_at - *at >= interval * 9 / 10);
        if due {
            match self.shrinker.shrink(&frame.image, self.settings.masked_width, None) {
                Ok(picture) => recent.pictures.push_back((frame.captured_at, picture)),
                Err(e) => tracing::warn!(camera = %frame.camera, "a picture for the masked clip: {e}"),
            }
        }
        let needed = |at: &DateTime<Utc>| unwritten.is_some_and(|from| *at >= from);
        while recent.pictures.front().is_some_and(|(at, _)| *at < frame.captured_at - keep && !needed(at)) {
            recent.pictures.pop_front();
        }
    }

    /// Masks and hands on the pictures of the camera's clip made from its frames whose masks are
    /// complete (a second old).
    fn write_from_frames(&mut self, camera: &str) {
        let patience = self.encoder_patience();
        let Some(recording) = self.recordings.iter_mut().find(|r| r.from_frames.is_some() && r.camera == camera) else {
            return;
        };
        write_pictures(
            recording,
            self.recent.get(camera),
            self.masks.get(camera),
            None,
            patience,
            (&self.open_picture_sink, &mut self.shrinker, self.settings.masked_fps),
        );
    }

    /// How old a picture of a clip made of frames may grow waiting for room in its encoder: a
    /// whole pre-roll, its second of waiting for masks, and `ENCODER_GRACE_MS` more.
    fn encoder_patience(&self) -> chrono::Duration {
        seconds(self.settings.pre_roll_secs) + chrono::Duration::milliseconds(MASK_NEAR_MS + ENCODER_GRACE_MS)
    }

    fn start(&mut self, frame: &Frame, event: &Event, privacy: &PrivacyMask) {
        let Some(tap) = &frame.video else { return };
        let masked = masks(privacy);
        // One clip per camera at a time: an event that starts while it records joins it (the
        // same video, cut and encoded once).
        if let Some(recording) = self.recordings.iter_mut().find(|r| r.camera == event.camera) {
            if recording.event_id != event.event_id && !recording.also.contains(&event.event_id) {
                recording.also.push(event.event_id);
                recording.open.insert(event.event_id);
            }
            return;
        }
        let from = frame.captured_at - seconds(self.settings.pre_roll_secs);
        // A camera that sends key frames rarely may have sent none since the box joined its
        // stream: the clip then starts at its next one (a clip reaching into the event is better
        // than none), or is not made when none comes before the clip's end.
        let cursor = tap.start_before(from).unwrap_or_else(|| {
            tracing::warn!(camera = %event.camera, event_id = %event.event_id, "the camera's video has no key frame yet: the clip starts at its next one");
            tap.newest()
        });
        let day = frame.captured_at.format("%Y-%m-%d").to_string();
        let file = format!("{day}/{}-clip.mp4", event.event_id);
        let from_frames =
            (masked && self.masks_frames_now(frame)).then(|| FromFrames { from, ..FromFrames::default() });
        let path = if masked && from_frames.is_none() {
            self.raw_dir.join(format!("{}.mp4", event.event_id))
        } else {
            self.evidence_dir.join(&file)
        };
        self.recordings.push(Recording {
            event_id: event.event_id,
            also: Vec::new(),
            open: BTreeSet::from([event.event_id]),
            camera: event.camera.clone(),
            path,
            masked,
            from_frames,
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
        finished.extend(self.collect_reencoded(None));
        finished
    }

    /// The masked clips whose re-encoding is over (when `wait_until`, waiting for all of them
    /// until then: those not done by then are not kept).
    fn collect_reencoded(&mut self, wait_until: Option<Instant>) -> Vec<FinishedClip> {
        let mut finished = Vec::new();
        while !self.reencoding.is_empty() {
            let Some(worker) = &self.worker else { break };
            let answer = match wait_until {
                Some(until) => worker.results.recv_timeout(until.saturating_duration_since(Instant::now())).ok(),
                None => worker.results.try_recv().ok(),
            };
            let Some((event_id, outcome)) = answer else {
                if wait_until.is_some() {
                    for clip in self.reencoding.drain(..) {
                        tracing::error!(camera = %clip.camera, event_id = %clip.event_id, "masked clip not kept: its re-encoding did not end by the stop deadline");
                    }
                }
                break;
            };
            let Some(index) = self.reencoding.iter().position(|c| c.event_id == event_id) else { continue };
            let mut clip = self.reencoding.remove(index);
            match outcome {
                Ok(made) if made.pictures > 0 => {
                    clip.pictures = made.pictures;
                    if made.stopped {
                        clip.to = clip.from + made.shown;
                        clip.cut_short = Some(format!(
                            "the agent stopped while the masked clip was re-encoded ({:.1} s of it kept)",
                            made.shown.num_milliseconds() as f64 / 1000.0
                        ));
                    }
                    finished.push(clip);
                }
                outcome => {
                    let why = outcome.err().unwrap_or_else(|| "no picture came out".into());
                    tracing::error!(camera = %clip.camera, event_id = %clip.event_id, "no masked clip: re-encoding failed: {why}");
                    let _ = std::fs::remove_file(self.evidence_dir.join(&clip.file));
                }
            }
        }
        if wait_until.is_some() {
            // The thread ends when its queue closes; one still busy is left to the process's end.
            if let Some(worker) = self.worker.take() {
                drop(worker.jobs);
                if worker.thread.is_finished() {
                    let _ = worker.thread.join();
                }
            }
        }
        finished
    }

    /// Hands a masked clip to the re-encoding thread (started at the first one).
    fn queue_reencode(&mut self, job: ReencodeJob) -> Result<(), String> {
        if self.worker.is_none() {
            let (jobs, queue) = mpsc::channel::<ReencodeJob>();
            let (answers, results) = mpsc::channel();
            let (settings, reencode, stop) = (self.settings.clone(), self.reencode.clone(), self.stop.clone());
            let thread = std::thread::Builder::new()
                .name("clip-mask".into())
                .spawn(move || {
                    for job in queue {
                        let outcome = reencode(&job.raw, &job.out, &settings, &job.masks, job.from, &stop);
                        // The raw clip shows what the mask hides: it goes whatever happened.
                        let _ = std::fs::remove_file(&job.raw);
                        if answers.send((job.event_id, outcome)).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|e| format!("cannot start the re-encoding thread: {e}"))?;
            self.worker = Some(ReencodeWorker { jobs, results, thread });
        }
        let worker = self.worker.as_ref().ok_or("no re-encoding thread")?;
        worker.jobs.send(job).map_err(|_| "the re-encoding thread stopped".to_string())
    }

    /// Ends every clip now (the agent stops), by `deadline` whatever a clip is doing (then
    /// [`REENCODE_GRACE`] for a masked clip's file): what was written is kept, and a clip that
    /// ends before its planned end says so.
    pub fn finish_all(&mut self, now: DateTime<Utc>, deadline: Instant) -> Vec<FinishedClip> {
        self.stop.set(deadline);
        for recording in &mut self.recordings {
            if recording.planned_end() > now {
                recording.cut_short.get_or_insert_with(|| STOPPED.to_string());
            }
            recording.open.clear();
            recording.until = Some(recording.until.map_or(now, |u| u.min(now)));
        }
        let mut finished = self.pump(now);
        for recording in std::mem::take(&mut self.recordings) {
            finished.extend(self.finish(recording));
        }
        finished.extend(self.collect_reencoded(Some(deadline + REENCODE_GRACE)));
        finished
    }

    /// Writes a recording's new units; true when it is complete.
    fn write_new(&mut self, index: usize, now: DateTime<Utc>) -> bool {
        let open_sink = &self.open_sink;
        let recording = &mut self.recordings[index];
        let end = recording.planned_end();
        if recording.from_frames.is_some() {
            // Its pictures come with the frames (`observe`); it is complete once the frames have
            // passed its end and the second after it (the last pictures' masks), or the camera
            // went quiet.
            let newest = self.recent.get(&recording.camera).and_then(|r| r.newest);
            let masked_to_end = newest.is_some_and(|n| n > end + chrono::Duration::milliseconds(MASK_NEAR_MS));
            return recording.from_frames.as_ref().is_some_and(|f| f.failed)
                || masked_to_end
                || now > end + chrono::Duration::seconds(QUIET_TAP_SECS);
        }
        let since = recording.tap.since(recording.cursor);
        recording.missed += since.missed;
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

    /// Ends a clip's writing: an open camera's clip is complete; a masked camera's raw clip goes
    /// to re-encoding (and comes back from [`Self::collect_reencoded`]).
    fn finish(&mut self, mut recording: Recording) -> Option<FinishedClip> {
        if recording.from_frames.is_some() {
            let (end, camera) = (recording.planned_end(), recording.camera.clone());
            write_pictures(
                &mut recording,
                self.recent.get(&camera),
                self.masks.get(&camera),
                Some((end, self.stop.within(FINISH_LIMIT))),
                self.encoder_patience(),
                (&self.open_picture_sink, &mut self.shrinker, self.settings.masked_fps),
            );
            // Its pictures are masked already: the clip is evidence as it is written.
            recording.masked = false;
        }
        // The writer that was opened (none: no picture came), ended.
        let by = self.stop.within(FINISH_LIMIT);
        let ended = match recording.from_frames.take() {
            Some(frames) => frames.sink.map(|sink| sink.finish(by)),
            None => recording.sink.take().map(|sink| sink.finish(by)),
        }?;
        let Recording {
            event_id, also, camera, file, path, masked, first, last, pictures, missed, mut cut_short, ..
        } = recording;
        if let Err(e) = ended {
            cut_short = Some(e);
        }
        if let Some(why) = &cut_short {
            tracing::warn!(%camera, %event_id, "the event clip ended early: {why}");
        }
        if missed > 0 {
            tracing::warn!(%camera, %event_id, missed, "the event clip lacks pictures: the evidence stage read them too late, or their encoder had no room");
        }
        // An empty or unreadable file is no evidence.
        if pictures == 0 || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) == 0 {
            tracing::error!(%camera, %event_id, file = %path.display(), "the event clip is empty");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        let clip = FinishedClip { event_id, also, camera, file, from: first?, to: last?, pictures, missed, cut_short };
        if !masked {
            return Some(clip);
        }
        let out = self.evidence_dir.join(&clip.file);
        if let Some(parent) = out.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if self.reencoding.len() >= MAX_WAITING_REENCODES {
            tracing::warn!(
                camera = %clip.camera,
                event_id = %clip.event_id,
                "masked clip not kept: {} clips are waiting to be re-encoded already",
                self.reencoding.len()
            );
            let _ = std::fs::remove_file(&path);
            return None;
        }
        let masks = self.masks.get(&clip.camera).cloned().unwrap_or_default();
        let job = ReencodeJob { event_id: clip.event_id, raw: path.clone(), out, masks, from: clip.from };
        match self.queue_reencode(job) {
            Ok(()) => self.reencoding.push(clip),
            Err(e) => {
                tracing::error!(event_id = %clip.event_id, "masked clip not kept: {e}");
                let _ = std::fs::remove_file(&path);
            }
        }
        None
    }
}

/// Hands a clip made from the camera's frames its pictures: those after the last it got, from
/// its pre-roll, up to a second before the camera's newest frame (their masks are complete), or
/// with `to_end` up to its time (the clip ends now; the encoder's room is waited for until its
/// instant). While frames come, the pictures the encoder has no room for wait for the next
/// frame (a clip's pre-roll comes all at once, the encoder holds a few); one that waited until
/// it is `patience` older than the newest frame is left out and counted as missed, so that a
/// stuck encoder cannot make the camera's pictures pile up. An error ends the clip.
fn write_pictures(
    recording: &mut Recording,
    recent: Option<&RecentPictures>,
    masks: Option<&MaskTrack>,
    to_end: Option<(DateTime<Utc>, Instant)>,
    patience: chrono::Duration,
    (open, shrinker, fps): (&Option<OpenPictureSink>, &mut Shrinker, u32),
) {
    let (Some(recent), Some(open)) = (recent, open) else { return };
    let Some(newest) = recent.newest else { return };
    let until = to_end.map_or_else(
        || (newest - chrono::Duration::milliseconds(MASK_NEAR_MS)).min(recording.planned_end()),
        |(end, _)| end,
    );
    let wait_by = to_end.map(|(_, by)| by);
    let Some(frames) = recording.from_frames.as_ref().filter(|f| !f.failed) else { return };
    let (from, after) = (frames.from, frames.written_until);
    let waiting =
        recent.pictures.iter().filter(|(at, _)| *at >= from && *at <= until && after.is_none_or(|after| *at > after));
    for (at, picture) in waiting {
        let no_room = recording.from_frames.as_ref().and_then(|f| f.sink.as_ref()).is_some_and(|sink| !sink.has_room());
        if no_room && to_end.is_none() && newest - *at <= patience {
            break;
        }
        if let Err(e) = write_picture(recording, *at, picture, masks, wait_by, (open, shrinker, fps)) {
            tracing::error!(camera = %recording.camera, event_id = %recording.event_id, "the masked clip ends here: {e}");
            if let Some(frames) = recording.from_frames.as_mut() {
                frames.failed = true;
            }
            recording.cut_short = Some(e);
            return;
        }
    }
}

/// One picture of a clip made from the camera's frames: at the clip's size, masked, to its
/// writer (opened at the first); counted as written or missed.
fn write_picture(
    recording: &mut Recording,
    at: DateTime<Utc>,
    picture: &RgbImage,
    masks: Option<&MaskTrack>,
    wait_by: Option<Instant>,
    (open, shrinker, fps): (&OpenPictureSink, &mut Shrinker, u32),
) -> Result<(), String> {
    let Some(frames) = recording.from_frames.as_mut() else { return Ok(()) };
    frames.written_until = Some(at);
    let mut picture = match frames.size {
        Some(size) if picture.dimensions() != size => shrinker.shrink(picture, size.0, Some(size))?,
        _ => picture.clone(),
    };
    match masks {
        Some(masks) => masks.apply(at, &mut picture),
        // No mask noted for the camera: nothing of its pictures may be shown.
        None => MaskTrack { blur_people: true, ..MaskTrack::default() }.apply(at, &mut picture),
    }
    let sink = match &mut frames.sink {
        Some(sink) => sink,
        empty => {
            if let Some(folder) = recording.path.parent() {
                std::fs::create_dir_all(folder).map_err(|e| format!("cannot make the clip's folder: {e}"))?;
            }
            frames.size = Some(picture.dimensions());
            empty.insert(open(&recording.path, picture.dimensions(), fps)?)
        }
    };
    let first = recording.first.unwrap_or(at);
    if sink.write(picture, (at - first).to_std().unwrap_or_default(), wait_by)? {
        recording.first = Some(first);
        recording.last = Some(at);
        recording.pictures += 1;
    } else {
        recording.missed += 1;
    }
    Ok(())
}

impl Recording {
    /// Where the clip ends as things stand: `max_secs` while any of its events is open, else the
    /// post-roll after the last one ended.
    fn planned_end(&self) -> DateTime<Utc> {
        if self.open.is_empty() {
            self.until.map_or(self.cap, |u| u.min(self.cap))
        } else {
            self.cap
        }
    }
}

fn seconds(value: f64) -> chrono::Duration {
    chrono::Duration::milliseconds((value * 1000.0).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::fixtures::detail;
    use crate::source::video_tap::ArrivingUnit;
    use crate::wire::EventKind;
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
        fn finish(self: Box<Self>, _by: Instant) -> Result<(), String> {
            Ok(())
        }
    }

    fn recorder(dir: &Path, written: &Written) -> ClipRecorder {
        let written = written.clone();
        let open: OpenSink = Box::new(move |path, _| Ok(Box::new(ListSink(written.clone(), path.to_owned()))));
        let refuse: Reencode = Arc::new(|_, _, _, _, _, _| Err("no re-encoding in this test".into()));
        ClipRecorder::new(ClipsConfig::default(), dir, &dir.join("raw"), open, refuse)
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
            motion: None,
        }
    }

    fn event(id: Uuid, state: LifecycleState) -> Event {
        let mut event = crate::judge::fixtures::test_event(EventKind::Object, state, at(0.0));
        event.event_id = id;
        event.camera = "gate".into();
        event
    }

    fn open_privacy() -> PrivacyMask {
        PrivacyMask { people: vec![], blur_people: false, zones: vec![], ..PrivacyMask::default() }
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
    fn a_masked_picture_hides_the_people_of_frames_near_it_and_everything_where_none_was_judged() {
        let original = crate::judge::fixtures::sample("person.jpg"); // 640×424
        let girl = BoundingBox { x1: 175.0, y1: 92.0, x2: 267.0, y2: 368.0 };
        let horse = [400, 140, 590, 330];
        let mut track = MaskTrack::default();
        let privacy = PrivacyMask { people: vec![girl], blur_people: true, zones: vec![], ..PrivacyMask::default() };
        // Judged on the camera's 1280×848 frames at 0 s and 2 s: boxes twice as large.
        let on_camera = PrivacyMask {
            people: vec![BoundingBox { x1: girl.x1 * 2.0, y1: girl.y1 * 2.0, x2: girl.x2 * 2.0, y2: girl.y2 * 2.0 }],
            ..privacy
        };
        for second in [0.0, 2.0] {
            track.note(at(second), &on_camera, (1280, 848), chrono::Duration::seconds(60));
        }
        let girl_box = [175, 92, 267, 368];

        let mut near = original.clone();
        track.apply(at(0.6), &mut near);
        assert!(detail(&near, girl_box) * 4 < detail(&original, girl_box), "the girl is blurred");
        assert_eq!(detail(&near, horse), detail(&original, horse), "the horse stays as it was");

        // 1.0 s from the nearest judged frame at most is near; at 1.5 s from both it is not.
        let mut between = original.clone();
        track.apply(at(3.5), &mut between);
        assert!(detail(&between, horse) * 4 < detail(&original, horse), "no judged frame near: all blurred");
    }

    #[test]
    fn a_still_person_judged_on_every_frame_near_a_picture_is_blurred_once_over_their_boxes() {
        let original = crate::judge::fixtures::sample("person.jpg"); // 640×424
        let mut track = MaskTrack::default();
        // Twenty-one frames a second around the picture, the detector's box moving a pixel or two.
        let boxes: Vec<BoundingBox> = (0..21)
            .map(|i| {
                let jitter = (i % 3) as f32;
                BoundingBox { x1: 175.0 + jitter, y1: 92.0 - jitter, x2: 267.0 + jitter, y2: 368.0 + jitter }
            })
            .collect();
        for (i, girl) in boxes.iter().enumerate() {
            let privacy = PrivacyMask { people: vec![*girl], blur_people: true, ..PrivacyMask::default() };
            track.note(at(i as f64 / 10.0), &privacy, (640, 424), chrono::Duration::seconds(60));
        }
        let mut masked = original.clone();
        track.apply(at(1.0), &mut masked);
        let hull = crate::judge::rules::union(boxes.iter().copied()).unwrap();
        let mut once = original.clone();
        crate::evidence::privacy::blur_box(&mut once, &hull);
        assert!(masked == once, "one blur over the boxes' hull, not one a frame");
        assert!(detail(&masked, [175, 92, 267, 368]) * 4 < detail(&original, [175, 92, 267, 368]), "blurred");
    }

    #[test]
    fn a_camera_blurring_plates_masks_its_clip_with_the_plates_of_frames_near_it() {
        let original = crate::judge::fixtures::sample("person.jpg"); // 640×424
        let plate = BoundingBox { x1: 420.0, y1: 250.0, x2: 500.0, y2: 280.0 };
        let (plate_box, girl_box) = ([420, 250, 500, 280], [175, 92, 267, 368]);
        // People left sharp on this camera; plates blurred.
        let privacy = PrivacyMask { plates: vec![plate], blur_plates: true, ..PrivacyMask::default() };
        assert!(masks(&privacy) && !masks(&PrivacyMask::default()));
        let mut track = MaskTrack::default();
        track.note(at(0.0), &privacy, (640, 424), chrono::Duration::seconds(60));
        let mut near = original.clone();
        track.apply(at(0.5), &mut near);
        assert!(detail(&near, plate_box) * 4 < detail(&original, plate_box), "the plate is blurred");
        assert_eq!(detail(&near, girl_box), detail(&original, girl_box), "the girl is not");
        let mut far = original.clone();
        track.apply(at(5.0), &mut far);
        assert!(detail(&far, girl_box) * 4 < detail(&original, girl_box), "no judged frame near: all blurred");
    }

    #[test]
    fn events_that_start_while_a_camera_records_share_its_clip_which_runs_until_the_last_ends() {
        let dir = tempfile::tempdir().unwrap();
        let written = Written::default();
        let mut clips = recorder(dir.path(), &written);
        let tap = Arc::new(VideoTap::new(std::time::Duration::from_secs(10), 1 << 20));
        tap.set_format("video/x-h264");
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
        // The evidence stage pumps on every frame; here every second.
        let run = |clips: &mut ClipRecorder, from: u32, to: u32| {
            let mut done = Vec::new();
            for second in from..to {
                feed(&tap, f64::from(second), f64::from(second + 1));
                done.extend(clips.pump(at(f64::from(second + 1))));
            }
            done
        };
        run(&mut clips, 0, 10);
        clips.observe(&frame(&tap, 10.0), [event(first, LifecycleState::Start)].iter(), &open_privacy());
        run(&mut clips, 10, 12);
        clips.observe(&frame(&tap, 12.0), [event(second, LifecycleState::Start)].iter(), &open_privacy());
        assert_eq!(clips.recording(), 1, "one clip for the camera");
        run(&mut clips, 12, 14);
        clips.observe(&frame(&tap, 14.0), [event(first, LifecycleState::End)].iter(), &open_privacy());
        assert!(run(&mut clips, 14, 22).is_empty(), "the second event is still on");
        clips.observe(&frame(&tap, 22.0), [event(second, LifecycleState::End)].iter(), &open_privacy());
        let done = run(&mut clips, 22, 29);
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].event_id, done[0].also.clone()), (first, vec![second]));
        assert_eq!((done[0].from, done[0].to), (at(5.0), at(27.0)), "5 s before the first to 5 s after the last");
    }

    #[test]
    fn a_long_event_is_cut_at_max_secs() {
        let dir = tempfile::tempdir().unwrap();
        let written = Written::default();
        let mut clips = recorder(dir.path(), &written);
        let tap = Arc::new(VideoTap::new(std::time::Duration::from_secs(10), 1 << 20));
        tap.set_format("video/x-h264");
        feed(&tap, 0.0, 10.0);
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

    /// The agent stops while one clip runs and while a masked camera's clip is re-encoded by a
    /// re-encoder that would take a minute: both end by the deadline (and its grace), the one cut
    /// short says so, and a re-encoding that never answers is not waited for.
    #[test]
    fn a_stop_ends_every_clip_by_its_deadline_and_says_which_were_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let written = Written::default();
        let open: OpenSink = {
            let written = written.clone();
            Box::new(move |path, _| Ok(Box::new(ListSink(written.clone(), path.to_owned()))))
        };
        // Masks until the stop deadline, then ends with what it has (as the real one does).
        let slow: Reencode = Arc::new(|_, out, _, _, _, stop| {
            let started = Instant::now();
            while !stop.passed() && started.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(10));
            }
            std::fs::write(out, b"masked").map_err(|e| e.to_string())?;
            Ok(Reencoded { pictures: 12, shown: chrono::Duration::seconds(3), stopped: stop.passed() })
        });
        let mut clips = ClipRecorder::new(ClipsConfig::default(), dir.path(), &dir.path().join("raw"), open, slow);
        let tap = Arc::new(VideoTap::new(std::time::Duration::from_secs(10), 1 << 20));
        tap.set_format("video/x-h264");
        feed(&tap, 0.0, 12.0);
        let (open_id, masked_id) = (Uuid::now_v7(), Uuid::now_v7());
        clips.observe(&frame(&tap, 12.0), [event(open_id, LifecycleState::Start)].iter(), &open_privacy());
        let mut masked_frame = frame(&tap, 12.0);
        masked_frame.camera = "station".into();
        let mut masked_event = event(masked_id, LifecycleState::Start);
        masked_event.camera = "station".into();
        let masked = PrivacyMask { people: vec![], blur_people: true, zones: vec![], ..PrivacyMask::default() };
        clips.observe(&masked_frame, [masked_event].iter(), &masked);
        assert_eq!(clips.recording(), 2);
        feed(&tap, 12.0, 15.0);
        assert!(clips.pump(at(15.0)).is_empty(), "both events are still on");

        let deadline = Instant::now() + Duration::from_millis(500);
        let done = clips.finish_all(at(15.0), deadline);
        assert!(Instant::now() <= deadline + REENCODE_GRACE, "the stop waited past its deadline");
        assert_eq!(done.len(), 2, "{done:?}");
        for clip in &done {
            let why = clip.cut_short.as_deref().unwrap_or_default();
            assert!(why.contains("stopped"), "{}: {why:?}", clip.camera);
        }
        let masked_clip = done.iter().find(|c| c.event_id == masked_id).unwrap();
        assert_eq!(masked_clip.to - masked_clip.from, chrono::Duration::seconds(3), "it ends where the masking did");
        assert_eq!(clips.recording(), 0);
    }

    #[test]
    fn a_reencoding_that_never_answers_is_not_waited_for_past_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let written = Written::default();
        let open: OpenSink = {
            let written = written.clone();
            Box::new(move |path, _| Ok(Box::new(ListSink(written.clone(), path.to_owned()))))
        };
        // A pipeline stuck for good: it ignores the deadline.
        let stuck: Reencode = Arc::new(|_, _, _, _, _, _| {
            std::thread::sleep(Duration::from_secs(30));
            Err("stuck".into())
        });
        let mut clips = ClipRecorder::new(ClipsConfig::default(), dir.path(), &dir.path().join("raw"), open, stuck);
        let tap = Arc::new(VideoTap::new(std::time::Duration::from_secs(10), 1 << 20));
        tap.set_format("video/x-h264");
        feed(&tap, 0.0, 12.0);
        let masked = PrivacyMask { people: vec![], blur_people: true, zones: vec![], ..PrivacyMask::default() };
        let id = Uuid::now_v7();
        clips.observe(&frame(&tap, 12.0), [event(id, LifecycleState::Start)].iter(), &masked);
        clips.observe(&frame(&tap, 12.0), [event(id, LifecycleState::End)].iter(), &masked);
        feed(&tap, 12.0, 18.0);
        assert!(clips.pump(at(18.0)).is_empty(), "handed to the re-encoding thread");
        let started = Instant::now();
        let done = clips.finish_all(at(18.0), started + Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_millis(300) + REENCODE_GRACE + Duration::from_millis(500));
        assert!(done.is_empty(), "nothing masked came out: nothing is kept");
    }

    /// A camera that sends a key frame every 25 s, joined between two: an event before the
    /// first key frame gets a clip from that key frame on.
    #[test]
    fn an_event_before_the_first_key_frame_gets_a_clip_from_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let written = Written::default();
        let mut clips = recorder(dir.path(), &written);
        let tap = Arc::new(VideoTap::new(std::time::Duration::from_secs(10), 1 << 20));
        tap.set_format("video/x-h264");
        feed(&tap, 0.5, 0.9); // the pictures before the key frame of 1 s
        let id = Uuid::now_v7();
        clips.observe(&frame(&tap, 0.9), [event(id, LifecycleState::Start)].iter(), &open_privacy());
        assert_eq!(clips.recording(), 1, "the clip waits for the key frame");
        feed(&tap, 0.9, 3.0);
        clips.observe(&frame(&tap, 3.0), [event(id, LifecycleState::End)].iter(), &open_privacy());
        feed(&tap, 3.0, 10.0);
        let done = clips.pump(at(10.0));
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].from, done[0].to), (at(1.0), at(8.0)));
        assert!(written.0.lock().unwrap()[0].1, "the clip starts with a key frame");
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

    /// The pictures a masked clip made of the frames got: when (from its start) and what; the
    /// deadline each was handed with; the room its encoder has left (None: always room).
    #[derive(Clone, Default)]
    struct Pictures(Arc<Mutex<Vec<(Duration, RgbImage)>>>, Arc<Mutex<Vec<Option<Instant>>>>, Arc<Mutex<Option<usize>>>);

    struct PictureList(Pictures, PathBuf);

    /// A recorder whose masked clips of a one-stream camera are made of its frames into
    /// `pictures`, and that camera's tap (H.264, its frames decoded from it).
    fn clips_made_of_frames(dir: &Path, pictures: &Pictures) -> (ClipRecorder, Arc<VideoTap>) {
        let open: OpenPictureSink = {
            let pictures = pictures.clone();
            Box::new(move |path, _, _| Ok(Box::new(PictureList(pictures.clone(), path.to_owned()))))
        };
        let clips = recorder(dir, &Written::default()).masking_frames_into(open);
        let tap = Arc::new(VideoTap::new(std::time::Duration::from_secs(10), 1 << 20).with_frames_decoded_from_it());
        tap.set_format("video/x-h264");
        (clips, tap)
    }

    impl PictureSink for PictureList {
        fn write(
            &mut self,
            picture: RgbImage,
            since_start: Duration,
            wait_by: Option<Instant>,
        ) -> Result<bool, String> {
            let mut room = self.0 .2.lock().unwrap();
            if *room == Some(0) {
                return Ok(false);
            }
            *room = room.map(|room| room - 1);
            self.0 .0.lock().unwrap().push((since_start, picture));
            self.0 .1.lock().unwrap().push(wait_by);
            Ok(true)
        }

        fn has_room(&self) -> bool {
            *self.0 .2.lock().unwrap() != Some(0)
        }

        fn finish(self: Box<Self>, _by: Instant) -> Result<(), String> {
            std::fs::create_dir_all(self.1.parent().unwrap()).map_err(|e| e.to_string())?;
            std::fs::write(&self.1, b"masked").map_err(|e| e.to_string())
        }
    }

    /// A one-stream camera with people-blurring (its frames are decoded from the stream its clip
    /// would be cut from): the masked clip is made of its frames, from the pre-roll to the
    /// post-roll at `masked_fps` and `masked_width`; in every picture the girl is blurred (on the
    /// frames where the detector missed her too, as she was found within a second of them) and
    /// the horse is as it was; no raw clip is written and nothing is re-encoded.
    #[test]
    fn a_one_stream_masked_camera_makes_its_clip_of_its_judged_frames_each_masked() {
        let dir = tempfile::tempdir().unwrap();
        let pictures = Pictures::default();
        let open: OpenPictureSink = {
            let pictures = pictures.clone();
            Box::new(move |path, _, fps| {
                assert_eq!(fps, 5);
                Ok(Box::new(PictureList(pictures.clone(), path.to_owned())))
            })
        };
        let mut clips = recorder(dir.path(), &Written::default()).masking_frames_into(open);
        let tap = Arc::new(VideoTap::new(std::time::Duration::from_secs(10), 1 << 20).with_frames_decoded_from_it());
        tap.set_format("video/x-h264");
        let original = crate::judge::fixtures::sample("person.jpg"); // 640×424
        let camera = Arc::new(image::imageops::resize(&original, 1280, 848, image::imageops::FilterType::Triangle));
        let girl = BoundingBox { x1: 350.0, y1: 184.0, x2: 534.0, y2: 736.0 }; // on the camera's frames
        let id = Uuid::now_v7();
        for tenth in 0..=200 {
            let seconds = f64::from(tenth) / 10.0;
            let mut frame = frame(&tap, seconds);
            frame.image = camera.clone();
            // The detector misses her for 1.4 s up to the event's first frames: the picture at
            // 10 s has her only in the frames after it, which come after the event started.
            let missed = (9.0..10.4).contains(&seconds);
            let people = if missed { vec![] } else { vec![girl] };
            let privacy = PrivacyMask { people, blur_people: true, ..PrivacyMask::default() };
            let happening = match tenth {
                100 => Some(event(id, LifecycleState::Start)),
                120 => Some(event(id, LifecycleState::End)),
                _ => None,
            };
            clips.observe(&frame, happening.iter(), &privacy);
            let done = clips.pump(at(seconds));
            if seconds <= 18.0 {
                assert!(done.is_empty(), "{seconds} s: the clip ends a second after its post-roll");
                continue;
            }
            assert_eq!(done.len(), 1, "{seconds} s");
            let clip = &done[0];
            assert_eq!((clip.from, clip.to), (at(5.0), at(17.0)), "5 s of pre-roll and of post-roll");
            assert_eq!(clip.pictures, 61, "5 pictures a second");
            assert!(dir.path().join(&clip.file).is_file());
            break;
        }
        assert!(!dir.path().join("raw").exists(), "no raw clip");
        let pictures = pictures.0.lock().unwrap();
        assert_eq!(pictures.len(), 61);
        let reference = Shrinker::default().shrink(&camera, 640, None).unwrap();
        let (girl_box, horse_box) = ([175, 92, 267, 368], [400, 140, 590, 330]);
        for (index, (since_start, picture)) in pictures.iter().enumerate() {
            assert_eq!(*since_start, Duration::from_millis(200 * index as u64));
            assert_eq!(picture.dimensions(), (640, 424));
            let (girl_after, girl_before) = (detail(picture, girl_box), detail(&reference, girl_box));
            assert!(girl_after * 3 < girl_before, "picture {index}: the girl shows: {girl_before} → {girl_after}");
            assert_eq!(detail(picture, horse_box), detail(&reference, horse_box), "picture {index}: the horse changed");
        }
    }

    /// A one-stream masked camera whose encoder holds 4 pictures and takes them at 20 a second
    /// (2 between two frames): the clip's 5 s of pre-roll (25 pictures) come due at once, the
    /// encoder has room for 4; the rest wait in memory for the next frames, and the clip has
    /// every picture, none missed. An encoder that stops taking pictures has them left out once
    /// they are a pre-roll and 3 s old, and the pictures kept do not pile up.
    #[test]
    fn a_clip_made_of_frames_waits_for_its_encoders_room_but_not_for_ever() {
        for encoder_takes_pictures in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let pictures = Pictures::default();
            *pictures.2.lock().unwrap() = Some(4);
            let (mut clips, tap) = clips_made_of_frames(dir.path(), &pictures);
            let masked = PrivacyMask { people: vec![], blur_people: true, ..PrivacyMask::default() };
            let id = Uuid::now_v7();
            let mut done = Vec::new();
            let mut most_kept = 0;
            for tenth in 0..=300 {
                let seconds = f64::from(tenth) / 10.0;
                let happening = match tenth {
                    100 => Some(event(id, LifecycleState::Start)),
                    120 => Some(event(id, LifecycleState::End)),
                    _ => None,
                };
                clips.observe(&frame(&tap, seconds), happening.iter(), &masked);
                done.extend(clips.pump(at(seconds)));
                most_kept = most_kept.max(clips.recent.get("gate").map_or(0, |r| r.pictures.len()));
                if encoder_takes_pictures {
                    let mut room = pictures.2.lock().unwrap();
                    *room = room.map(|room| (room + 2).min(4));
                }
            }
            assert_eq!(done.len(), 1, "{done:?}");
            let clip = &done[0];
            if encoder_takes_pictures {
                assert_eq!((clip.pictures, clip.missed), (61, 0), "every picture from the pre-roll to the post-roll");
                let handed = pictures.0.lock().unwrap();
                let times: Vec<_> = handed.iter().map(|(since_start, _)| *since_start).collect();
                let expected: Vec<_> = (0..61).map(|i| Duration::from_millis(200 * i)).collect();
                assert_eq!(times, expected, "in order, none twice");
            } else {
                assert_eq!(clip.pictures, 4, "what the encoder took");
                assert_eq!(clip.missed, 57, "the rest, left out");
            }
            // The pre-roll (5 s), the masks' second and the encoder's 2 s at 5 a second, and one.
            assert!(most_kept <= 41, "{most_kept} pictures kept at once");
        }
    }

    /// The same camera read at 2 frames a second (below the masked clip's 5): a clip made of its
    /// frames would be choppier than its video, so its raw clip is re-encoded, as for a camera
    /// with two streams, and no picture is kept for it.
    #[test]
    fn a_masked_camera_whose_frames_come_slower_than_the_clip_rate_has_its_raw_clip_reencoded() {
        let dir = tempfile::tempdir().unwrap();
        let opened = Arc::new(Mutex::new(0));
        let open: OpenPictureSink = {
            let opened = opened.clone();
            Box::new(move |path, _, _| {
                *opened.lock().unwrap() += 1;
                Ok(Box::new(PictureList(Pictures::default(), path.to_owned())))
            })
        };
        let reencoded = Arc::new(Mutex::new(Vec::new()));
        let reencode: Reencode = {
            let reencoded = reencoded.clone();
            Arc::new(move |raw, out, _, _, _, _| {
                reencoded.lock().unwrap().push(raw.to_owned());
                std::fs::write(out, b"masked").map_err(|e| e.to_string())?;
                Ok(Reencoded { pictures: 10, shown: chrono::Duration::seconds(2), stopped: false })
            })
        };
        let written = Written::default();
        let sink: OpenSink = {
            let written = written.clone();
            Box::new(move |path, _| {
                std::fs::write(path, b"raw").map_err(|e| e.to_string())?;
                Ok(Box::new(ListSink(written.clone(), path.to_owned())))
            })
        };
        let mut clips = ClipRecorder::new(ClipsConfig::default(), dir.path(), &dir.path().join("raw"), sink, reencode)
            .masking_frames_into(open);
        let tap = Arc::new(VideoTap::new(std::time::Duration::from_secs(10), 1 << 20).with_frames_decoded_from_it());
        tap.set_format("video/x-h264");
        feed(&tap, 0.0, 30.0);
        let masked = PrivacyMask { people: vec![], blur_people: true, ..PrivacyMask::default() };
        let id = Uuid::now_v7();
        let mut done = Vec::new();
        for half in 0..=60 {
            let seconds = f64::from(half) / 2.0;
            let happening = match half {
                20 => Some(event(id, LifecycleState::Start)),
                24 => Some(event(id, LifecycleState::End)),
                _ => None,
            };
            clips.observe(&frame(&tap, seconds), happening.iter(), &masked);
            assert!(clips.recent.get("gate").is_none_or(|r| r.pictures.is_empty()), "{seconds} s: a picture kept");
            done.extend(clips.pump(at(seconds)));
        }
        done.extend(clips.finish_all(at(30.0), Instant::now() + Duration::from_secs(5)));
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(*opened.lock().unwrap(), 0, "no clip made of the frames");
        assert_eq!(reencoded.lock().unwrap().len(), 1, "the raw clip is re-encoded");
    }

    /// The agent stops while a one-stream masked camera's clip is made of its frames: the last
    /// second of pictures, which waited for their masks, goes to the encoder then, waiting for its
    /// room until the stop's deadline (while frames come, nothing waits), and the clip says it
    /// was cut short.
    #[test]
    fn a_stop_hands_a_clip_made_of_frames_its_last_second_waiting_for_the_encoder() {
        let dir = tempfile::tempdir().unwrap();
        let pictures = Pictures::default();
        let (mut clips, tap) = clips_made_of_frames(dir.path(), &pictures);
        let masked = PrivacyMask { people: vec![], blur_people: true, ..PrivacyMask::default() };
        let id = Uuid::now_v7();
        for tenth in 0..=120 {
            let happening = (tenth == 100).then(|| event(id, LifecycleState::Start));
            clips.observe(&frame(&tap, f64::from(tenth) / 10.0), happening.iter(), &masked);
            assert!(clips.pump(at(f64::from(tenth) / 10.0)).is_empty());
        }
        let while_frames_came = pictures.1.lock().unwrap().len();
        assert!(pictures.1.lock().unwrap().iter().all(Option::is_none), "a picture waited while frames came");
        let deadline = Instant::now() + Duration::from_secs(5);
        let done = clips.finish_all(at(12.0), deadline);
        assert_eq!(done.len(), 1);
        assert!(done[0].cut_short.as_deref().unwrap_or_default().contains("stopped"), "{:?}", done[0].cut_short);
        assert_eq!(done[0].to, at(12.0), "up to the last frame");
        let waits = pictures.1.lock().unwrap();
        assert_eq!(waits.len() - while_frames_came, 5, "the last second of pictures at the stop");
        assert!(waits[while_frames_came..].iter().all(|by| by.is_some_and(|by| by <= deadline)), "{waits:?}");
    }
}
