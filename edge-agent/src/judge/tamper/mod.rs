//! Camera tamper detection, per camera: is the view still what the installer set up? Each
//! [`Condition`] is checked at most twice a second on cheap statistics ([`measure`]) against the
//! camera's [`reference`]. Pure and driven by frame times; only [`reference`] touches files.

pub mod measure;
pub mod reference;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::infer::BoundingBox;
use crate::judge::config::TamperConfig;
use crate::judge::lifecycle::Transition;
use crate::judge::rules::Finding;
use crate::judge::tracker::seconds_between;
use crate::source::Frame;
use crate::wire::LifecycleState;
use measure::{change, measure, similarity, FrameStats};
use reference::{Reference, ReferenceOrigin, REFERENCE_VERSION};

/// Frames closer than this to the last one checked are skipped: tamper needs no more.
pub const CHECK_INTERVAL_SECS: f64 = 0.5;
/// A reference is learnt from at least this many checks.
const MIN_LEARNING_CHECKS: usize = 5;

/// What is wrong with a camera's view; the event's `label`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// Black or uniform.
    Covered,
    /// Fine detail gone, compared with the reference.
    Defocused,
    /// The edges no longer line up with the reference's.
    TurnedAway,
    /// Frames keep coming but differ less than the camera's own noise.
    Frozen,
}

impl Condition {
    pub const ALL: [Condition; 4] =
        [Condition::Covered, Condition::Defocused, Condition::TurnedAway, Condition::Frozen];

    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Covered => "covered",
            Condition::Defocused => "defocused",
            Condition::TurnedAway => "turned_away",
            Condition::Frozen => "frozen",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What one check found, with each condition's strength (0-1) where it holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    /// Per condition (in [`Condition::ALL`] order): Some(score) when it holds.
    pub holds: [Option<f32>; 4],
    /// Match with the reference's view, when there is a reference.
    pub similarity: Option<f32>,
    /// Fine detail as a share of the reference's.
    pub sharpness_share: Option<f32>,
    /// Change from the frame checked before, in grey levels.
    pub change: Option<f32>,
}

/// What a camera's check returns: event transitions, and a reference just learnt (for the
/// evidence stage to keep).
#[derive(Debug, Default)]
pub struct TamperOutcome {
    pub transitions: Vec<Transition<Finding>>,
    pub learnt: Option<Reference>,
}

/// One condition's hysteresis.
#[derive(Debug, Default)]
struct ConditionState {
    /// When it began to hold without a break.
    holding_since: Option<DateTime<Utc>>,
    last_held: Option<DateTime<Utc>>,
    /// When it stopped holding, while its event is open.
    clear_since: Option<DateTime<Utc>>,
    score: f32,
    /// The open event.
    event: Option<Uuid>,
}

/// The last frame checked.
struct LastCheck {
    time: DateTime<Utc>,
    samples: Vec<u8>,
}

/// Learning a reference: the first stretch of `learn_secs` in which the view stays the same and
/// is not covered.
#[derive(Default)]
struct Learner {
    since: Option<DateTime<Utc>>,
    first_grid: Vec<f32>,
    grid_sum: Vec<f64>,
    brightness: Vec<f32>,
    spread: Vec<f32>,
    sharpness: Vec<f32>,
    without_sharpness: usize,
    changes: Vec<f32>,
}

impl Learner {
    fn restart(&mut self) {
        *self = Learner::default();
    }

    fn checks(&self) -> usize {
        self.brightness.len()
    }

