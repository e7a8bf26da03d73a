//! The evidence stage: judged frames in; privacy applied (people blurred, privacy zones black),
//! evidence pictures drawn, encoded and kept in a signed hash chain ([`store`], [`chain`],
//! [`signing`]); frames and events safe to show or send out ([`EvidencedFrame`], to delivery).
//! It also keeps the tamper references the judge learns (`state_dir/tamper`), and adds a camera's
//! reference picture to the evidence of its tamper events.
//! Imports the judge's message types (and through them infer's and source's) and `wire` (the event
//! and chain formats), never delivery or the side rooms. Pixel work and disk writes are blocking: the loop runs them off the async workers.

pub mod chain;
#[cfg(feature = "gstreamer")]
pub mod clip_mp4;
pub mod clips;
pub mod config;
pub mod draw;
pub mod messages;
pub mod privacy;
pub mod signing;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use image::RgbImage;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::base::blocking::off_the_workers;
use crate::base::frame_pool::FramePool;
use crate::base::liveness::Heartbeat;
use crate::infer::{BoundingBox, Findings, ModelResult};
use crate::judge::config::ActionConfig;
use crate::judge::rules::crop_with_margin;
use crate::judge::tamper::reference::{self as tamper_reference, Reference, TAMPER_DIR};
use crate::judge::tracker::seconds_between;
use crate::judge::zones::Zone;
use crate::judge::{JudgedEvent, Judgement};
use crate::source::Frame;
use crate::wire::chain::sha256_hex;
use crate::wire::{ChainHead, ChainProof, Event, EventKind, EvidenceRef, LifecycleState};
use clips::ClipRecorder;
use config::EvidenceConfig;
pub use privacy::PrivatePicture;
use store::{EvidenceError, EvidenceStore, Picture};

/// Retention also runs this often when no event brings new evidence, so old pictures still go.
const RETENTION_INTERVAL_SECS: f64 = 600.0;

/// The evidence crop is the event's box grown by this share of its size on each side (the page's
/// labelling finds the box inside the crop again from it).
pub const EVIDENCE_CROP_MARGIN: f32 = 0.15;

/// The evidence picture of an event message, for `snapshots/{event_id}`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub event_id: Uuid,
    pub jpeg: Arc<Vec<u8>>,
}

/// What of a frame goes on past the evidence stage: whose it is, when, and its picture, private.
#[derive(Debug, Clone)]
pub struct ShownFrame {
    pub camera: Arc<str>,
    pub captured_at: DateTime<Utc>,
    pub picture: PrivatePicture,
}

/// A frame with its events and their evidence: the message from evidence to delivery. Everything
/// in it is private already and may be shown or sent.
#[derive(Debug, Clone)]
pub struct EvidencedFrame {
    /// The frame, its picture masked when looked at.
    pub frame: ShownFrame,
    pub results: Vec<ModelResult>,
    /// Each with its snapshot hash and its place in the chain, when evidence is kept.
    pub events: Vec<Event>,
    /// One per event message that has a picture.
    pub snapshots: Vec<Snapshot>,
    /// The camera's zones, for drawing.
    pub zones: Vec<Zone>,
    /// On-site actions of the events that started on this frame.
    pub actions: Vec<(Uuid, ActionConfig)>,
    /// Chain records other than events written on this frame (pruning, the genesis): they go out
    /// on the `chain` topic, so the platform sees every sequence number.
    pub chain_records: Vec<ChainProof>,
    /// How far the chain has reached, when this frame moved it.
    pub chain_head: Option<ChainHead>,
    /// What the evidence takes of its budget (None when evidence is off).
    pub usage: Option<store::EvidenceUsage>,
}

/// A clip is started only while the disk has room for about this much beside `min_free_mb`.
const CLIP_ROOM_BYTES: u64 = 32 << 20;

/// At a stop, clips being written or re-encoded end within this (and `clips::REENCODE_GRACE`),
/// cut short where they must: systemd gives the whole agent `TimeoutStopSec` (20 s) to stop.
const CLIPS_STOP_BUDGET: std::time::Duration = std::time::Duration::from_secs(8);

/// Applies privacy and keeps evidence; its store is None when `evidence.enabled` is off.
pub struct EvidenceStage {
    store: Option<EvidenceStore>,
    jpeg_quality: u8,
    last_retention: Option<DateTime<Utc>>,
    /// Where the cameras' tamper references are kept (`state_dir/tamper`).
    tamper_dir: PathBuf,
    /// Event clips, when evidence and clips are on.
    clips: Option<ClipRecorder>,
    /// The last frame sent on, for the message that carries the clips finished at shutdown.
    last_frame: Option<ShownFrame>,
    /// Buffers of masked copies of frames no one holds any more (`PrivatePicture`).
    masked_frames: Arc<FramePool>,
}

