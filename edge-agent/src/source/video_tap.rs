//! A camera's recent encoded video, kept in memory exactly as it arrived (no re-encode), so an
//! event clip can begin before the event did: the GStreamer source pushes each access unit into the
//! camera's [`VideoTap`]; the evidence stage reads it through [`super::Frame::video`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// One encoded picture (an access unit) as the camera sent it.
#[derive(Debug)]
pub struct EncodedUnit {
    /// Counts up from 1 for the camera, across reconnections: a reader's place in the tap.
    pub seq: u64,
    /// When the box received it: what clips are cut by (frames carry the same clock).
    pub received_at: DateTime<Utc>,
    /// Presentation and decoding times on the tap's continuous timeline, in nanoseconds.
    pub pts_ns: Option<u64>,
    pub dts_ns: Option<u64>,
    pub duration_ns: Option<u64>,
    /// A picture that decodes on its own (IDR/IRAP): clips start at one.
    pub keyframe: bool,
    /// The stream's format in GStreamer caps notation (codec, stream format, codec data); a clip
    /// ends where it changes.
    pub format: Arc<str>,
    pub data: Vec<u8>,
}

/// An encoded picture as the decoder's parser passed it, before the tap numbers and re-times it.
#[derive(Debug)]
pub struct ArrivingUnit {
    pub pts_ns: Option<u64>,
    pub dts_ns: Option<u64>,
    pub duration_ns: Option<u64>,
    pub keyframe: bool,
    pub data: Vec<u8>,
}

/// What a reader gets from [`VideoTap::since`].
#[derive(Debug, Default)]
pub struct Since {
    pub units: Vec<Arc<EncodedUnit>>,
    /// Units the reader asked for that the tap no longer had (the reader fell behind).
    pub missed: u64,
}

/// A jump forward larger than this is a new stream, not a gap (a camera that paused, a file that
/// looped to a later point).
const LARGEST_GAP_NS: u64 = 10_000_000_000;
/// The step put between two streams joined on the timeline: a picture at 25 frames/s.
const JOIN_STEP_NS: u64 = 40_000_000;
/// Pictures a stream without decoding times may show ahead of their decoding order (B-frames
/// between two references, pyramids included): its decoding times run this many pictures behind.
const REORDER_DEPTH: usize = 4;
/// Without decoding times (RTP brings presentation times only) a picture other than a key frame
/// may show this much before one that came earlier: B-frames reordered, not a stream that started
/// again (a key frame never shows before a picture decoded ahead of it).
const REORDER_WINDOW_NS: u64 = 2_000_000_000;

pub struct VideoTap {
    keep: chrono::Duration,
    max_bytes: usize,
    /// The camera's frames are decoded from this stream (one stream per camera), so they show
    /// the pictures its clips hold; not so for a main stream kept only for clips.
    frames_decoded_from_it: bool,
    state: Mutex<TapState>,
}

#[derive(Default)]
struct TapState {
    units: VecDeque<Arc<EncodedUnit>>,
    bytes: usize,
    last_seq: u64,
    format: Option<Arc<str>>,
    /// Added to arriving timestamps (signed: a stream that starts again from zero moves forward).
    offset_ns: i128,
    /// The last decoding time given out and the duration of that unit.
    last_out_ns: Option<u64>,
    last_step_ns: u64,
    /// A stream without decoding times: the presentation times of its last pictures, in order
    /// (decoding times are made from them).
    reorder: Vec<u64>,
}

impl std::fmt::Debug for VideoTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("VideoTap").field("units", &state.units.len()).field("bytes", &state.bytes).finish()
    }
}