    /// Takes one check; returns the reference once the view has been stable long enough.
    fn observe(
        &mut self,
        frame: &Frame,
        stats: &FrameStats,
        change: Option<f32>,
        covered: bool,
        config: &TamperConfig,
    ) -> Option<Reference> {
        let now = frame.captured_at;
        if covered {
            self.restart();
            return None;
        }
        let moved =
            self.since.is_some() && similarity(&self.first_grid, &stats.grid) < config.turned_away.min_similarity;
        if moved {
            // The installer is still aiming the camera: start over from this view.
            self.restart();
        }
        let since = *self.since.get_or_insert(now);
        if self.first_grid.is_empty() {
            self.first_grid.clone_from(&stats.grid);
            self.grid_sum = vec![0.0; stats.grid.len()];
        } else if let Some(change) = change {
            self.changes.push(change);
        }
        for (sum, level) in self.grid_sum.iter_mut().zip(&stats.grid) {
            *sum += f64::from(*level);
        }
        self.brightness.push(stats.brightness);
        self.spread.push(stats.spread);
        match stats.sharpness {
            Some(sharpness) => self.sharpness.push(sharpness),
            None => self.without_sharpness += 1,
        }
        if seconds_between(since, now) < config.learn_secs || self.checks() < MIN_LEARNING_CHECKS {
            return None;
        }
        let count = self.checks() as f64;
        let reference = Reference {
            version: REFERENCE_VERSION,
            camera: frame.camera.to_string(),
            learnt_at: now,
            origin: ReferenceOrigin::Auto,
            frame_width: frame.image.width(),
            frame_height: frame.image.height(),
            brightness: median(&self.brightness),
            spread: median(&self.spread),
            // A view mostly too plain to tell sharp from blurred gets no focus check.
            sharpness: (self.sharpness.len() > self.without_sharpness).then(|| median(&self.sharpness)),
            noise: median(&self.changes),
            grid: self.grid_sum.iter().map(|sum| (sum / count).round().clamp(0.0, 255.0) as u8).collect(),
        };
        self.restart();
        Some(reference)
    }
}

fn median(values: &[f32]) -> f32 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Tamper detection of one camera.
pub struct TamperWatch {
    camera: String,
    config: TamperConfig,
    reference: Option<Reference>,
    learner: Learner,
    last: Option<LastCheck>,
    states: [ConditionState; 4],
    /// Said once per watch: frozen pictures cannot be told apart on this camera.
    said_frozen_undetectable: bool,
}

impl TamperWatch {
    /// `config` is the camera's own (see [`TamperConfig::for_camera`]); `reference` the saved one.
    pub fn new(camera: &str, config: TamperConfig, reference: Option<Reference>) -> Self {
        Self {
            camera: camera.to_string(),
            config,
            reference,
            learner: Learner::default(),
            last: None,
            states: Default::default(),
            said_frozen_undetectable: false,
        }
    }

    pub fn reference(&self) -> Option<&Reference> {
        self.reference.as_ref()
    }

    /// Checks a frame, unless one was checked less than [`CHECK_INTERVAL_SECS`] ago (the same
    /// frame twice included).
    pub fn observe(&mut self, frame: &Frame) -> TamperOutcome {
        let now = frame.captured_at;
        if self.last.as_ref().is_some_and(|last| (0.0..CHECK_INTERVAL_SECS).contains(&seconds_between(last.time, now)))
        {
            return TamperOutcome::default();
        }
        let Some(stats) = measure(&frame.image) else {
            return TamperOutcome::default();
        };
        let change = self.last.as_ref().and_then(|last| change(&last.samples, &stats.samples));
        let covered = self.is_covered(&stats);
        let mut outcome = TamperOutcome::default();
        if self.reference.is_none() {
            let learnt = self.learner.observe(frame, &stats, change, covered, &self.config);
            if let Some(reference) = learnt {
                tracing::info!(
                    camera = %self.camera,
                    noise = reference.noise,
                    sharpness = ?reference.sharpness,
                    "tamper reference learnt from {} s of a stable view",
                    self.config.learn_secs
                );
                self.reference = Some(reference.clone());
                outcome.learnt = Some(reference);
            }
        }
        let verdict = self.verdict(&stats, change, covered);
        let (width, height) = frame.image.dimensions();
        for condition in Condition::ALL {
            if let Some(transition) = self.step(condition, now, verdict.holds[condition.index()], (width, height)) {
                if transition.state == LifecycleState::Start {
                    // What the installer needs to tune the thresholds, should this be wrong.
                    tracing::info!(
                        camera = %self.camera,
                        brightness = stats.brightness,
                        spread = stats.spread,
                        similarity = ?verdict.similarity,
                        sharpness_share = ?verdict.sharpness_share,
                        change = ?verdict.change,
                        noise = ?self.reference.as_ref().map(|r| r.noise),
                        "tamper: {} since {}",
                        condition.as_str(),
                        transition.first_seen
                    );
                }
                outcome.transitions.push(transition);
            }
        }
        self.last = Some(LastCheck { time: now, samples: stats.samples });
        outcome
    }