impl EvidenceStage {
    /// Opens the evidence store under `state_dir` (creating the device key on first start).
    pub fn open(state_dir: &Path, config: &EvidenceConfig, device: &str) -> Result<Self, EvidenceError> {
        let store = if config.enabled { Some(EvidenceStore::open(state_dir, config.clone(), device)?) } else { None };
        let clips = store.as_ref().filter(|_| config.clips.enabled).map(|store| {
            let raw_dir = state_dir.join(clips::RAW_CLIPS_DIR);
            ClipRecorder::new(config.clips.clone(), store.dir(), &raw_dir, clips::mp4_sink(), clips::masked_reencoder())
                .masking_frames_into(clips::masked_writer())
        });
        Ok(Self {
            store,
            jpeg_quality: config.jpeg_quality,
            last_retention: None,
            tamper_dir: state_dir.join(TAMPER_DIR),
            clips,
            last_frame: None,
            masked_frames: Arc::default(),
        })
    }

    /// The evidence folder, when evidence is kept.
    pub fn dir(&self) -> Option<&Path> {
        self.store.as_ref().map(|s| s.dir())
    }

    /// Masks the frame, then draws, encodes and keeps each event's pictures from the masked frame.
    pub fn process(&mut self, judgement: Judgement) -> EvidencedFrame {
        let Judgement { frame, results, events: judged, privacy, zones, tamper_reference } = judgement;
        let now = frame.captured_at;
        // Masked here only where this frame's events or a tamper reference need the picture; the
        // rest when someone looks at it.
        let private = PrivatePicture::new(frame.image.clone(), privacy.clone(), self.masked_frames.clone());
        if let Some(reference) = tamper_reference {
            self.keep_tamper_reference(&reference, &private.image());
        }
        let mut events = Vec::with_capacity(judged.len());
        let mut snapshots = Vec::new();
        let mut actions = Vec::new();
        let mut pictured = Vec::new();
        let pictures = pictures_of_events(self.jpeg_quality, &private, &zones, &results, &judged);
        for (JudgedEvent { mut event, with_pictures, caption: _, action, plate_picture }, (frame_jpeg, crop_jpeg)) in
            judged.into_iter().zip(pictures)
        {
            pictured.push(with_pictures);
            if let Some(jpeg) = &frame_jpeg {
                event.snapshot_sha256 = Some(sha256_hex(jpeg));
            }
            // A tamper event shows what the camera sees beside what it was set up to see.
            let reference_jpeg = (with_pictures && event.kind == EventKind::Tamper)
                .then(|| self.tamper_reference_picture(&event.camera))
                .flatten();
            let plate_jpeg = plate_picture
                .filter(|_| with_pictures && self.store.is_some())
                .and_then(|picture| self.private_plate_picture(&picture, &privacy, &event));
            let kept = KeptPictures {
                frame: frame_jpeg.as_deref(),
                crop: crop_jpeg.as_deref(),
                reference: reference_jpeg.as_deref(),
                plate: plate_jpeg.as_deref(),
            };
            self.keep(&mut event, now, kept);
            if let Some(jpeg) = frame_jpeg {
                snapshots.push(Snapshot { event_id: event.event_id, jpeg: Arc::new(jpeg) });
            }
            if let Some(action) = action {
                actions.push((event.event_id, action));
            }
            events.push(event);
        }
        let with_pictures = events.iter().zip(&pictured).filter(|(_, p)| **p).map(|(e, _)| e);
        self.observe_for_clips(&frame, with_pictures, &privacy);
        // A finished clip's record goes out with this frame's other chain records.
        self.keep_finished_clips(now, None);
        self.retention_if_due(now);
        let frame = ShownFrame { camera: frame.camera, captured_at: now, picture: private };
        self.last_frame = Some(frame.clone());
        self.evidenced(frame, results, events, snapshots, zones, actions)
    }

    /// Ends the clips still being written (the agent stops) and records them; the message to send
    /// them on, if any finished.
    pub fn finish(&mut self) -> Option<EvidencedFrame> {
        let frame = self.last_frame.clone()?;
        let deadline = std::time::Instant::now() + CLIPS_STOP_BUDGET;
        let kept = self.keep_finished_clips(Utc::now(), Some(deadline));
        (kept > 0).then(|| self.evidenced(frame, Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()))
    }

    fn evidenced(
        &mut self,
        frame: ShownFrame,
        results: Vec<ModelResult>,
        events: Vec<Event>,
        snapshots: Vec<Snapshot>,
        zones: Vec<Zone>,
        actions: Vec<(Uuid, ActionConfig)>,
    ) -> EvidencedFrame {
        let (chain_records, chain_head) = match self.store.as_mut() {
            Some(store) => {
                let records = store.chain_mut().take_unpublished();
                let moved = !events.is_empty() || !records.is_empty();
                (records, moved.then(|| store.chain().head().cloned()).flatten())
            }
            None => (Vec::new(), None),
        };
        EvidencedFrame {
            frame,
            results,
            events,
            snapshots,
            zones,
            actions,
            chain_records,
            chain_head,
            usage: self.store.as_ref().map(EvidenceStore::usage),
        }
    }