impl VideoTap {
    /// A tap that keeps at least `keep` of video (from a key frame) and at most `max_bytes`.
    pub fn new(keep: Duration, max_bytes: usize) -> Self {
        let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::seconds(5));
        Self {
            keep,
            max_bytes,
            frames_decoded_from_it: false,
            state: Mutex::new(TapState { last_step_ns: JOIN_STEP_NS, ..Default::default() }),
        }
    }

    /// The tap of the stream the camera's frames are decoded from.
    pub fn with_frames_decoded_from_it(self) -> Self {
        Self { frames_decoded_from_it: true, ..self }
    }

    /// Whether the camera's frames are decoded from this stream: then a masked clip can be made
    /// of them instead of decoding the stream again.
    pub fn frames_are_decoded_from_it(&self) -> bool {
        self.frames_decoded_from_it
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TapState> {
        // A panic while holding it cannot leave the queue half-changed: keep going with it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The stream's format from now on (the parser's caps).
    pub fn set_format(&self, format: &str) {
        let mut state = self.state();
        if state.format.as_deref() != Some(format) {
            state.format = Some(Arc::from(format));
        }
    }

    /// Keeps a unit that arrived at `received_at`; drops what is older than needed. Units before
    /// the format is known cannot be written into a clip and are not kept.
    pub fn push(&self, unit: ArrivingUnit, received_at: DateTime<Utc>) {
        let mut state = self.state();
        let Some(format) = state.format.clone() else { return };
        let (pts_ns, dts_ns) = state.retime(unit.pts_ns, unit.dts_ns, unit.duration_ns, unit.keyframe);
        state.last_seq += 1;
        let seq = state.last_seq;
        state.bytes += unit.data.len();
        state.units.push_back(Arc::new(EncodedUnit {
            seq,
            received_at,
            pts_ns,
            dts_ns,
            duration_ns: unit.duration_ns,
            keyframe: unit.keyframe,
            format,
            data: unit.data,
        }));
        state.trim(received_at - self.keep, self.max_bytes);
    }

    /// The units after `after_seq` (0: all), oldest first.
    pub fn since(&self, after_seq: u64) -> Since {
        let state = self.state();
        let first_kept = state.units.front().map_or(state.last_seq + 1, |u| u.seq);
        let missed = first_kept.saturating_sub(after_seq + 1);
        let units = state.units.iter().filter(|u| u.seq > after_seq).cloned().collect();
        Since { units, missed }
    }

    /// Where a clip that should show `from` on starts: just before the last key frame at or before
    /// `from` (or the oldest key frame kept, when the tap does not reach back that far). None when
    /// the tap holds no key frame yet.
    pub fn start_before(&self, from: DateTime<Utc>) -> Option<u64> {
        let state = self.state();
        let keyframes = || state.units.iter().filter(|u| u.keyframe);
        let start = keyframes().filter(|u| u.received_at <= from).last().or_else(|| keyframes().next())?;
        Some(start.seq - 1)
    }

    /// The place after the newest unit: a reader from here gets what comes next.
    pub fn newest(&self) -> u64 {
        self.state().last_seq
    }

    /// Bytes of video held now.
    pub fn bytes(&self) -> usize {
        self.state().bytes
    }

    /// How far back the tap reaches now.
    pub fn oldest(&self) -> Option<DateTime<Utc>> {
        self.state().units.front().map(|u| u.received_at)
    }
}

impl TapState {
    /// Moves a unit's times onto the continuous timeline: a stream that goes back in time or jumps
    /// far ahead (a looping file, a reconnected camera) is joined one picture after the last one,
    /// so a clip's pictures never go back in time.
    fn retime(
        &mut self,
        pts_ns: Option<u64>,
        dts_ns: Option<u64>,
        duration_ns: Option<u64>,
        keyframe: bool,
    ) -> (Option<u64>, Option<u64>) {
        let Some(decode_ns) = dts_ns.or(pts_ns) else { return (None, None) };
        let shifted = |ns: u64, offset: i128| u64::try_from(i128::from(ns) + offset).unwrap_or(0);
        if self.last_out_ns.is_none() && dts_ns.is_none() {
            // Room before the first picture for the decoding times made below.
            let lead = (REORDER_DEPTH as u64 + 1) * JOIN_STEP_NS;
            self.offset_ns = i128::from(lead.saturating_sub(decode_ns));
        }
        // Presentation times alone go back within a group of pictures with B-frames.
        let may_step_back = if dts_ns.is_some() || keyframe { 0 } else { REORDER_WINDOW_NS };
        if let Some(last) = self.last_out_ns {
            let candidate = shifted(decode_ns, self.offset_ns);
            let back_in_time = candidate < last.saturating_sub(may_step_back) || (keyframe && candidate <= last);
            if back_in_time || candidate > last.saturating_add(LARGEST_GAP_NS) {
                self.offset_ns = i128::from(last) + i128::from(self.last_step_ns) - i128::from(decode_ns);
            }
        }
        let out_decode = shifted(decode_ns, self.offset_ns);
        if let Some(last) = self.last_out_ns {
            if out_decode > last {
                self.last_step_ns = out_decode - last;
            }
        }
        if let Some(duration) = duration_ns.filter(|d| *d > 0) {
            self.last_step_ns = duration;
        }
        // The latest time so far: a reordered picture does not move the timeline back.
        self.last_out_ns = Some(self.last_out_ns.map_or(out_decode, |last| last.max(out_decode)));
        let pts_out = pts_ns.map(|p| shifted(p, self.offset_ns));
        let dts_out = match dts_ns {
            Some(dts) => Some(shifted(dts, self.offset_ns)),
            None => Some(self.decoding_time(out_decode)),
        };
        (pts_out, dts_out)
    }

    /// A decoding time for a picture that came without one (FFmpeg's way for RTP): the earliest
    /// presentation time among the last `REORDER_DEPTH + 1` pictures, so decoding times rise and
    /// never come after a picture's presentation (an MP4 needs both). The first pictures take
    /// theirs a step apart before the first one's.
    fn decoding_time(&mut self, pts: u64) -> u64 {
        let at = self.reorder.partition_point(|&p| p <= pts);
        self.reorder.insert(at, pts);
        let made = if self.reorder.len() > REORDER_DEPTH {
            self.reorder.remove(0)
        } else {
            let early = (REORDER_DEPTH + 1 - self.reorder.len()) as u64 * JOIN_STEP_NS;
            self.reorder[0].saturating_sub(early)
        };
        self.reorder.truncate(REORDER_DEPTH);
        made
    }

    /// Drops whole groups of pictures older than `keep_from`, keeping the last key frame before it
    /// (a clip cut from the tap decodes from its first picture); then, while over `max_bytes` (a
    /// camera that sends key frames rarely), the oldest group (or units, when only one is left).
    fn trim(&mut self, keep_from: DateTime<Utc>, max_bytes: usize) {
        // The newest key frame at or before `keep_from`: everything before it can go.
        let cut = self.units.iter().rposition(|u| u.keyframe && u.received_at <= keep_from).unwrap_or(0);
        self.drop_front(cut);
        while self.bytes > max_bytes && !self.units.is_empty() {
            // To the next key frame after the first unit, or just the first unit when there is none.
            let next_keyframe = self.units.iter().skip(1).position(|u| u.keyframe).map_or(1, |p| p + 1);
            self.drop_front(next_keyframe);
        }
    }

    fn drop_front(&mut self, count: usize) {
        for unit in self.units.drain(..count) {
            self.bytes -= unit.data.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn at(seconds: f64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap() + chrono::Duration::milliseconds((seconds * 1000.0) as i64)
    }

    /// A camera at 10 frames/s with a key frame every `gop` pictures, from second 0, pictures of
    /// `size` bytes and decoding times from `start_ns`.
    fn feed(tap: &VideoTap, pictures: u64, gop: u64, size: usize, start_ns: u64, start_second: f64) {
        for i in 0..pictures {
            let time = start_ns + i * 100 * MS;
            tap.push(
                ArrivingUnit {
                    pts_ns: Some(time),
                    dts_ns: Some(time),
                    duration_ns: Some(100 * MS),
                    keyframe: i % gop == 0,
                    data: vec![i as u8; size],
                },
                at(start_second + i as f64 * 0.1),
            );
        }
    }

    #[test]
    fn the_tap_keeps_whole_groups_reaching_back_at_least_the_pre_roll() {
        let tap = VideoTap::new(Duration::from_secs(5), 64 << 20);
        tap.set_format("video/x-h264");
        feed(&tap, 200, 20, 1000, 0, 0.0); // 20 s, key frames every 2 s
        let all = tap.since(0);
        let first = all.units.first().unwrap();
        assert!(first.keyframe, "a clip must start at a key frame");
        // The newest picture is at 19.9 s: the tap reaches back to the key frame at 14 s (≥ 5 s).
        assert_eq!(first.received_at, at(14.0));
        assert_eq!(all.units.len(), 60);
        assert_eq!(tap.bytes(), 60 * 1000);
        assert_eq!(all.missed, 140, "a reader from the start missed what was dropped");
        // A clip from second 16.5 starts at the key frame of 16 s.
        let start = tap.start_before(at(16.5)).unwrap();
        assert_eq!(tap.since(start).units.first().unwrap().received_at, at(16.0));
        // From before what the tap holds: its oldest key frame.
        let start = tap.start_before(at(3.0)).unwrap();
        assert_eq!(tap.since(start).units.first().unwrap().received_at, at(14.0));
    }

    #[test]
    fn a_camera_that_sends_large_pictures_or_rare_key_frames_is_held_to_the_byte_cap() {
        let tap = VideoTap::new(Duration::from_secs(5), 100_000);
        tap.set_format("video/x-h264");
        feed(&tap, 300, 1000, 1000, 0, 0.0); // one key frame only, 300 KB
        assert!(tap.bytes() <= 100_000, "{}", tap.bytes());
        assert!(tap.start_before(at(29.0)).is_none(), "the only key frame is gone: no clip can start");
    }

    #[test]
    fn nothing_is_kept_before_the_format_is_known() {
        let tap = VideoTap::new(Duration::from_secs(5), 1 << 20);
        feed(&tap, 10, 5, 100, 0, 0.0);
        assert_eq!(tap.bytes(), 0);
        assert!(tap.start_before(at(1.0)).is_none());
    }

    #[test]
    fn a_stream_that_starts_again_from_zero_continues_on_one_timeline() {
        let tap = VideoTap::new(Duration::from_secs(60), 64 << 20);
        tap.set_format("video/x-h264");
        feed(&tap, 30, 10, 10, 5_000 * MS, 0.0); // 5.0 s … 7.9 s
        feed(&tap, 30, 10, 10, 0, 3.0); // the file looped: 0 s again
        feed(&tap, 30, 10, 10, 900_000 * MS, 6.0); // a camera that reconnected far ahead
        let times: Vec<u64> = tap.since(0).units.iter().map(|u| u.dts_ns.unwrap()).collect();
        assert!(times.windows(2).all(|w| w[1] > w[0]), "decoding times always go forward: {times:?}");
        assert!(times.windows(2).all(|w| w[1] - w[0] <= 100 * MS), "joined one picture apart: {times:?}");
        assert_eq!(times[0], 5_000 * MS, "the first stream keeps its own times");
    }

    /// An RTSP camera with B-frames: the parser passes presentation times only, and they go back
    /// within each group of pictures. They are reordering, kept as they came; a stream that
    /// starts again from zero is still joined on.
    #[test]
    fn b_frames_without_decoding_times_keep_their_presentation_order() {
        let tap = VideoTap::new(Duration::from_secs(60), 64 << 20);
        tap.set_format("video/x-h265");
        // Decoding order I0 P4 B2 B1 B3 P8 B6 B5 B7 (times in tenths of a second), twice over:
        // the second time from zero again, as a camera that reconnected.
        let order = [0u64, 4, 2, 1, 3, 8, 6, 5, 7];
        for (round, start) in [(0, 0.0), (1, 1.0)] {
            for (i, tenth) in order.iter().enumerate() {
                let unit = ArrivingUnit {
                    pts_ns: Some(tenth * 100 * MS),
                    dts_ns: None,
                    duration_ns: None,
                    keyframe: i == 0,
                    data: vec![round; 10],
                };
                tap.push(unit, at(start + i as f64 * 0.1));
            }
        }
        let units = tap.since(0).units;
        let shown: Vec<u64> = units.iter().map(|u| u.pts_ns.unwrap()).collect();
        let relative = |times: &[u64]| -> Vec<u64> { times.iter().map(|ns| (ns - times[0]) / (100 * MS)).collect() };
        assert_eq!(relative(&shown[..9]), order, "the first stream keeps its order: {shown:?}");
        assert!(shown[9] > shown[..9].iter().copied().max().unwrap(), "the second stream comes after: {shown:?}");
        assert_eq!(relative(&shown[9..]), order, "and keeps its order: {shown:?}");
        // Decoding times, made up, rise and never come after the picture's presentation.
        let decoded: Vec<u64> = units.iter().map(|u| u.dts_ns.unwrap()).collect();
        assert!(decoded.windows(2).all(|w| w[1] > w[0]), "decoding times rise: {decoded:?}");
        assert!(units.iter().all(|u| u.dts_ns <= u.pts_ns), "{decoded:?} vs {shown:?}");
    }

    #[test]
    fn a_reader_takes_what_came_after_its_place_and_learns_what_it_missed() {
        let tap = VideoTap::new(Duration::from_secs(1), 64 << 20);
        tap.set_format("video/x-h265");
        feed(&tap, 10, 5, 10, 0, 0.0);
        let first = tap.since(0);
        let place = first.units.last().unwrap().seq;
        feed(&tap, 5, 5, 10, 1_000 * MS, 1.0);
        let next = tap.since(place);
        assert_eq!(next.missed, 0);
        assert_eq!(next.units.len(), 5);
        assert_eq!(&*next.units[0].format, "video/x-h265");
        // Far behind: the tap has moved on.
        feed(&tap, 50, 5, 10, 2_000 * MS, 2.0);
        assert!(tap.since(place).missed > 0);
    }
}