    fn is_covered(&self, stats: &FrameStats) -> bool {
        let covered = &self.config.covered;
        self.config.enabled
            && covered.enabled
            && (stats.brightness < covered.max_brightness || stats.spread < covered.max_spread)
    }

    /// Which conditions hold on this check. A covered view says nothing about aim, focus or
    /// motion; a turned view says nothing about focus (its detail is another scene's).
    fn verdict(&mut self, stats: &FrameStats, change: Option<f32>, covered: bool) -> Verdict {
        let mut verdict = Verdict { change, ..Verdict::default() };
        if !self.config.enabled {
            return verdict;
        }
        if covered {
            let spread_score = 1.0 - (stats.spread / 64.0).min(1.0);
            let dark_score = 1.0 - (stats.brightness / 255.0).min(1.0);
            verdict.holds[Condition::Covered.index()] = Some(spread_score.max(dark_score));
            return verdict;
        }
        let Some(reference) = &self.reference else { return verdict };
        let similarity = similarity(&reference.grid_levels(), &stats.grid);
        verdict.similarity = Some(similarity);
        let turned_away = similarity < self.config.turned_away.min_similarity;
        if self.config.turned_away.enabled && turned_away {
            verdict.holds[Condition::TurnedAway.index()] = Some(1.0 - similarity);
        }
        if let (Some(reference_sharpness), Some(sharpness)) = (reference.sharpness, stats.sharpness) {
            if reference_sharpness > 0.0 {
                let share = sharpness / reference_sharpness;
                verdict.sharpness_share = Some(share);
                if self.config.defocused.enabled && !turned_away && share < self.config.defocused.min_sharpness {
                    verdict.holds[Condition::Defocused.index()] = Some((1.0 - share).clamp(0.0, 1.0));
                }
            }
        }
        if self.config.frozen.enabled {
            if reference.noise <= 0.0 {
                if !self.said_frozen_undetectable {
                    self.said_frozen_undetectable = true;
                    tracing::warn!(
                        camera = %self.camera,
                        "frozen pictures cannot be detected on this camera: its frames were identical while the \
                         tamper reference was learnt (set a new reference while the camera shows a live view)"
                    );
                }
            } else if let Some(change) = change {
                let most = reference.noise * self.config.frozen.max_change;
                if change <= most {
                    verdict.holds[Condition::Frozen.index()] = Some((1.0 - change / reference.noise).clamp(0.0, 1.0));
                }
            }
        }
        verdict
    }

    /// One condition's hysteresis; returns a start or an end.
    fn step(
        &mut self,
        condition: Condition,
        now: DateTime<Utc>,
        holds: Option<f32>,
        (width, height): (u32, u32),
    ) -> Option<Transition<Finding>> {
        let after_secs = match condition {
            Condition::Covered => self.config.covered.after_secs,
            Condition::Defocused => self.config.defocused.after_secs,
            Condition::TurnedAway => self.config.turned_away.after_secs,
            Condition::Frozen => self.config.frozen.after_secs,
        };
        let clear_secs = self.config.clear_secs;
        let state = &mut self.states[condition.index()];
        // Time going backwards (the clock was set): count again from now.
        for since in [&mut state.holding_since, &mut state.clear_since].into_iter().flatten() {
            if *since > now {
                *since = now;
            }
        }
        let transition = |state: &ConditionState, lifecycle: LifecycleState, event_id: Uuid| {
            let first_seen = state.holding_since.unwrap_or(now);
            Transition {
                state: lifecycle,
                reason: None,
                event_id,
                revision: if lifecycle == LifecycleState::Start { 0 } else { 1 },
                key: format!("tamper:{}", condition.as_str()),
                first_seen,
                last_seen: state.last_held.unwrap_or(now),
                score: state.score,
                zone: None,
                details: Finding::new(
                    condition.as_str(),
                    BoundingBox { x1: 0.0, y1: 0.0, x2: width as f32, y2: height as f32 },
                ),
                snapshot: true,
            }
        };
        match holds {
            Some(score) => {
                state.clear_since = None;
                state.last_held = Some(now);
                state.score = score;
                let since = *state.holding_since.get_or_insert(now);
                if state.event.is_none() && seconds_between(since, now) >= after_secs {
                    let event_id = Uuid::now_v7();
                    state.event = Some(event_id);
                    return Some(transition(state, LifecycleState::Start, event_id));
                }
                None
            }
            None => {
                let Some(event_id) = state.event else {
                    // It must hold without a break before it is an event.
                    state.holding_since = None;
                    return None;
                };
                let cleared = *state.clear_since.get_or_insert(now);
                if seconds_between(cleared, now) < clear_secs {
                    return None;
                }
                let end = transition(state, LifecycleState::End, event_id);
                *state = ConditionState::default();
                Some(end)
            }
        }
    }
}