    /// Starts and ends clips for the events of this frame (while the disk has room for one).
    fn observe_for_clips<'a>(
        &mut self,
        frame: &Frame,
        events: impl Iterator<Item = &'a Event>,
        privacy: &crate::judge::PrivacyMask,
    ) {
        let (Some(recorder), Some(store)) = (self.clips.as_mut(), self.store.as_ref()) else { return };
        if frame.video.is_none() {
            return;
        }
        let room = store.has_room_for_clip(CLIP_ROOM_BYTES);
        // Without room no clip starts; the ends of those already running are still planned.
        let events: Vec<&Event> = events.filter(|e| room || e.state != LifecycleState::Start).collect();
        recorder.observe(frame, events.into_iter(), privacy);
    }

    /// Writes the clips' new video; hashes and records in the chain those that are complete (all
    /// of them, by `stop_deadline`, when the agent stops). Returns how many it kept.
    fn keep_finished_clips(&mut self, now: DateTime<Utc>, stop_deadline: Option<std::time::Instant>) -> usize {
        let (Some(recorder), Some(store)) = (self.clips.as_mut(), self.store.as_mut()) else { return 0 };
        let finished = match stop_deadline {
            Some(deadline) => recorder.finish_all(now, deadline),
            None => recorder.pump(now),
        };
        let mut kept = 0;
        for clip in finished {
            match store.keep_clip(now, &clip) {
                Ok((file, _)) => {
                    tracing::info!(
                        camera = %clip.camera,
                        event_id = %clip.event_id,
                        file = %file.file,
                        seconds = (clip.to - clip.from).num_milliseconds() as f64 / 1000.0,
                        pictures = clip.pictures,
                        "event clip kept"
                    );
                    kept += 1;
                }
                Err(e) => tracing::error!(event_id = %clip.event_id, "cannot keep the event clip: {e}"),
            }
        }
        kept
    }

    /// The device's public key (hex) and how far its chain has reached, when evidence is kept.
    pub fn identity(&self) -> Option<(String, Option<ChainHead>)> {
        self.store.as_ref().map(|s| (s.chain().public_key(), s.chain().head().cloned()))
    }

    /// Writes a reference the judge learnt, with the frame it was learnt on (privacy applied);
    /// one the installer saved meanwhile (`edge-agent tamper reference`) stays.
    fn keep_tamper_reference(&self, reference: &Reference, private: &RgbImage) {
        let saved_by_installer = tamper_reference::load(&self.tamper_dir, &reference.camera)
            .is_some_and(|saved| saved.origin == tamper_reference::ReferenceOrigin::Installer);
        if saved_by_installer {
            tracing::info!(camera = %reference.camera, "the installer's tamper reference is kept; it applies from the next start");
            return;
        }
        let saved = draw::encode_jpeg(private, self.jpeg_quality)
            .map_err(|e| e.to_string())
            .and_then(|jpeg| tamper_reference::save(&self.tamper_dir, reference, &jpeg).map_err(|e| e.to_string()));
        match saved {
            Ok(()) => {
                tracing::info!(camera = %reference.camera, dir = %self.tamper_dir.display(), "tamper reference saved")
            }
            // The judge uses it all the same until the agent stops; the next start learns again.
            Err(e) => tracing::error!(camera = %reference.camera, "cannot save the tamper reference: {e}"),
        }
    }

    /// The camera's saved reference picture, if there is one.
    fn tamper_reference_picture(&self, camera: &str) -> Option<Vec<u8>> {
        let path = tamper_reference::picture_path(&self.tamper_dir, camera);
        match std::fs::read(&path) {
            Ok(jpeg) => Some(jpeg),
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %path.display(), "cannot read the tamper reference picture: {e}");
                }
                None
            }
        }
    }

    /// The picture of an event's plate as JPEG, masked as its frame was: the camera's privacy
    /// zones black, the people of that frame blurred where the camera blurs people.
    fn private_plate_picture(
        &self,
        picture: &crate::infer::plates::stage::PlatePicture,
        mask: &crate::judge::PrivacyMask,
        event: &Event,
    ) -> Option<Vec<u8>> {
        let mut image = (*picture.image).clone();
        let at_its_frame = crate::judge::PrivacyMask {
            people: picture.people.clone(),
            blur_people: mask.blur_people,
            zones: mask.zones.clone(),
            // Other vehicles' plates are this frame's, not the plate picture's.
            plates: Vec::new(),
            blur_plates: mask.blur_plates,
        };
        privacy::apply_to_part(&mut image, picture.origin, picture.frame, &at_its_frame);
        match draw::encode_jpeg(&image, self.jpeg_quality) {
            Ok(jpeg) => Some(jpeg),
            Err(e) => {
                tracing::error!(event_id = %event.event_id, "cannot encode the plate's picture: {e}");
                None
            }
        }
    }

    /// Records the event message (with its pictures, if any) in the chain.
    fn keep(&mut self, event: &mut Event, now: DateTime<Utc>, kept: KeptPictures) {
        let Some(store) = self.store.as_mut() else { return };
        let roles = [("frame", kept.frame), ("crop", kept.crop), ("reference", kept.reference), ("plate", kept.plate)];
        let pictures: Vec<Picture> =
            roles.into_iter().filter_map(|(role, jpeg)| jpeg.map(|jpeg| Picture { role, jpeg })).collect();
        let name = format!("{}-r{}", event.event_id, event.revision);
        let recorded = store.keep(now, &name, &pictures, |files, seq| {
            event.evidence = Some(EvidenceRef { chain_seq: seq, files: files.to_vec() });
            event.signed_form().unwrap_or(serde_json::Value::Null)
        });
        match recorded {
            // The record holds the event as sent, without its proof: the proof is added after.
            Ok(kept) => event.chain = Some(kept.proof),
            Err(e) => {
                // The event still goes out; only its evidence is missing.
                tracing::error!(event_id = %event.event_id, "cannot keep evidence: {e}");
                event.evidence = None;
            }
        }
    }

    fn retention_if_due(&mut self, now: DateTime<Utc>) {
        let Some(store) = self.store.as_mut() else { return };
        if self.last_retention.is_some_and(|last| seconds_between(last, now) < RETENTION_INTERVAL_SECS) {
            return;
        }
        self.last_retention = Some(now);
        if let Err(e) = store.enforce_retention(now, 0) {
            tracing::error!("evidence retention failed: {e}");
        }
    }
}

