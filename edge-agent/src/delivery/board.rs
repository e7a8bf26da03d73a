//! The status board: what the agent knows about itself right now (cameras, models, MQTT link,
//! outbox, recent events, latest annotated frames). Stages write to it; the web page and the MQTT
//! status message read it. Held behind one lock, written a few times per frame at most.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use image::RgbImage;
use serde::Serialize;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::delivery::held::HeldReport;
use crate::delivery::history::EventHistory;
use crate::delivery::outbox::OutboxStats;
use crate::delivery::stats::DailyStats;
use crate::evidence::store::EvidenceUsage;
use crate::evidence::PrivatePicture;
use crate::infer::{ModelInfo, ModelResult};
use crate::source::CameraHealth;
use crate::wire::ChainHead;
use crate::wire::Event;

/// Events kept for the page; the outbox keeps them all for the platform.
pub const RECENT_EVENTS: usize = 20;
/// Events the web page can list, filter and count (in memory; newest first).
pub const EVENT_HISTORY: usize = 2000;
/// Events one search of the history on disk reads at most (beyond the ones in memory).
pub const EVENT_SEARCH_MAX: usize = 20_000;
/// Events whose annotated frame is kept in memory as their picture (a frame is ~50-100 KB), when
/// they have no evidence picture on disk (see [`has_evidence_picture`]).
pub const EVENT_FRAMES_KEPT: usize = 200;
/// Window over which a camera's frame rate is measured.
const FPS_WINDOW: Duration = Duration::from_secs(10);
/// Upper bounds (seconds) of the inference-time histogram buckets, as Prometheus expects them.
pub const LATENCY_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Debug, Clone, Serialize)]
pub struct CameraStatus {
    pub id: String,
    pub enabled: bool,
    pub frames_captured: u64,
    pub frames_inferred: u64,
    pub frames_dropped: u64,
    /// Kept from inference by the camera's motion detection: nothing had moved.
    pub frames_still: u64,
    /// Inferred on the regions where something moved rather than whole (part of `frames_inferred`).
    pub frames_by_region: u64,
    /// What inference looks at on this camera, in words.
    pub inference_plan: String,
    pub errors: u64,
    pub last_error: Option<String>,
    /// The video decoder in use (file and RTSP cameras).
    pub decoder: Option<String>,
    /// Encoded video kept in memory for event clips (the pre-roll), in bytes.
    pub video_buffered_bytes: u64,
    pub last_frame_at: Option<DateTime<Utc>>,
    pub frame_width: u32,
    pub frame_height: u32,
    pub inference_ms: f64,
    /// Frames judged per second over the last few seconds.
    pub fps: f64,
    /// A camera with a `detect_url`: its main stream, kept for clips without being decoded (the
    /// fields above are its detect stream's). None for a camera with one stream.
    pub record_stream: Option<RecordStreamStatus>,
}

/// A camera's record stream (its main stream when it detects on a substream).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordStreamStatus {
    /// `online` (video arrives and is kept), `starting` (opening, nothing yet), `offline` (it
    /// fails now: see `last_error`) or `disabled`.
    pub state: &'static str,
    /// Encoded pictures kept since the start.
    pub pictures_kept: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