#[cfg(test)]
pub mod test_pictures {
    //! Real pictures made to look like a live camera, and like each kind of tamper.

    use image::{Rgb, RgbImage};

    use crate::judge::fixtures::sample;

    /// A small deterministic random source (xorshift), so tests need no extra crate.
    pub struct Noise(u64);

    impl Noise {
        pub fn new(seed: u64) -> Self {
            Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// Roughly Gaussian, mean 0, standard deviation `sigma` (sum of four uniforms).
        pub fn sample(&mut self, sigma: f32) -> f32 {
            let bits = self.next();
            let sum: f32 = (0..4).map(|i| ((bits >> (i * 16)) & 0xFFFF) as f32 / 65535.0).sum();
            (sum - 2.0) * sigma * 1.732
        }
    }

    /// `picture` as a camera sensor delivers it: each pixel with noise of `sigma` grey levels.
    pub fn with_sensor_noise(picture: &RgbImage, sigma: f32, seed: u64) -> RgbImage {
        let mut noise = Noise::new(seed);
        let mut out = picture.clone();
        for pixel in out.pixels_mut() {
            let n = noise.sample(sigma);
            for c in pixel.0.iter_mut() {
                *c = (f32::from(*c) + n).round().clamp(0.0, 255.0) as u8;
            }
        }
        out
    }

    /// Each channel mapped through `f`.
    pub fn mapped(picture: &RgbImage, f: impl Fn(f32) -> f32) -> RgbImage {
        let mut out = picture.clone();
        for pixel in out.pixels_mut() {
            for c in pixel.0.iter_mut() {
                *c = f(f32::from(*c)).round().clamp(0.0, 255.0) as u8;
            }
        }
        out
    }

    /// The scene at dusk: darker and with less contrast in the shadows (gamma 1.8, a third of
    /// the light).
    pub fn at_dusk(picture: &RgbImage) -> RgbImage {
        mapped(picture, |c| 255.0 * (c / 255.0).powf(1.8) * 0.35)
    }

    /// A lens covered with a hand or tape, or painted over: near black.
    pub fn blacked_out(picture: &RgbImage) -> RgbImage {
        mapped(picture, |c| c * 0.03)
    }

    /// A lens covered with something pale: one grey level everywhere.
    pub fn uniform(width: u32, height: u32, level: u8) -> RgbImage {
        RgbImage::from_pixel(width, height, Rgb([level, level, level]))
    }

    /// Out of focus.
    pub fn blurred(picture: &RgbImage, sigma: f32) -> RgbImage {
        image::imageops::blur(picture, sigma)
    }

    /// The camera turned sideways by `share` of the frame (the edge is filled from the scene's
    /// other side, as when a camera pans over a similar wall).
    pub fn panned(picture: &RgbImage, share: f32) -> RgbImage {
        let (width, height) = picture.dimensions();
        let shift = (width as f32 * share) as u32;
        RgbImage::from_fn(width, height, |x, y| *picture.get_pixel((x + shift) % width, y))
    }