/// The evidence stage's loop: processes each judgement off the async workers and passes the
/// result to delivery. Ends when the judge closes its channel.
pub async fn run_evidence(
    mut stage: EvidenceStage,
    mut input: mpsc::Receiver<Judgement>,
    output: mpsc::Sender<EvidencedFrame>,
    heartbeat: Arc<Heartbeat>,
) {
    heartbeat.pause();
    while let Some(judgement) = input.recv().await {
        heartbeat.beat();
        let evidenced = match off_the_workers(stage, move |stage| stage.process(judgement)).await {
            Ok((returned, evidenced)) => {
                stage = returned;
                evidenced
            }
            Err(e) => {
                tracing::error!("the evidence stage failed and stops: {e}");
                return;
            }
        };
        if output.send(evidenced).await.is_err() {
            return;
        }
        heartbeat.pause();
    }
    // The clips still being written end with the agent; what they hold is kept and recorded.
    if let Ok((_, Some(last))) = off_the_workers(stage, |stage| stage.finish()).await {
        let _ = output.send(last).await;
    }
    heartbeat.retire();
}

/// The pictures of a frame's events (the frame with its boxes, and a crop), in `judged`'s order;
/// none for events without pictures. Two or more are drawn and encoded on two threads: a frame's
/// messages wait for all of its pictures, each a JPEG of the whole frame (bench/RESULTS.md: latency
/// by messages per frame).
fn pictures_of_events(
    quality: u8,
    private: &PrivatePicture,
    zones: &[Zone],
    results: &[ModelResult],
    judged: &[JudgedEvent],
) -> Vec<EventPictures> {
    let wanted: Vec<usize> = (0..judged.len()).filter(|&i| judged[i].with_pictures).collect();
    let mut pictures: Vec<EventPictures> = judged.iter().map(|_| (None, None)).collect();
    if wanted.is_empty() {
        return pictures;
    }
    let private = private.image();
    let draw = |judged: &JudgedEvent| event_pictures(quality, &private, zones, results, &judged.event, &judged.caption);
    if wanted.len() < 2 {
        for i in wanted {
            pictures[i] = draw(&judged[i]);
        }
        return pictures;
    }
    // Alternate events between this thread and a helper.
    let there: Vec<usize> = wanted.iter().copied().skip(1).step_by(2).collect();
    let here: Vec<usize> = wanted.iter().copied().step_by(2).collect();
    std::thread::scope(|scope| {
        let helper = scope.spawn(|| there.iter().map(|&i| (i, draw(&judged[i]))).collect::<Vec<_>>());
        for &i in &here {
            pictures[i] = draw(&judged[i]);
        }
        match helper.join() {
            Ok(drawn) => drawn.into_iter().for_each(|(i, drawn)| pictures[i] = drawn),
            // Drawing does not panic on any input (tests); if it ever did, the events keep their
            // messages and go without pictures, as when encoding fails.
            Err(_) => tracing::error!("the thread drawing evidence pictures failed; its events have none"),
        }
    });
    pictures
}

/// The JPEG pictures of one event message, each kept as `<event_id>-r<revision>-<role>.jpg`.
struct KeptPictures<'a> {
    frame: Option<&'a [u8]>,
    crop: Option<&'a [u8]>,
    /// A tamper event's reference picture of the camera.
    reference: Option<&'a [u8]>,
    /// The picture of the event's plate.
    plate: Option<&'a [u8]>,
}

/// An event's evidence pictures: the frame (JPEG) and, for a start or update, a crop around it.
type EventPictures = (Option<Vec<u8>>, Option<Vec<u8>>);