impl RecordStreamStatus {
    pub fn of(health: &crate::source::record::RecordStreamHealth, enabled: bool) -> Self {
        let last_error = health.last_error();
        let state = if !enabled {
            "disabled"
        } else if health.is_online() {
            "online"
        } else if last_error.is_some() {
            "offline"
        } else {
            "starting"
        };
        Self {
            state,
            pictures_kept: health.units.load(Ordering::Relaxed),
            errors: health.errors.load(Ordering::Relaxed),
            last_error,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MqttStatus {
    pub configured: bool,
    /// The broker in use, or the one being tried while not connected.
    pub broker: Option<String>,
    /// Every configured broker, most preferred first.
    pub brokers: Vec<String>,
    /// Times the link moved to another broker (failover, or back to the preferred one) since start.
    pub broker_switches: u64,
    /// Connections tried since start (each broker of a failover counts).
    pub connection_attempts: u64,
    pub connected: bool,
    pub last_error: Option<String>,
    pub published: u64,
    /// Commands refused before they were queued (not the platform's, malformed), by ack code,
    /// since start.
    pub commands_refused: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub device_id: String,
    pub version: &'static str,
    pub started_at: DateTime<Utc>,
    pub uptime_seconds: u64,
    pub cameras: Vec<CameraStatus>,
    pub models: Vec<ModelInfo>,
    pub mqtt: MqttStatus,
    pub outbox_depth: u64,
    /// Fill level and quota pruning of the outbox.
    pub outbox: OutboxStats,
    pub events_total: u64,
    pub recent_events: Vec<Event>,
    pub latest_results: BTreeMap<String, Vec<ModelResult>>,
    /// Today's statistics of the station (judge::stats), once there are any.
    pub daily_stats: Option<DailyStats>,
    /// Inference time per model name.
    pub model_latency: BTreeMap<String, LatencyHistogram>,
    /// Events since start, per kind.
    pub events_by_kind: BTreeMap<String, u64>,
    /// Which config runs and who may change the box from afar.
    pub control: ControlStatus,
    /// The device's evidence key and how far its chain has reached.
    pub evidence: EvidenceStatus,
    /// Messages the outbox refused (a full disk), held in memory and retried.
    pub held: HeldReport,
    /// The evidence folder's share of the storage budget.
    pub evidence_usage: Option<EvidenceUsage>,
}

/// What the platform needs to check this box's event messages: the public key to enrol and the
/// chain head to compare with what arrived (a truncated or rolled-back chain shows there).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EvidenceStatus {
    /// Hex Ed25519 public key; null when `evidence.enabled` is off.
    pub public_key: Option<String>,
    pub chain_head: Option<ChainHead>,
}

/// Which config the box runs on and what remote control it accepts: the opt-ins that weaken the
/// trust boundary are shown on the page and in the retained status, not only logged.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ControlStatus {
    /// `file`, `last_good` (the config file did not start; the last one that did runs) or `embedded`.
    pub config: &'static str,
    /// Why the config file is not the one running, when it is not.
    pub config_problem: Option<String>,
    /// `signed` (platform key configured), `unsigned_accepted` (`commands.accept_unsigned`) or
    /// `refused` (no platform key: remote commands are refused).
    pub commands: &'static str,
    /// `model_update.require_signature = false`: unsigned models are accepted.
    pub unsigned_models: bool,
}

/// Inference times of one model: Prometheus-style cumulative buckets, sum, count, and the last one.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyHistogram {
    /// `bucket_counts[i]` counts runs that took at most `LATENCY_BUCKETS[i]` seconds.
    pub bucket_counts: [u64; LATENCY_BUCKETS.len()],
    pub sum_seconds: f64,
    pub count: u64,
    pub last_ms: f64,
}

impl LatencyHistogram {
    pub fn observe(&mut self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        for (bound, count) in LATENCY_BUCKETS.iter().zip(self.bucket_counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.sum_seconds += seconds;
        self.count += 1;
        self.last_ms = seconds * 1000.0;
    }

    pub fn mean_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_seconds * 1000.0 / self.count as f64)
    }
}

/// An event as the web page keeps it: the event, the annotated frame it was seen in (while kept),
/// and who acknowledged it on the page.
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub event: Event,
    pub frame_jpeg: Option<Arc<Vec<u8>>>,
    pub acknowledged: Option<Acknowledgement>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Acknowledgement {
    pub by: String,
    pub at: DateTime<Utc>,
}

/// How a supervisor labelled an event on the page, for the site's sample set.
#[derive(Debug, Clone, Serialize)]
pub struct SampleLabel {
    /// The event was right (`true`) or wrong.
    pub right: bool,
    /// What the subject really is (a model label), or `none`.
    pub label: String,
    pub category: Option<String>,
    pub by: String,
    pub at: DateTime<Utc>,
    /// The picture in the sample folder, and the labels file the row went to.
    pub picture: String,
    pub labels_file: String,
}

/// A camera's newest frame (privacy applied) and what the page draws on it. Encoding a JPEG of every
/// frame cost more CPU than the models: it is made when the page, the API or a `snapshot` asks, at
/// most once per frame, and for frames that carry events (their picture on the page).
pub struct LiveFrame {
    pub image: PrivatePicture,
    pub results: Vec<ModelResult>,
    pub event_boxes: Vec<crate::infer::BoundingBox>,
    pub zones: Vec<crate::judge::zones::Zone>,
    jpeg: std::sync::OnceLock<Option<Arc<Vec<u8>>>>,
}