    /// Another scene in the same frame size.
    pub fn other_scene(name: &str, like: &RgbImage) -> RgbImage {
        image::imageops::resize(&sample(name), like.width(), like.height(), image::imageops::FilterType::Triangle)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use image::RgbImage;

    use super::test_pictures::*;
    use super::*;
    use crate::judge::fixtures::{at, sample};

    /// Frames twice a second, as the watch checks them.
    const FPS: f64 = 2.0;

    /// A camera feeding the watch frames and collecting what it says.
    struct Camera {
        watch: TamperWatch,
        sequence: u64,
        secs: f64,
        transitions: Vec<(f64, Transition<Finding>)>,
        learnt: Vec<Reference>,
    }

    impl Camera {
        fn new(config: TamperConfig) -> Self {
            Self::with_reference(config, None)
        }

        fn with_reference(config: TamperConfig, reference: Option<Reference>) -> Self {
            Self {
                watch: TamperWatch::new("gate", config, reference),
                sequence: 0,
                secs: 0.0,
                transitions: Vec::new(),
                learnt: Vec::new(),
            }
        }

        /// Shows `pictures` (one after the other, repeated) for `secs` seconds.
        fn show(&mut self, pictures: &[Arc<RgbImage>], secs: f64) {
            let frames = (secs * FPS).round() as usize;
            for i in 0..frames {
                self.sequence += 1;
                let frame = Frame {
                    camera: "gate".into(),
                    sequence: self.sequence,
                    captured_at: at(self.secs),
                    image: pictures[i % pictures.len()].clone(),
                    video: None,
                    motion: None,
                };
                let outcome = self.watch.observe(&frame);
                self.transitions.extend(outcome.transitions.into_iter().map(|t| (self.secs, t)));
                self.learnt.extend(outcome.learnt);
                self.secs += 1.0 / FPS;
            }
        }

        /// (time, start/end, condition) of every transition so far.
        fn said(&self) -> Vec<(f64, LifecycleState, String)> {
            self.transitions.iter().map(|(secs, t)| (*secs, t.state, t.details.label.clone())).collect()
        }

        fn conditions(&self) -> Vec<(LifecycleState, String)> {
            self.said().into_iter().map(|(_, state, label)| (state, label)).collect()
        }
    }

    /// A live view: the picture with fresh sensor noise in every frame (six frames, cycled).
    fn live(picture: &RgbImage, sigma: f32) -> Vec<Arc<RgbImage>> {
        (0..6).map(|seed| Arc::new(with_sensor_noise(picture, sigma, seed))).collect()
    }

    fn dog() -> RgbImage {
        sample("dog.jpg")
    }

    /// A camera on dog.jpg that has learnt its reference from a minute of live view.
    fn set_up_camera() -> Camera {
        let mut camera = Camera::new(TamperConfig::default());
        camera.show(&live(&dog(), 2.0), 65.0);
        assert_eq!(camera.learnt.len(), 1, "a reference from the first stable minute");
        assert!(camera.said().is_empty(), "{:?}", camera.said());
        camera
    }

    #[test]
    fn a_live_camera_learns_its_reference_from_the_first_stable_minute_and_reports_nothing() {
        let mut camera = set_up_camera();
        let reference = camera.learnt[0].clone();
        assert_eq!((reference.frame_width, reference.frame_height), (768, 576));
        assert_eq!(reference.origin, ReferenceOrigin::Auto);
        assert!(reference.noise > 0.5, "sensor noise is learnt: {}", reference.noise);
        assert!(reference.sharpness.is_some_and(|s| s > 0.0), "{:?}", reference.sharpness);
        // More live view, dusk included: nothing.
        camera.show(&live(&dog(), 2.0), 60.0);
        camera.show(&live(&at_dusk(&dog()), 3.0), 60.0);
        assert!(camera.said().is_empty(), "{:?}", camera.said());
        assert_eq!(camera.learnt.len(), 1, "learnt once");
    }

    #[test]
    fn a_blacked_out_lens_is_reported_once_after_ten_seconds_and_ends_once_fixed() {
        let mut camera = set_up_camera();
        let covered_at = camera.secs;
        camera.show(&live(&blacked_out(&dog()), 2.0), 40.0);
        let fixed_at = camera.secs;
        camera.show(&live(&dog(), 2.0), 30.0);
        let said = camera.said();
        assert_eq!(
            camera.conditions(),
            vec![(LifecycleState::Start, "covered".into()), (LifecycleState::End, "covered".into())],
            "{said:?}"
        );
        let (started, ended) = (said[0].0, said[1].0);
        assert!((started - covered_at - 10.0).abs() <= 0.6, "starts 10 s after the cover: {started} vs {covered_at}");
        assert!((ended - fixed_at - 5.0).abs() <= 0.6, "ends 5 s after the fix: {ended} vs {fixed_at}");
        let (start, end) = (&camera.transitions[0].1, &camera.transitions[1].1);
        assert_eq!(start.event_id, end.event_id);
        assert_eq!((start.revision, end.revision), (0, 1));
        assert!(start.snapshot && end.snapshot, "start and end come with the picture");
        assert_eq!(start.details.bbox, BoundingBox { x1: 0.0, y1: 0.0, x2: 768.0, y2: 576.0 });
        assert!(start.score > 0.9, "{}", start.score);
        assert!(
            (seconds_between(end.first_seen, end.last_seen) - (fixed_at - covered_at)).abs() <= 0.6,
            "the end says how long it was covered"
        );
    }

    #[test]
    fn a_lens_covered_with_something_pale_is_covered_too() {
        let mut camera = set_up_camera();
        camera.show(&live(&uniform(768, 576, 200), 2.0), 15.0);
        assert_eq!(camera.conditions(), vec![(LifecycleState::Start, "covered".into())]);
    }

    #[test]
    fn a_picture_out_of_focus_is_defocused_not_turned_away() {
        let mut camera = set_up_camera();
        camera.show(&live(&blurred(&dog(), 5.0), 2.0), 15.0);
        assert_eq!(camera.conditions(), vec![(LifecycleState::Start, "defocused".into())], "{:?}", camera.said());
        let verdict_sharpness = camera.transitions[0].1.score;
        assert!(verdict_sharpness > 0.5, "most of the fine detail is gone: {verdict_sharpness}");
    }

    #[test]
    fn a_camera_turned_to_another_scene_or_panned_is_turned_away() {
        for (what, view) in [
            ("another scene", other_scene("person.jpg", &dog())),
            ("panned by a sixth of the frame", panned(&dog(), 1.0 / 6.0)),
            ("the coffee table", other_scene("coffee.png", &dog())),
        ] {
            let mut camera = set_up_camera();
            camera.show(&live(&view, 2.0), 15.0);
            assert_eq!(
                camera.conditions(),
                vec![(LifecycleState::Start, "turned_away".into())],
                "{what}: {:?}",
                camera.said()
            );
        }
    }

    #[test]
    fn a_camera_nudged_a_little_is_still_the_same_view() {
        let mut camera = set_up_camera();
        camera.show(&live(&panned(&dog(), 0.02), 2.0), 30.0);
        assert!(camera.said().is_empty(), "{:?}", camera.said());
    }

    #[test]
    fn a_frozen_picture_is_reported_while_a_still_scene_with_sensor_noise_is_not() {
        let mut camera = set_up_camera();
        // The stream keeps coming, but every frame is the same picture.
        let stuck = Arc::new(with_sensor_noise(&dog(), 2.0, 99));
        camera.show(&[stuck], 15.0);
        assert_eq!(camera.conditions(), vec![(LifecycleState::Start, "frozen".into())], "{:?}", camera.said());
        camera.show(&live(&dog(), 2.0), 10.0);
        assert_eq!(camera.conditions().last(), Some(&(LifecycleState::End, "frozen".into())));
    }

    #[test]
    fn a_camera_whose_still_frames_are_identical_cannot_be_told_frozen_and_says_nothing() {
        // An encoder that sends a still scene bit for bit: no noise to tell live from frozen.
        let mut camera = Camera::new(TamperConfig::default());
        let still = vec![Arc::new(dog())];
        camera.show(&still, 120.0);
        assert_eq!(camera.learnt.len(), 1);
        assert_eq!(camera.learnt[0].noise, 0.0);
        assert!(camera.said().is_empty(), "{:?}", camera.said());
        // Covering it is still seen.
        camera.show(&[Arc::new(blacked_out(&dog()))], 15.0);
        assert_eq!(camera.conditions(), vec![(LifecycleState::Start, "covered".into())]);
    }

    #[test]
    fn a_condition_shorter_than_its_hold_time_is_not_reported() {
        let mut camera = set_up_camera();
        for _ in 0..5 {
            camera.show(&live(&blacked_out(&dog()), 2.0), 8.0);
            camera.show(&live(&dog(), 2.0), 1.0);
        }
        assert!(camera.said().is_empty(), "{:?}", camera.said());
    }

    #[test]
    fn a_cover_lifted_for_a_moment_does_not_end_the_event() {
        let mut camera = set_up_camera();
        camera.show(&live(&blacked_out(&dog()), 2.0), 15.0);
        camera.show(&live(&dog(), 2.0), 3.0);
        camera.show(&live(&blacked_out(&dog()), 2.0), 15.0);
        assert_eq!(camera.conditions(), vec![(LifecycleState::Start, "covered".into())], "{:?}", camera.said());
    }

    #[test]
    fn a_camera_covered_from_the_start_is_reported_and_learns_no_reference_meanwhile() {
        let mut camera = Camera::new(TamperConfig::default());
        camera.show(&live(&blacked_out(&dog()), 2.0), 90.0);
        assert_eq!(camera.conditions(), vec![(LifecycleState::Start, "covered".into())]);
        assert!(camera.learnt.is_empty(), "a covered view is no reference");
    }

    #[test]
    fn while_the_installer_aims_the_camera_the_reference_waits_for_a_stable_view() {
        let mut camera = Camera::new(TamperConfig::default());
        camera.show(&live(&other_scene("person.jpg", &dog()), 2.0), 40.0);
        camera.show(&live(&dog(), 2.0), 40.0);
        assert!(camera.learnt.is_empty(), "neither view held still for a minute");
        camera.show(&live(&dog(), 2.0), 25.0);
        assert_eq!(camera.learnt.len(), 1);
        // The reference is the final view: the first one is now turned away.
        camera.show(&live(&other_scene("person.jpg", &dog()), 2.0), 15.0);
        assert_eq!(camera.conditions(), vec![(LifecycleState::Start, "turned_away".into())]);
    }

    #[test]
    fn a_saved_reference_is_used_from_the_first_frame() {
        let learnt = set_up_camera().learnt.remove(0);
        let dir = tempfile::tempdir().unwrap();
        reference::save(dir.path(), &learnt, b"jpeg").unwrap();
        let loaded = reference::load_all(dir.path()).remove("gate").expect("the saved reference");
        assert_eq!(loaded, learnt);
        let mut camera = Camera::with_reference(TamperConfig::default(), Some(loaded));
        camera.show(&live(&other_scene("person.jpg", &dog()), 2.0), 15.0);
        assert_eq!(camera.conditions(), vec![(LifecycleState::Start, "turned_away".into())]);
        assert!(camera.learnt.is_empty(), "no need to learn");
        // A file copied to another camera's name is not that camera's view.
        std::fs::copy(reference::reference_path(dir.path(), "gate"), reference::reference_path(dir.path(), "yard"))
            .unwrap();
        assert_eq!(reference::load_all(dir.path()).keys().collect::<Vec<_>>(), ["gate"]);
        assert!(reference::forget(dir.path(), "gate").unwrap());
        std::fs::remove_file(reference::reference_path(dir.path(), "yard")).unwrap();
        assert!(reference::load_all(dir.path()).is_empty());
    }

    #[test]
    fn switched_off_conditions_and_cameras_say_nothing() {
        let mut config = TamperConfig::default();
        config.covered.enabled = false;
        let mut camera = Camera::new(config);
        camera.show(&live(&dog(), 2.0), 65.0);
        camera.show(&live(&blacked_out(&dog()), 2.0), 20.0);
        // Black is not `covered` now (and its faint edges still match the view).
        assert!(!camera.conditions().iter().any(|(_, c)| c == "covered"), "{:?}", camera.said());

        let config = TamperConfig { enabled: false, ..TamperConfig::default() };
        let mut camera = Camera::new(config);
        camera.show(&live(&dog(), 2.0), 65.0);
        camera.show(&live(&blacked_out(&dog()), 2.0), 20.0);
        assert!(camera.said().is_empty());
    }

    /// The config problem of `extra` on the test cameras (demo, station, yard, other), if any.
    fn config_problem(extra: &str) -> Option<String> {
        let mut text = String::from("device_id = \"box-1\"\n");
        for camera in ["demo", "station", "yard", "other"] {
            text.push_str(&format!("[[cameras]]\nid = \"{camera}\"\nsource = {{ kind = \"replay\", path = \"f\" }}\n"));
        }
        text.push_str(extra);
        let path = std::path::Path::new("edge.toml");
        crate::config::Config::from_toml_str(&text, path).and_then(|c| c.validate(path)).err().map(|e| e.to_string())
    }

    #[test]
    fn tamper_settings_are_checked_naming_the_key() {
        for (extra, key) in [
            ("[tamper.turned_away]\nmin_similarity = 1.5\n", "`tamper.turned_away.min_similarity`"),
            ("[tamper.covered]\nmax_spread = 300\n", "`tamper.covered.max_spread`"),
            ("[tamper.frozen]\nafter_secs = -1\n", "`tamper.frozen.after_secs`"),
            ("[tamper]\nlearn_secs = 0\n", "`tamper.learn_secs`"),
            ("[tamper.cameras.yard.frozen]\nmax_change = 2\n", "`tamper.cameras.yard.frozen.max_change`"),
            ("[tamper.cameras.nowhere]\nenabled = false\n", "`tamper.cameras.nowhere`"),
            ("[tamper.cameras.yard]\ncolour = \"red\"\n", "`tamper.cameras.yard`"),
            ("[tamper.cameras.yard]\ncameras = {}\n", "`tamper.cameras.yard.cameras`"),
        ] {
            let problem = config_problem(extra).unwrap_or_else(|| panic!("{extra:?} was accepted"));
            assert!(problem.contains(key), "{extra:?}: {problem}");
        }
        assert!(config_problem("[tamper.cameras.yard]\ncolour = \"red\"\n").unwrap().contains("colour"));
        assert_eq!(config_problem("[tamper]\nenabled = true\n"), None);
    }

    #[test]
    fn a_camera_may_differ_from_the_tamper_section_in_the_keys_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let extra = "[tamper]\nclear_secs = 7\n[tamper.cameras.station]\nenabled = false\n\
                     [tamper.cameras.yard.covered]\nafter_secs = 3\n";
        let config = crate::judge::fixtures::test_config(dir.path(), extra).tamper;
        assert!(!config.for_camera("station").unwrap().enabled);
        let yard = config.for_camera("yard").unwrap();
        assert_eq!((yard.covered.after_secs, yard.clear_secs, yard.covered.max_spread), (3.0, 7.0, 4.0));
        assert!(yard.enabled && yard.covered.enabled);
        let demo = config.for_camera("demo").unwrap();
        assert_eq!((demo.covered.after_secs, demo.clear_secs), (10.0, 7.0));
    }

    #[test]
    fn the_same_frame_seen_twice_and_frames_closer_than_the_interval_are_checked_once() {
        let mut watch = TamperWatch::new("gate", TamperConfig::default(), None);
        let frame = |sequence, secs| Frame {
            camera: "gate".into(),
            sequence,
            captured_at: at(secs),
            image: Arc::new(uniform(768, 576, 0)),
            video: None,
            motion: None,
        };
        for (sequence, secs) in [(1, 0.0), (1, 0.0), (2, 0.4), (3, 0.6), (4, 0.9)] {
            watch.observe(&frame(sequence, secs));
        }
        assert_eq!(watch.last.as_ref().map(|l| l.time), Some(at(0.6)));
    }
}