/// The evidence frame (zones, every detection, the event's box and caption) and the crop, as
/// JPEG, from the privacy-masked image. An `end` shows the scene without the subject: no crop;
/// nor has a tamper event, whose subject is the whole frame.
fn event_pictures(
    quality: u8,
    private: &RgbImage,
    zones: &[Zone],
    results: &[ModelResult],
    event: &Event,
    caption: &str,
) -> EventPictures {
    let mut canvas = private.clone();
    draw::draw_zones(&mut canvas, zones);
    let thickness = (canvas.width().max(canvas.height()) / 400).max(1);
    for result in results {
        if let Findings::Detect { detections } = &result.findings {
            for d in detections {
                draw::draw_rectangle(&mut canvas, d.bbox, draw::DETECTION_COLOUR, thickness);
            }
        }
    }
    let bbox = BoundingBox::from(event.bbox);
    draw::draw_labelled_box(&mut canvas, bbox, caption, draw::EVENT_COLOUR, thickness * 3);
    let encode = |image: &RgbImage| match draw::encode_jpeg(image, quality) {
        Ok(jpeg) => Some(jpeg),
        Err(e) => {
            tracing::error!(event_id = %event.event_id, "cannot encode evidence JPEG: {e}");
            None
        }
    };
    let crop = if event.state == LifecycleState::End || event.kind == EventKind::Tamper {
        None
    } else {
        crop_with_margin(private, &bbox, EVIDENCE_CROP_MARGIN).and_then(|crop| encode(&crop))
    };
    (encode(&canvas), crop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::delivery::actions::OnSiteActions;
    use crate::delivery::stats::{DailyStats, DailyStatsKeeper};
    use crate::infer::Findings;
    use crate::judge::fixtures::{cup_on_pavement, detail, detector_result, inferred, paste, sample, test_config};
    use crate::judge::Judge;
    use crate::wire::EventKind;
    use std::path::Path;

    fn config(state_dir: &Path, extra: &str) -> Config {
        test_config(state_dir, extra)
    }

    /// The judge and the evidence stage of a config, as `edge-agent run` builds them.
    fn stages(config: &Config) -> (Judge, EvidenceStage) {
        let names = vec!["nanodet".into(), "efficientnet_lite0".into()];
        let judge = Judge::open(&config.judge_settings(), &names).unwrap();
        let stage = EvidenceStage::open(&config.state_dir, &config.evidence, &config.device_id).unwrap();
        (judge, stage)
    }

    /// A frame's events are drawn on two threads: each still gets its own pictures, the same bytes
    /// as drawn one after the other, and an event without pictures gets none.
    #[test]
    fn each_event_of_a_frame_gets_its_own_pictures_when_they_are_drawn_in_parallel() {
        let dog = sample("dog.jpg");
        let results = vec![detector_result(&Arc::new(dog.clone()))];
        let judged: Vec<JudgedEvent> = (0..5)
            .map(|i| {
                let state = if i == 3 { LifecycleState::End } else { LifecycleState::Start };
                let mut event = crate::judge::fixtures::test_event(EventKind::Object, state, chrono::Utc::now());
                let x = 40 + 100 * i;
                event.bbox = crate::wire::EventBox { x1: x, y1: 50, x2: x + 90, y2: 200 };
                JudgedEvent {
                    event,
                    with_pictures: i != 2,
                    caption: format!("event {i}"),
                    action: None,
                    plate_picture: None,
                }
            })
            .collect();
        let drawn =
            pictures_of_events(90, &PrivatePicture::hiding_nothing(Arc::new(dog.clone())), &[], &results, &judged);
        assert_eq!(drawn.len(), judged.len());
        for (i, (judged, (frame, crop))) in judged.iter().zip(&drawn).enumerate() {
            if !judged.with_pictures {
                assert!(frame.is_none() && crop.is_none(), "event {i} has no pictures");
                continue;
            }
            let alone = event_pictures(90, &dog, &[], &results, &judged.event, &judged.caption);
            assert_eq!(frame.as_ref(), alone.0.as_ref(), "event {i}: its own frame picture");
            assert_eq!(crop.as_ref(), alone.1.as_ref(), "event {i}: its own crop");
            assert_eq!(crop.is_none(), i == 3, "an end has no crop");
        }
        let frames: std::collections::HashSet<_> = drawn.iter().filter_map(|(frame, _)| frame.clone()).collect();
        assert_eq!(frames.len(), 4, "four different pictures");
    }

    /// A truck's plate picture (cut from an earlier frame by the plate stage) is kept beside the
    /// frame and the crop, in the chain, masked at its place in its frame: here a privacy zone
    /// covers its left half.
    #[test]
    fn an_event_with_a_plate_keeps_its_plate_picture_masked_and_covered_by_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let mut stage = EvidenceStage::open(dir.path(), &config(dir.path(), "").evidence, "box-1").unwrap();
        let dog = Arc::new(sample("dog.jpg")); // 768×576
                                               // A picture of 100×40 pixels cut at (400, 300); the zone covers x < 0.586 of the frame (450 px).
        let part = image::imageops::crop_imm(&*dog, 400, 300, 100, 40).to_image();
        let picture = crate::infer::plates::stage::PlatePicture {
            image: Arc::new(part.clone()),
            origin: (400, 300),
            frame: (768, 576),
            people: vec![],
        };
        let zone = Zone {
            id: "yard".into(),
            role: crate::judge::config::ZoneRole::Privacy,
            category: None,
            polygon: crate::judge::zones::Polygon::new(&[[0.0, 0.0], [0.586, 0.0], [0.586, 1.0], [0.0, 1.0]]).unwrap(),
        };
        let mut event = crate::judge::fixtures::test_event(EventKind::TruckExit, LifecycleState::Start, Utc::now());
        event.plate = Some(crate::wire::EventPlate {
            text: "浙EA3262".into(),
            colour: "yellow".into(),
            rows: 1,
            score: 0.9,
            reads: 3,
            of_reads: 3,
        });
        let judged = |event: Event, plate_picture| JudgedEvent {
            event,
            with_pictures: true,
            caption: "truck_exit truck".into(),
            action: None,
            plate_picture,
        };
        let frame = crate::judge::fixtures::inferred("gate", &dog, &[], 0.0).frame;
        let privacy = crate::judge::PrivacyMask { zones: vec![zone], ..Default::default() };
        let without = crate::judge::fixtures::test_event(EventKind::TruckExit, LifecycleState::Start, Utc::now());
        let judgement = Judgement {
            frame,
            results: vec![],
            events: vec![judged(event, Some(picture)), judged(without, None)],
            privacy,
            zones: vec![],
            tamper_reference: None,
        };
        let evidenced = stage.process(judgement);
        let files = &evidenced.events[0].evidence.as_ref().expect("evidence kept").files;
        let roles: Vec<&str> = files.iter().map(|f| f.file.rsplit('-').next().unwrap()).collect();
        assert_eq!(roles, ["frame.jpg", "crop.jpg", "plate.jpg"]);
        let plate_file = &files[2];
        let bytes = std::fs::read(stage.dir().unwrap().join(&plate_file.file)).unwrap();
        assert_eq!(plate_file.sha256, sha256_hex(&bytes));
        let kept = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(kept.dimensions(), (100, 40));
        let brightness = |image: &RgbImage, xs: std::ops::Range<u32>| {
            let pixels: Vec<u32> =
                xs.flat_map(|x| (0..40).map(move |y| (x, y))).map(|(x, y)| image.get_pixel(x, y).0[1] as u32).collect();
            pixels.iter().sum::<u32>() / pixels.len() as u32
        };
        assert!(brightness(&kept, 0..45) < 8, "the zone's part is black: {}", brightness(&kept, 0..45));
        assert!(brightness(&kept, 55..100).abs_diff(brightness(&part, 55..100)) < 12, "the rest is the picture");
        // The event without a plate keeps no plate picture; the chain holds both, unbroken.
        assert_eq!(evidenced.events[1].evidence.as_ref().unwrap().files.len(), 2);
        let report = chain::verify(stage.dir().unwrap(), None).unwrap();
        assert_eq!((&report.first_broken_link, report.events), (&None, 2), "{report:?}");
    }

    #[test]
    fn the_embedded_defaults_report_the_truck_in_dog_jpg_with_evidence_in_a_good_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (mut judge, mut stage) = stages(&config(dir.path(), ""));
        let dog = Arc::new(sample("dog.jpg"));
        let results = vec![detector_result(&dog)];
        let mut events = Vec::new();
        let mut snapshots = Vec::new();
        for i in 0..6 {
            let judgement = stage.process(judge.judge(inferred("demo", &dog, &results, i as f64 * 0.5)));
            events.extend(judgement.events);
            snapshots.extend(judgement.snapshots);
        }
        let truck = events.iter().find(|e| e.label == "truck").expect("a truck event");
        assert_eq!((truck.kind, truck.state, truck.revision), (EventKind::Object, LifecycleState::Start, 0));
        assert_eq!(truck.schema_version, 2);
        assert_eq!(
            (truck.device.as_str(), truck.station_id.as_str(), truck.camera.as_str()),
            ("box-1", "box-1", "demo")
        );
        assert_eq!(truck.model.as_ref().map(|m| m.name.as_str()), Some("nanodet"));
        assert!(truck.track_id.is_some());
        assert_eq!(truck.duration_secs, 1.0);
        let evidence = truck.evidence.as_ref().expect("evidence kept");
        assert_eq!(evidence.files.len(), 2, "frame and crop");
        let snapshot = snapshots.iter().find(|s| s.event_id == truck.event_id).expect("a snapshot");
        assert_eq!(truck.snapshot_sha256.as_deref(), Some(sha256_hex(&snapshot.jpeg).as_str()));
        assert_eq!(evidence.files[0].sha256, sha256_hex(&snapshot.jpeg), "the snapshot is the evidence frame");
        let picture = image::load_from_memory(&snapshot.jpeg).unwrap().to_rgb8();
        assert_eq!(picture.dimensions(), (768, 576));
        let report = chain::verify(stage.dir().unwrap(), None).unwrap();
        assert_eq!(report.first_broken_link, None, "{report:?}");
        assert_eq!(report.events as usize, events.len());
        // The record in the chain is the event as sent.
        let segments = chain::segment_files(&stage.dir().unwrap().join(chain::SEGMENTS_DIR)).unwrap();
        let chain_text: String = segments.iter().map(|s| std::fs::read_to_string(s).unwrap()).collect();
        assert!(chain_text.contains(&truck.event_id.to_string()));
        assert!(dir.path().join("keys").join(signing::KEY_FILE).is_file(), "the key lives apart from the evidence");
    }

    #[test]
    fn a_station_camera_reports_a_wrong_bin_with_private_pictures_stats_and_an_action() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("prompts.log");
        // The actions folder: one program, protected as the agent requires.
        use std::os::unix::fs::PermissionsExt;
        let actions = dir.path().join("actions");
        std::fs::create_dir(&actions).unwrap();
        std::fs::set_permissions(&actions, std::fs::Permissions::from_mode(0o755)).unwrap();
        let prompt = actions.join("prompt");
        let script = format!("#!/bin/sh\necho \"$EDGE_EVENT_KIND $EDGE_EVENT_ZONE\" >> {}\n", marker.display());
        std::fs::write(&prompt, script).unwrap();
        std::fs::set_permissions(&prompt, std::fs::Permissions::from_mode(0o755)).unwrap();
        let actions = actions.display();
        let extra = format!(
            r#"
[site]
station_id = "station-7"
grid_cell = "grid-3"

[stats]
publish_interval_secs = 0
utc_offset = "+08:00"

[actions]
folder = "{actions}"

[rules.wrong_bin]
action = {{ program = "prompt", min_interval_secs = 60 }}

[[scenes.station.zones]]
id = "bin-recyclable"
role = "bin"
category = "recyclable"
polygon = [[0.0, 0.6], [0.4, 0.6], [0.4, 1.0], [0.0, 1.0]]

[[scenes.station.zones]]
id = "neighbour-window"
role = "privacy"
polygon = [[0.0, 0.0], [0.2, 0.0], [0.2, 0.15], [0.0, 0.15]]
"#
        );
        let config = config(dir.path(), &extra);
        let (mut judge, mut stage) = stages(&config);
        // The girl of person.jpg standing on the pavement at the right of the cup.
        let girl = image::imageops::crop_imm(&sample("person.jpg"), 165, 85, 112, 290).to_image();
        let frame = Arc::new(paste(&cup_on_pavement(), &girl, 620, 270));
        let results = vec![detector_result(&frame)];
        let person = results[0].findings.clone();
        let Findings::Detect { detections } = person else { unreachable!() };
        let girl_box = detections.iter().find(|d| d.label == "person").expect("the detector sees the girl").bbox;
        let girl_box = [
            girl_box.x1.max(0.0) as u32 + 5,
            girl_box.y1 as u32 + 5,
            girl_box.x2.min(767.0) as u32 - 5,
            girl_box.y2.min(575.0) as u32 - 5,
        ];

        let mut judgements = Vec::new();
        for i in 0..8 {
            judgements.push(stage.process(judge.judge(inferred("station", &frame, &results, i as f64 * 0.5))));
        }
        let events: Vec<&Event> = judgements.iter().flat_map(|j| &j.events).collect();
        let wrong = events.iter().find(|e| e.kind == EventKind::WrongBin).expect("a wrong_bin event");
        assert_eq!(wrong.label, "cup");
        assert_eq!(wrong.category.as_deref(), Some("residual"));
        assert_eq!(wrong.bin_category.as_deref(), Some("recyclable"));
        assert_eq!(wrong.zone.as_deref(), Some("bin-recyclable"));
        assert_eq!(wrong.station_id, "station-7");
        assert_eq!(wrong.grid_cell.as_deref(), Some("grid-3"));
        assert_eq!(wrong.classifier.as_ref().map(|m| m.name.as_str()), Some("efficientnet_lite0"));

        // Privacy: the live frame and the evidence picture show the girl blurred and the window black.
        let live = &judgements[0].frame.picture.image();
        assert!(detail(live, girl_box) * 3 < detail(&frame, girl_box), "live frame blurs the girl");
        assert_eq!(*live.get_pixel(120, 70), image::Rgb([0, 0, 0]));
        let judgement = judgements.iter().find(|j| j.events.iter().any(|e| e.event_id == wrong.event_id)).unwrap();
        let snapshot = judgement.snapshots.iter().find(|s| s.event_id == wrong.event_id).unwrap();
        let picture = image::load_from_memory(&snapshot.jpeg).unwrap().to_rgb8();
        // Boxes drawn across her and JPEG noise add some detail back; still far less than the photo.
        assert!(
            detail(&picture, girl_box) * 2 < detail(&frame, girl_box),
            "evidence blurs the girl: {} vs {} in {girl_box:?}",
            detail(&picture, girl_box),
            detail(&frame, girl_box)
        );
        let corner = picture.get_pixel(120, 70).0;
        assert!(corner.iter().all(|&c| c < 16), "privacy zone black in evidence: {corner:?}");
        let crop_file = &wrong.evidence.as_ref().unwrap().files[1];
        assert!(crop_file.file.ends_with("-crop.jpg"));
        let crop = image::open(stage.dir().unwrap().join(&crop_file.file)).unwrap();
        assert!(crop.width() > 100 && crop.width() < 200, "the cup's crop: {}", crop.width());

        // Statistics (delivery's): today has one wrong_bin of category residual, published right away.
        let station_id = config.site.station_id.clone().unwrap();
        let mut stats =
            DailyStatsKeeper::open(dir.path(), &station_id, config.site.grid_cell.as_deref(), "box-1", &config.stats)
                .unwrap();
        let published: Vec<DailyStats> =
            judgements.iter().flat_map(|j| stats.record(&j.events, j.frame.captured_at).to_publish).collect();
        let last = published.last().expect("stats published");
        assert_eq!(last.counts[&EventKind::WrongBin].by_category["residual"], 1);
        assert_eq!(last.station_id, "station-7");
        assert_eq!(last.utc_offset, "+08:00");

        // The on-site action (delivery's) ran once.
        let mut on_site = OnSiteActions::new(config.actions.folder.clone());
        for judgement in &judgements {
            for (event_id, action) in &judgement.actions {
                let event = judgement.events.iter().find(|e| e.event_id == *event_id).unwrap();
                on_site.run_if_due(action, event, event.time);
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(&marker).unwrap_or_default().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "wrong_bin bin-recyclable");
        assert_eq!(chain::verify(stage.dir().unwrap(), None).unwrap().first_broken_link, None);
    }

    #[test]
    fn a_covered_camera_is_a_tamper_event_with_the_frame_and_the_reference_picture_in_the_chain() {
        use crate::judge::tamper::reference;
        use crate::judge::tamper::test_pictures::{blacked_out, with_sensor_noise};
        let dir = tempfile::tempdir().unwrap();
        let extra = "[tamper]\nlearn_secs = 5\nclear_secs = 2\n[tamper.covered]\nafter_secs = 3\n";
        let (mut judge, mut stage) = stages(&config(dir.path(), extra));
        let dog = sample("dog.jpg");
        let live: Vec<Arc<RgbImage>> = (0..4).map(|seed| Arc::new(with_sensor_noise(&dog, 2.0, seed))).collect();
        let covered = Arc::new(blacked_out(&dog));
        let mut events = Vec::new();
        // Half a second apart: 8 s of live view (the reference), 6 s covered, 4 s live again.
        for i in 0..36 {
            let picture = if (16..28).contains(&i) { covered.clone() } else { live[i % live.len()].clone() };
            let frame = inferred("station", &picture, &[], i as f64 * 0.5);
            events.extend(stage.process(judge.judge(frame)).events);
        }
        let tamper: Vec<&Event> = events.iter().filter(|e| e.kind == EventKind::Tamper).collect();
        let said: Vec<(LifecycleState, &str)> = tamper.iter().map(|e| (e.state, e.label.as_str())).collect();
        assert_eq!(said, vec![(LifecycleState::Start, "covered"), (LifecycleState::End, "covered")], "{events:?}");
        let start = tamper[0];
        assert_eq!((start.camera.as_str(), start.zone.as_deref(), start.track_id), ("station", None, None));
        let files = &start.evidence.as_ref().expect("evidence kept").files;
        let roles: Vec<&str> = files.iter().map(|f| f.file.rsplit('-').next().unwrap_or_default()).collect();
        assert_eq!(roles, ["frame.jpg", "reference.jpg"], "the frame and the reference, no crop");
        let tamper_dir = dir.path().join(reference::TAMPER_DIR);
        let saved = reference::load_all(&tamper_dir).remove("station").expect("the learnt reference was kept");
        assert_eq!(saved.origin, reference::ReferenceOrigin::Auto);
        let kept_reference = std::fs::read(stage.dir().unwrap().join(&files[1].file)).unwrap();
        assert_eq!(kept_reference, std::fs::read(reference::picture_path(&tamper_dir, "station")).unwrap());
        assert_eq!(chain::verify(stage.dir().unwrap(), None).unwrap().first_broken_link, None);
    }

    #[test]
    fn a_reference_the_installer_saved_while_the_agent_was_learning_is_not_overwritten() {
        use crate::judge::tamper::reference::{self, ReferenceOrigin};
        use crate::judge::tamper::test_pictures::with_sensor_noise;
        let dir = tempfile::tempdir().unwrap();
        let (mut judge, mut stage) = stages(&config(dir.path(), "[tamper]\nlearn_secs = 3\n"));
        let dog = sample("dog.jpg");
        let live: Vec<Arc<RgbImage>> = (0..4).map(|seed| Arc::new(with_sensor_noise(&dog, 2.0, seed))).collect();
        let tamper_dir = dir.path().join(reference::TAMPER_DIR);
        let mut learnt = None;
        for i in 0..12 {
            let judgement = judge.judge(inferred("station", &live[i % live.len()], &[], i as f64 * 0.5));
            if let Some(reference) = &judgement.tamper_reference {
                // Saved by `edge-agent tamper reference` just before the agent's own was kept.
                let installer = reference::Reference { origin: ReferenceOrigin::Installer, ..reference.clone() };
                reference::save(&tamper_dir, &installer, b"the installer's picture").unwrap();
                learnt = Some(reference.clone());
            }
            stage.process(judgement);
        }
        assert!(learnt.is_some(), "the judge learnt a reference");
        let kept = reference::load(&tamper_dir, "station").expect("a reference on disk");
        assert_eq!(kept.origin, ReferenceOrigin::Installer);
        assert_eq!(std::fs::read(reference::picture_path(&tamper_dir, "station")).unwrap(), b"the installer's picture");
    }

    #[test]
    fn where_the_law_allows_it_a_camera_can_show_people_unblurred() {
        let dir = tempfile::tempdir().unwrap();
        let extra = "[scenes.yard]\nblur_people = false\n[evidence]\nenabled = false\n";
        let (mut judge, mut stage) = stages(&config(dir.path(), extra));
        let picture = Arc::new(sample("person.jpg"));
        let results = vec![detector_result(&picture)];
        let judgement = stage.process(judge.judge(inferred("yard", &picture, &results, 0.0)));
        assert_eq!(judgement.frame.picture.image().as_ref(), picture.as_ref(), "nothing blurred");
        let blurred = stage.process(judge.judge(inferred("other", &picture, &results, 0.0)));
        assert_ne!(blurred.frame.picture.image().as_ref(), picture.as_ref(), "other cameras keep the default");
        assert!(stage.dir().is_none());
    }
}
