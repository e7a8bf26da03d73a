//! The status board: what the agent knows about itself right now (cameras, models, MQTT link,
//! outbox, recent events, latest annotated frames). Stages write to it; the web page and the MQTT
//! status message read it. Held behind one lock, written a few times per frame at most.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::infer::{ModelInfo, ModelResult};
use crate::judge::Event;
use crate::source::CameraHealth;

/// Events kept for the page; the outbox keeps them all for the platform.
pub const RECENT_EVENTS: usize = 20;

#[derive(Debug, Clone, Serialize)]
pub struct CameraStatus {
    pub id: String,
    pub frames_captured: u64,
    pub frames_inferred: u64,
    pub frames_dropped: u64,
    /// Kept from inference by the camera's motion gate: nothing had changed.
    pub frames_still: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub last_frame_at: Option<DateTime<Utc>>,
    pub frame_width: u32,
    pub frame_height: u32,
    pub inference_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MqttStatus {
    pub configured: bool,
    pub broker: Option<String>,
    pub connected: bool,
    pub last_error: Option<String>,
    pub published: u64,
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
    pub events_total: u64,
    pub recent_events: Vec<Event>,
    pub latest_results: BTreeMap<String, Vec<ModelResult>>,
}

#[derive(Default)]
struct CameraView {
    health: Arc<CameraHealth>,
    last_frame_at: Option<DateTime<Utc>>,
    size: (u32, u32),
    inference_ms: f64,
    latest_jpeg: Option<Arc<Vec<u8>>>,
    latest_results: Vec<ModelResult>,
}

struct Inner {
    cameras: BTreeMap<String, CameraView>,
    models: Vec<ModelInfo>,
    mqtt: MqttStatus,
    outbox_depth: u64,
    events_total: u64,
    recent_events: VecDeque<Event>,
}

pub struct StatusBoard {
    device_id: String,
    started_at: DateTime<Utc>,
    started: Instant,
    inner: Mutex<Inner>,
}

impl StatusBoard {
    pub fn new(device_id: String, mqtt_broker: Option<String>) -> Self {
        Self {
            device_id,
            started_at: Utc::now(),
            started: Instant::now(),
            inner: Mutex::new(Inner {
                cameras: BTreeMap::new(),
                models: Vec::new(),
                mqtt: MqttStatus {
                    configured: mqtt_broker.is_some(),
                    broker: mqtt_broker,
                    connected: false,
                    last_error: None,
                    published: 0,
                },
                outbox_depth: 0,
                events_total: 0,
                recent_events: VecDeque::with_capacity(RECENT_EVENTS),
            }),
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

    pub fn record_frame(
        &self,
        camera: &str,
        at: DateTime<Utc>,
        size: (u32, u32),
        results: Vec<ModelResult>,
        jpeg: Option<Vec<u8>>,
    ) {
        let mut inner = self.lock();
        if let Some(view) = inner.cameras.get_mut(camera) {
            view.last_frame_at = Some(at);
            view.size = size;
            view.inference_ms = results.iter().map(|r| r.latency.as_secs_f64() * 1000.0).sum();
            view.latest_results = results;
            if let Some(jpeg) = jpeg {
                view.latest_jpeg = Some(Arc::new(jpeg));
            }
        }
    }

    pub fn record_events(&self, events: &[Event]) {
        let mut inner = self.lock();
        for event in events {
            if inner.recent_events.len() == RECENT_EVENTS {
                inner.recent_events.pop_back();
            }
            inner.recent_events.push_front(event.clone());
            inner.events_total += 1;
        }
    }

    pub fn set_outbox_depth(&self, depth: u64) {
        self.lock().outbox_depth = depth;
    }

    pub fn set_mqtt_connected(&self, connected: bool, error: Option<String>) {
        let mut inner = self.lock();
        inner.mqtt.connected = connected;
        if connected || error.is_some() {
            inner.mqtt.last_error = error;
        }
    }

    pub fn count_published(&self, n: u64) {
        self.lock().mqtt.published += n;
    }

    pub fn latest_jpeg(&self, camera: &str) -> Option<Arc<Vec<u8>>> {
        self.lock().cameras.get(camera).and_then(|c| c.latest_jpeg.clone())
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
                    frames_captured: view.health.frames_captured.load(Ordering::Relaxed),
                    frames_inferred: view.health.frames_inferred.load(Ordering::Relaxed),
                    frames_dropped: view.health.frames_dropped.load(Ordering::Relaxed),
                    frames_still: view.health.frames_still.load(Ordering::Relaxed),
                    errors: view.health.errors.load(Ordering::Relaxed),
                    last_error: view.health.last_error(),
                    last_frame_at: view.last_frame_at,
                    frame_width: view.size.0,
                    frame_height: view.size.1,
                    inference_ms: view.inference_ms,
                })
                .collect(),
            models: inner.models.clone(),
            mqtt: inner.mqtt.clone(),
            outbox_depth: inner.outbox_depth,
            events_total: inner.events_total,
            recent_events: inner.recent_events.iter().cloned().collect(),
            latest_results: inner.cameras.iter().map(|(id, v)| (id.clone(), v.latest_results.clone())).collect(),
        }
    }
}