/// Quality of the page's live frame: small and fast; evidence JPEGs are kept at higher quality.
const LIVE_FRAME_JPEG_QUALITY: u8 = 75;

impl LiveFrame {
    pub fn new(
        image: PrivatePicture,
        results: Vec<ModelResult>,
        event_boxes: Vec<crate::infer::BoundingBox>,
        zones: Vec<crate::judge::zones::Zone>,
    ) -> Self {
        Self { image, results, event_boxes, zones, jpeg: std::sync::OnceLock::new() }
    }

    /// The annotated frame as JPEG, encoded on first use.
    pub fn jpeg(&self) -> Option<Arc<Vec<u8>>> {
        self.jpeg
            .get_or_init(|| {
                let mut annotated =
                    crate::evidence::draw::annotate(&self.image.image(), &self.results, &self.event_boxes);
                crate::evidence::draw::draw_zones(&mut annotated, &self.zones);
                match crate::evidence::draw::encode_jpeg(&annotated, LIVE_FRAME_JPEG_QUALITY) {
                    Ok(jpeg) => Some(Arc::new(jpeg)),
                    Err(e) => {
                        tracing::warn!("cannot encode the live frame: {e}");
                        None
                    }
                }
            })
            .clone()
    }
}

#[derive(Default)]
struct CameraView {
    health: Arc<CameraHealth>,
    last_frame_at: Option<DateTime<Utc>>,
    size: (u32, u32),
    inference_ms: f64,
    /// The newest frame with what to draw on it; its JPEG is made only when someone asks.
    live: Option<Arc<LiveFrame>>,
    /// The newest judged frame without drawings (privacy applied), for drawing zones on; encoded
    /// only when someone asks.
    latest_scene: Option<PrivatePicture>,
    /// Ids of the zones the judge used on the newest frame.
    zones_in_use: Vec<String>,
    latest_results: Vec<ModelResult>,
    recent_frame_times: VecDeque<Instant>,
}

impl CameraView {
    fn fps(&self) -> f64 {
        let (Some(first), Some(last)) = (self.recent_frame_times.front(), self.recent_frame_times.back()) else {
            return 0.0;
        };
        // A camera that stopped delivering has no rate, whatever its last burst was.
        if last.elapsed() > FPS_WINDOW {
            return 0.0;
        }
        let span = last.duration_since(*first).as_secs_f64();
        if span <= 0.0 {
            return 0.0;
        }
        (self.recent_frame_times.len() - 1) as f64 / span
    }
}

struct Inner {
    cameras: BTreeMap<String, CameraView>,
    models: Vec<ModelInfo>,
    mqtt: MqttStatus,
    outbox_depth: u64,
    outbox: OutboxStats,
    events_total: u64,
    recent_events: VecDeque<Event>,
    daily_stats: Option<DailyStats>,
    event_history: VecDeque<EventRecord>,
    model_latency: BTreeMap<String, LatencyHistogram>,
    events_by_kind: BTreeMap<String, u64>,
    /// Labels given on the page, by event id (UUID v7: oldest first, so the oldest go first).
    labels: BTreeMap<Uuid, SampleLabel>,
    control: ControlStatus,
    evidence: EvidenceStatus,
    held: HeldReport,
    evidence_usage: Option<EvidenceUsage>,
}

impl Inner {
    /// Puts an event in front of the recent events and the page's history (both bounded).
    fn push_event(&mut self, event: Event) {
        if self.recent_events.len() == RECENT_EVENTS {
            self.recent_events.pop_back();
        }
        self.recent_events.push_front(event.clone());
        self.events_total += 1;
        if self.event_history.len() == EVENT_HISTORY {
            self.event_history.pop_back();
        }
        self.event_history.push_front(EventRecord { event, frame_jpeg: None, acknowledged: None });
    }
}

pub struct StatusBoard {
    device_id: String,
    started_at: DateTime<Utc>,
    started: Instant,
    inner: Mutex<Inner>,
    /// The event history on disk, once delivery has opened it.
    history: Mutex<Option<Arc<Mutex<EventHistory>>>>,
    /// New events for live pages (Server-Sent Events); nobody listening is fine.
    new_events: broadcast::Sender<Event>,
}

impl StatusBoard {
    /// `brokers`: the configured MQTT brokers' names, most preferred first (none: no MQTT).
    pub fn new(device_id: String, brokers: Vec<String>) -> Self {
        Self {
            device_id,
            started_at: Utc::now(),
            started: Instant::now(),
            inner: Mutex::new(Inner {
                cameras: BTreeMap::new(),
                models: Vec::new(),
                mqtt: MqttStatus {
                    configured: !brokers.is_empty(),
                    broker: brokers.first().cloned(),
                    brokers,
                    broker_switches: 0,
                    connection_attempts: 0,
                    connected: false,
                    last_error: None,
                    published: 0,
                    commands_refused: BTreeMap::new(),
                },
                outbox_depth: 0,
                outbox: OutboxStats::default(),
                events_total: 0,
                recent_events: VecDeque::with_capacity(RECENT_EVENTS),
                daily_stats: None,
                event_history: VecDeque::new(),
                model_latency: BTreeMap::new(),
                events_by_kind: BTreeMap::new(),
                labels: BTreeMap::new(),
                control: ControlStatus::default(),
                evidence: EvidenceStatus::default(),
                held: HeldReport::default(),
                evidence_usage: None,
            }),
            new_events: broadcast::channel(256).0,
            history: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    pub fn add_camera(&self, id: &str, health: Arc<CameraHealth>) {
        self.lock().cameras.insert(id.to_string(), CameraView { health, ..Default::default() });
    }

    pub fn set_models(&self, models: Vec<ModelInfo>) {
        self.lock().models = models;
    }

    /// Records a camera's newest frame. The frame's JPEG is made here only when it is the picture
    /// of some of its events (those without an evidence picture); otherwise when someone asks for it.
    pub fn record_frame(&self, camera: &str, at: DateTime<Utc>, live: LiveFrame, pictures_its_events: bool) {
        let live = Arc::new(live);
        let event_jpeg = if pictures_its_events { live.jpeg() } else { None };
        let mut inner = self.lock();
        for result in &live.results {
            inner.model_latency.entry(result.model.name.clone()).or_default().observe(result.latency);
        }
        if let Some(jpeg) = &event_jpeg {
            // The events of this frame were recorded just before it: the frame is their picture.
            let of_this_frame = |r: &&mut EventRecord| r.event.camera == camera && r.event.time == at;
            for record in inner.event_history.iter_mut().take_while(of_this_frame) {
                if !has_evidence_picture(&record.event) {
                    record.frame_jpeg.get_or_insert_with(|| jpeg.clone());
                }
            }
        }
        if let Some(view) = inner.cameras.get_mut(camera) {
            view.last_frame_at = Some(at);
            view.size = live.image.dimensions();
            view.inference_ms = live.results.iter().map(|r| r.latency.as_secs_f64() * 1000.0).sum();
            view.latest_results = live.results.clone();
            let now = Instant::now();
            view.recent_frame_times.push_back(now);
            while view.recent_frame_times.front().is_some_and(|t| now.duration_since(*t) > FPS_WINDOW) {
                view.recent_frame_times.pop_front();
            }
            view.live = Some(live);
        }
    }

    /// The judged frame without drawings (privacy applied) and the zones the judge used on it.
    pub fn record_scene(&self, camera: &str, image: PrivatePicture, zones_in_use: Vec<String>) {
        if let Some(view) = self.lock().cameras.get_mut(camera) {
            view.latest_scene = Some(image);
            view.zones_in_use = zones_in_use;
        }
    }

    /// The newest judged frame of a camera without drawings (privacy applied).
    pub fn latest_scene(&self, camera: &str) -> Option<Arc<RgbImage>> {
        // Masked (when first asked) outside the board's lock.
        let scene = self.lock().cameras.get(camera).and_then(|c| c.latest_scene.clone());
        scene.map(|picture| picture.image())
    }

    /// Ids of the zones the judge used on the camera's newest frame; None for an unknown camera.
    pub fn zones_in_use(&self, camera: &str) -> Option<Vec<String>> {
        self.lock().cameras.get(camera).map(|c| c.zones_in_use.clone())
    }

    /// The events of earlier runs, oldest first, from the history on disk: the page lists them as
    /// if they had just been reported (without their live frames; evidence files still show).
    pub fn load_history(&self, events: Vec<Event>) {
        let mut inner = self.lock();
        for event in events {
            inner.push_event(event);
        }
    }

    pub fn record_events(&self, events: &[Event]) {
        let mut inner = self.lock();
        for event in events {
            *inner.events_by_kind.entry(event_kind_name(event)).or_default() += 1;
            inner.push_event(event.clone());
            if let Some(old) = inner.event_history.get_mut(EVENT_FRAMES_KEPT) {
                old.frame_jpeg = None;
            }
            let _ = self.new_events.send(event.clone());
        }
    }

    pub fn set_daily_stats(&self, stats: DailyStats) {
        self.lock().daily_stats = Some(stats);
    }

    /// Live feed of new events, for Server-Sent Events.
    pub fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.new_events.subscribe()
    }

    /// The events the page knows, newest first.
    /// The events the page can list and search, newest first: the in-memory list while it holds
    /// every kept event, else the history on disk for the whole retention period (at most
    /// [`EVENT_SEARCH_MAX`]), with this run's frames and acknowledgements where the board has them.
    pub fn event_history(&self) -> Vec<EventRecord> {
        let (in_memory, history) = {
            let inner = self.lock();
            (inner.event_history.iter().cloned().collect::<Vec<_>>(), self.history.lock().ok().and_then(|h| h.clone()))
        };
        let Some(history) = history.filter(|_| in_memory.len() >= EVENT_HISTORY) else { return in_memory };
        let known: HashMap<(Uuid, u32), &EventRecord> =
            in_memory.iter().map(|r| ((r.event.event_id, r.event.revision), r)).collect();
        let mut all = Vec::new();
        let history = history.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let visited = history.for_each_newest_first(|event| {
            let record = known.get(&(event.event_id, event.revision)).map(|r| (*r).clone()).unwrap_or(EventRecord {
                event,
                frame_jpeg: None,
                acknowledged: None,
            });
            all.push(record);
            all.len() < EVENT_SEARCH_MAX
        });
        if let Err(e) = visited {
            tracing::warn!("{e}; listing only the events in memory");
            drop(known);
            return in_memory;
        }
        all
    }

    /// The history on disk, for searches beyond the events in memory.
    pub fn set_history(&self, history: Arc<Mutex<EventHistory>>) {
        if let Ok(mut slot) = self.history.lock() {
            *slot = Some(history);
        }
    }

    pub fn event_record(&self, event_id: Uuid) -> Option<EventRecord> {
        let found = self.lock().event_history.iter().find(|r| r.event.event_id == event_id).cloned();
        found.or_else(|| self.event_history().into_iter().find(|r| r.event.event_id == event_id))
    }

    /// One revision of an event (start, an update, end), newest kept one when `revision` is `None`.
    pub fn event_revision(&self, event_id: Uuid, revision: Option<u32>) -> Option<EventRecord> {
        let wanted =
            |r: &EventRecord| r.event.event_id == event_id && revision.is_none_or(|rev| r.event.revision == rev);
        let found = self.lock().event_history.iter().find(|r| wanted(r)).cloned();
        found.or_else(|| self.event_history().into_iter().find(wanted))
    }

    /// Marks an event as seen and handled on the page; `None` when the page no longer knows it.
    pub fn acknowledge_event(&self, event_id: Uuid, by: &str) -> Option<Acknowledgement> {
        let mut inner = self.lock();
        let record = inner.event_history.iter_mut().find(|r| r.event.event_id == event_id)?;
        Some(record.acknowledged.get_or_insert_with(|| Acknowledgement { by: by.to_string(), at: Utc::now() }).clone())
    }

    /// Every kept revision of an event, newest first.
    pub fn event_revisions(&self, event_id: Uuid) -> Vec<EventRecord> {
        self.event_history().into_iter().filter(|r| r.event.event_id == event_id).collect()
    }

    /// Remembers how an event was labelled (a later label replaces it).
    pub fn set_label(&self, event_id: Uuid, label: SampleLabel) {
        let mut inner = self.lock();
        inner.labels.insert(event_id, label);
        while inner.labels.len() > EVENT_HISTORY {
            inner.labels.pop_first();
        }
    }

    pub fn label(&self, event_id: Uuid) -> Option<SampleLabel> {
        self.lock().labels.get(&event_id).cloned()
    }

    pub fn set_outbox_depth(&self, depth: u64) {
        let mut inner = self.lock();
        inner.outbox_depth = depth;
        inner.outbox.depth = depth;
    }

    /// Depth, bytes and quota pruning of the outbox, for the page and telemetry.
    pub fn set_outbox_stats(&self, stats: OutboxStats) {
        let mut inner = self.lock();
        inner.outbox_depth = stats.depth;
        inner.outbox = stats;
    }

    pub fn set_mqtt_connected(&self, connected: bool, error: Option<String>) {
        let mut inner = self.lock();
        inner.mqtt.connected = connected;
        if connected || error.is_some() {
            inner.mqtt.last_error = error;
        }
    }

    /// The link tries `broker` now.
    pub fn set_mqtt_broker(&self, broker: &str) {
        let mut inner = self.lock();
        inner.mqtt.broker = Some(broker.to_string());
        inner.mqtt.connection_attempts += 1;
    }

    /// A command was refused before it was queued, for `code` (`unsigned_refused`, `signature_invalid`…).
    pub fn count_refused_command(&self, code: &str) {
        *self.lock().mqtt.commands_refused.entry(code.to_string()).or_insert(0) += 1;
    }

    /// The link connected to another broker than the one it used before.
    pub fn count_broker_switch(&self) {
        self.lock().mqtt.broker_switches += 1;
    }

    pub fn count_published(&self, n: u64) {
        self.lock().mqtt.published += n;
    }

    /// The newest frame of a camera as JPEG, boxes and zones drawn (encoded outside the lock, once).
    pub fn latest_jpeg(&self, camera: &str) -> Option<Arc<Vec<u8>>> {
        let live = self.lock().cameras.get(camera).and_then(|c| c.live.clone())?;
        live.jpeg()
    }

    pub fn camera_ids(&self) -> Vec<String> {
        self.lock().cameras.keys().cloned().collect()
    }

    pub fn snapshot(&self) -> Status {
        let inner = self.lock();
        Status {
            device_id: self.device_id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            started_at: self.started_at,
            uptime_seconds: self.started.elapsed().as_secs(),
            cameras: inner
                .cameras
                .iter()
                .map(|(id, view)| CameraStatus {
                    id: id.clone(),
                    enabled: !view.health.disabled.load(Ordering::Relaxed),
                    frames_captured: view.health.frames_captured.load(Ordering::Relaxed),
                    frames_inferred: view.health.frames_inferred.load(Ordering::Relaxed),
                    frames_dropped: view.health.frames_dropped.load(Ordering::Relaxed),
                    frames_still: view.health.frames_still.load(Ordering::Relaxed),
                    frames_by_region: view.health.frames_by_region.load(Ordering::Relaxed),
                    inference_plan: view.health.inference_plan.clone(),
                    errors: view.health.errors.load(Ordering::Relaxed),
                    last_error: view.health.last_error(),
                    decoder: view.health.decoder(),
                    video_buffered_bytes: view.health.video_buffered_bytes.load(Ordering::Relaxed),
                    last_frame_at: view.last_frame_at,
                    frame_width: view.size.0,
                    frame_height: view.size.1,
                    inference_ms: view.inference_ms,
                    fps: view.fps(),
                    record_stream: view
                        .health
                        .record
                        .as_ref()
                        .map(|record| RecordStreamStatus::of(record, !view.health.disabled.load(Ordering::Relaxed))),
                })
                .collect(),
            models: inner.models.clone(),
            mqtt: inner.mqtt.clone(),
            outbox_depth: inner.outbox_depth,
            outbox: inner.outbox.clone(),
            events_total: inner.events_total,
            recent_events: inner.recent_events.iter().cloned().collect(),
            latest_results: inner.cameras.iter().map(|(id, v)| (id.clone(), v.latest_results.clone())).collect(),
            daily_stats: inner.daily_stats.clone(),
            model_latency: inner.model_latency.clone(),
            events_by_kind: inner.events_by_kind.clone(),
            control: inner.control.clone(),
            evidence: inner.evidence.clone(),
            held: inner.held.clone(),
            evidence_usage: inner.evidence_usage.clone(),
        }
    }

    pub fn set_evidence_usage(&self, usage: EvidenceUsage) {
        self.lock().evidence_usage = Some(usage);
    }

    pub fn set_held(&self, held: HeldReport) {
        self.lock().held = held;
    }

    pub fn set_evidence_identity(&self, public_key: Option<String>, chain_head: Option<ChainHead>) {
        self.lock().evidence = EvidenceStatus { public_key, chain_head };
    }

    pub fn set_chain_head(&self, head: ChainHead) {
        self.lock().evidence.chain_head = Some(head);
    }

    pub fn set_control(&self, control: ControlStatus) {
        self.lock().control = control;
    }
}

/// Whether the event's picture is an evidence file on disk (the page shows that file; the board
/// need not keep the frame's JPEG for it).
pub fn has_evidence_picture(event: &Event) -> bool {
    event.evidence.as_ref().is_some_and(|evidence| !evidence.files.is_empty())
}

/// The event kind as it is spelled in the event JSON (`object`, ...).
pub fn event_kind_name(event: &Event) -> String {
    match serde_json::to_value(&event.kind) {
        Ok(serde_json::Value::String(kind)) => kind,
        _ => format!("{:?}", &event.kind).to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::fixtures::{at, test_event};
    use crate::wire::EventKind;
    use crate::wire::LifecycleState;

    #[test]
    fn the_page_searches_the_history_on_disk_beyond_the_events_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut history = EventHistory::open(&dir.path().join("history.redb"), 100_000).unwrap();
        let events: Vec<Event> = (0..EVENT_HISTORY + 100)
            .map(|i| {
                let mut event = test_event(EventKind::Object, LifecycleState::Start, at(i as f64));
                event.event_id = Uuid::now_v7();
                event
            })
            .collect();
        history.append(&events).unwrap();
        let board = StatusBoard::new("box".into(), Vec::new());
        board.load_history(history.newest(EVENT_HISTORY).unwrap());
        assert_eq!(board.event_history().len(), EVENT_HISTORY, "without the history: the events in memory");
        board.set_history(Arc::new(Mutex::new(history)));
        let all = board.event_history();
        assert_eq!(all.len(), EVENT_HISTORY + 100, "with it: every event kept on disk");
        assert_eq!(all[0].event.event_id, events.last().unwrap().event_id, "newest first");
        let oldest = events[0].event_id;
        assert!(board.event_record(oldest).is_some(), "an event older than those in memory is found");
    }

    /// The page shows an event's evidence file when it has one: the board keeps the frame's JPEG
    /// (tens of KB an event, for the last 200) only for the events without.
    #[test]
    fn the_board_keeps_a_frame_picture_only_for_events_without_an_evidence_file() {
        let board = StatusBoard::new("box".into(), Vec::new());
        let time = at(1.0);
        let mut with_file = test_event(EventKind::Object, LifecycleState::Start, time);
        with_file.evidence = Some(crate::wire::EvidenceRef {
            chain_seq: 1,
            files: vec![crate::wire::EvidenceFile { file: "day/a.jpg".into(), sha256: "ab".into(), bytes: 2 }],
        });
        let without = test_event(EventKind::Object, LifecycleState::Update, time);
        board.record_events(&[with_file.clone(), without.clone()]);
        let frame = LiveFrame::new(
            PrivatePicture::hiding_nothing(Arc::new(RgbImage::new(64, 48))),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        board.record_frame(&without.camera, time, frame, true);
        assert!(board.event_record(with_file.event_id).unwrap().frame_jpeg.is_none());
        let kept = board.event_record(without.event_id).unwrap().frame_jpeg.expect("the frame is its picture");
        assert!(kept.starts_with(&[0xFF, 0xD8]), "a JPEG");
        assert!(has_evidence_picture(&with_file) && !has_evidence_picture(&without));
    }
}
