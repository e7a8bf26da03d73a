//! The one way the box switches a part it runs from a manifest — a `[[models]]` entry in the
//! inference worker or a classifier slot in the judge: self-test, pending file, swap between two
//! frames, config, probation, and roll-back then or at the next start. `model_update` and
//! `site_heads` are its two callers.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::commands::CommandError;
use super::config_store::{ChangeError, ConfigStore};
use crate::base::shutdown::Shutdown;
use crate::base::write_file::write_atomically;
use crate::config::Config;
use crate::infer::control::{ModelRuns, RunCounts};
use crate::infer::{Findings, Model};
use crate::judge::control::ClassifierSlot;

/// Failures that, when they are also the majority of runs, fail a model on probation.
const PROBATION_FAILURES: u64 = 3;
/// Successful runs a model needs before its probation can pass: time alone (a camera that sent
/// nothing) proves nothing.
pub const PROBATION_MIN_RUNS: u64 = 3;
/// A probation without enough runs waits up to this many times `probation_secs`, then fails.
pub const PROBATION_EXTENSION: u32 = 4;
const PROBATION_CHECK_EVERY: Duration = Duration::from_millis(500);

/// What a switch replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchTarget {
    /// The `[[models]]` entry at this index, run by the inference worker.
    Model(usize),
    /// A second-stage classifier slot of the judge (a site head).
    Classifier(ClassifierSlot),
}

impl SwitchTarget {
    /// The manifest the config names for the target now; None when it is not configured.
    pub fn manifest(self, config: &Config) -> Option<PathBuf> {
        match self {
            SwitchTarget::Model(index) => config.models.get(index).map(|m| m.manifest.clone()),
            SwitchTarget::Classifier(slot) => slot_manifest(config, slot),
        }
    }

    /// Points the config file at `manifest` for the target.
    fn set_manifest(self, store: &ConfigStore, manifest: &Path) -> Result<(), ChangeError> {
        match self {
            SwitchTarget::Model(index) => store.set_model_manifest(index, manifest).map(|_| ()),
            SwitchTarget::Classifier(slot) => store.set_classifier_manifest(slot, manifest).map(|_| ()),
        }
    }

    /// The part switched, in messages.
    fn part(self) -> &'static str {
        match self {
            SwitchTarget::Model(_) => "model",
            SwitchTarget::Classifier(_) => "classifier",
        }
    }
}

/// The manifest a slot uses now; None when the slot's rule has no classifier table.
pub fn slot_manifest(config: &Config, slot: ClassifierSlot) -> Option<PathBuf> {
    match slot {
        ClassifierSlot::Taxonomy => Some(config.taxonomy.classifier.clone()),
        ClassifierSlot::OverflowState => config.rules.overflow.state_classifier.as_ref().map(|c| c.manifest.clone()),
        ClassifierSlot::TruckCover => config.rules.truck_exit.cover_classifier.as_ref().map(|c| c.manifest.clone()),
    }
}

/// The running stage whose part a switch replaces: the inference worker (a model) or the judge (a
/// slot's classifier).
pub trait Stage {
    /// What the stage runs: a model, or a slot's classifier (None: the slot is empty).
    type Part: Send;
    /// Hands `part` to the stage between two frames; returns the part it ran until then.
    fn swap_in(&self, part: Self::Part) -> impl Future<Output = Result<Self::Part, CommandError>> + Send;
}

/// The verdict on a model after its first runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbationVerdict {
    Healthy,
    Failing,
}

/// Failing once at least [`PROBATION_FAILURES`] runs failed and they are the majority.
pub fn probation_verdict(since_switch: RunCounts) -> ProbationVerdict {
    if since_switch.failed >= PROBATION_FAILURES && since_switch.failed > since_switch.ok {
        ProbationVerdict::Failing
    } else {
        ProbationVerdict::Healthy
    }
}

/// How a watched probation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbationOutcome {
    /// At least [`PROBATION_MIN_RUNS`] successful runs, and not failing.
    Passed(RunCounts),
    Failed(RunCounts),
    /// Too few successful runs even after waiting [`PROBATION_EXTENSION`] times longer.
    TooFewRuns(RunCounts),
    /// One frame has been running this long: the model (or its backend) hangs.
    Hung(Duration),
    Interrupted,
}

/// Watches a model's runs for `duration` (longer while it has run too few times to judge), counting
/// from `baseline`: its counts taken at the switch, before a run of it can have been judged.
pub async fn watch_probation(
    runs: &ModelRuns,
    model: &str,
    baseline: RunCounts,
    duration: Duration,
    hung_after: Duration,
    shutdown: &mut Shutdown,
) -> ProbationOutcome {
    let started = Instant::now();
    loop {
        if shutdown.sleep(PROBATION_CHECK_EVERY).await {
            return ProbationOutcome::Interrupted;
        }
        let now = runs.get(model);
        let since =
            RunCounts { ok: now.ok - baseline.ok.min(now.ok), failed: now.failed - baseline.failed.min(now.failed) };
        if probation_verdict(since) == ProbationVerdict::Failing {
            return ProbationOutcome::Failed(since);
        }
        if let Some(busy) = runs.busy_for().filter(|busy| *busy >= hung_after) {
            return ProbationOutcome::Hung(busy);
        }
        let elapsed = started.elapsed();
        if elapsed >= duration && since.ok >= PROBATION_MIN_RUNS {
            return ProbationOutcome::Passed(since);
        }
        if elapsed >= duration * PROBATION_EXTENSION {
            return ProbationOutcome::TooFewRuns(since);
        }
    }
}

/// Runs a freshly loaded model on every picture of `folder`; refuses it on the first error or an
/// output that makes no sense (non-finite or out-of-range scores, boxes outside the frame).
pub fn self_test(model: &mut Model, folder: &Path) -> Result<Value, String> {
    let mut pictures: Vec<PathBuf> = std::fs::read_dir(folder)
        .map_err(|e| format!("cannot read self-test pictures in {}: {e}", folder.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_lowercase().as_str()))
        })
        .collect();
    pictures.sort();
    if pictures.is_empty() {
        return Err(format!("no .jpg/.png pictures in {} to self-test with", folder.display()));
    }
    let mut findings = 0usize;
    let mut total_ms = 0.0;
    for path in &pictures {
        let image = crate::source::replay::decode_picture("self-test", path).map_err(|e| e.to_string())?;
        let result = model.infer(&image).map_err(|e| format!("{}: {e}", path.display()))?;
        total_ms += result.latency.as_secs_f64() * 1000.0;
        let (width, height) = (image.width() as f32, image.height() as f32);
        let bad = |what: String| Err(format!("{}: {what}", path.display()));
        match &result.findings {
            Findings::Detect { detections } => {
                for d in detections {
                    let b = d.bbox;
                    if !(0.0..=1.0).contains(&d.score) || !d.score.is_finite() {
                        return bad(format!("detection score {} is not in 0..1", d.score));
                    }
                    let inside = [b.x1, b.x2].iter().all(|x| x.is_finite() && *x >= -1.0 && *x <= width + 1.0)
                        && [b.y1, b.y2].iter().all(|y| y.is_finite() && *y >= -1.0 && *y <= height + 1.0);
                    if !inside {
                        return bad(format!("box {b:?} lies outside the {width}×{height} frame"));
                    }
                }
                findings += detections.len();
            }
            Findings::Classify { classes } => {
                if classes.is_empty() {
                    return bad("the classifier returned no classes".into());
                }
                if let Some(c) = classes.iter().find(|c| !(0.0..=1.0).contains(&c.score) || !c.score.is_finite()) {
                    return bad(format!("class score {} is not in 0..1", c.score));
                }
                findings += classes.len();
            }
        }
    }
    Ok(json!({
        "pictures": pictures.len(),
        "findings": findings,
        "mean_inference_ms": (total_ms / pictures.len() as f64 * 100.0).round() / 100.0,
    }))
}

/// A switch its probation has not confirmed yet, kept in `state_dir` so that a crash, a watchdog
/// restart or a stop during the probation rolls it back at the next start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "PendingFile", into = "PendingFile")]
pub struct PendingSwitch {
    pub target: SwitchTarget,
    pub name: String,
    pub previous_manifest: PathBuf,
    pub new_manifest: PathBuf,
    pub switched_at: DateTime<Utc>,
}

/// The pending switch on disk, as model switches first wrote it: `index` names the `[[models]]`
/// entry unless `classifier` names a slot. Unchanged, so a box upgraded during a probation (or
/// downgraded) still rolls it back.
#[derive(Serialize, Deserialize)]
struct PendingFile {
    index: usize,
    name: String,
    previous_manifest: PathBuf,
    new_manifest: PathBuf,
    switched_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    classifier: Option<ClassifierSlot>,
}

impl From<PendingFile> for PendingSwitch {
    fn from(file: PendingFile) -> Self {
        let target = match file.classifier {
            Some(slot) => SwitchTarget::Classifier(slot),
            None => SwitchTarget::Model(file.index),
        };
        let PendingFile { name, previous_manifest, new_manifest, switched_at, .. } = file;
        Self { target, name, previous_manifest, new_manifest, switched_at }
    }
}

impl From<PendingSwitch> for PendingFile {
    fn from(pending: PendingSwitch) -> Self {
        let (index, classifier) = match pending.target {
            SwitchTarget::Model(index) => (index, None),
            SwitchTarget::Classifier(slot) => (0, Some(slot)),
        };
        let PendingSwitch { name, previous_manifest, new_manifest, switched_at, .. } = pending;
        Self { index, name, previous_manifest, new_manifest, switched_at, classifier }
    }
}

pub const PENDING_SWITCH_FILE: &str = "model-switch-pending.json";

impl PendingSwitch {
    pub(super) fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomically(&state_dir.join(PENDING_SWITCH_FILE), &json)
    }

    /// Removes the record, durably: one back after a power cut would roll a confirmed switch back.
    fn clear(state_dir: &Path) {
        let path = state_dir.join(PENDING_SWITCH_FILE);
        let removed = match std::fs::remove_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            removed => removed.and_then(|()| crate::base::write_file::sync_folder(&path)),
        };
        if let Err(e) = removed {
            tracing::error!(path = %path.display(), "cannot clear the pending model switch: {e}");
        }
    }

    fn load(state_dir: &Path) -> Result<Option<Self>, String> {
        let path = state_dir.join(PENDING_SWITCH_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Records the switch, swaps `new` into `stage` and points the config at the new manifest;
    /// an error here has changed nothing.
    pub async fn switch_in<S: Stage>(
        self,
        stage: &S,
        new: S::Part,
        store: &ConfigStore,
        state_dir: &Path,
    ) -> Result<Switched<S::Part>, CommandError> {
        // Written before the switch: a crash from here until the probation ends rolls it back.
        self.save(state_dir).map_err(|e| {
            CommandError::new("state_unwritable", format!("cannot record the pending switch, nothing changed: {e}"))
        })?;
        let previous = match stage.swap_in(new).await {
            Ok(previous) => previous,
            Err(e) => {
                Self::clear(state_dir);
                return Err(e);
            }
        };
        if let Err(e) = self.target.set_manifest(store, &self.new_manifest) {
            // The switch must be durable, or not happen.
            let _ = stage.swap_in(previous).await;
            Self::clear(state_dir);
            return Err(CommandError::new(e.code(), format!("the new {} was not kept: {e}", self.target.part())));
        }
        Ok(Switched { pending: self, previous })
    }
}

/// A switch done and on probation: what it recorded, and the previous part kept for a roll-back.
pub struct Switched<P> {
    pub pending: PendingSwitch,
    pub previous: P,
}

impl<P> Switched<P> {
    /// The probation passed: the new part stays, the previous one is let go.
    pub fn confirm(self, state_dir: &Path) {
        PendingSwitch::clear(state_dir);
    }

    /// Swaps the previous part back into `stage` (then runs `swapped_back`) and points the config
    /// at its manifest again. The pending file goes once both are done; else the next start rolls
    /// the config back.
    pub async fn roll_back<S: Stage<Part = P>>(
        self,
        stage: &S,
        store: &ConfigStore,
        state_dir: &Path,
        swapped_back: impl FnOnce(),
    ) -> Result<(), String> {
        stage.swap_in(self.previous).await.map_err(|e| e.message)?;
        swapped_back();
        self.pending.target.set_manifest(store, &self.pending.previous_manifest).map_err(|e| e.to_string())?;
        PendingSwitch::clear(state_dir);
        Ok(())
    }
}

/// At start, before the models load: a switch (of a model or a site head) whose probation never
/// ended (the agent crashed, was restarted by the watchdog, or stopped) is rolled back in the
/// config file. Returns what was done.
pub fn roll_back_unconfirmed_switch(config_path: &Path, config: &Config) -> Result<Option<String>, String> {
    let Some(pending) = PendingSwitch::load(&config.state_dir)? else { return Ok(None) };
    if pending.target.manifest(config).is_some_and(|m| m == pending.new_manifest) {
        let store = ConfigStore::new(Some(config_path.to_owned()), config.clone());
        pending.target.set_manifest(&store, &pending.previous_manifest).map_err(|e| {
            format!(
                "model {:?} switched at {} was not confirmed, and rolling it back failed: {e}",
                pending.name, pending.switched_at
            )
        })?;
    }
    PendingSwitch::clear(&config.state_dir);
    Ok(Some(format!(
        "model {:?} switched at {} to {} never finished its probation (crash, watchdog restart or stop); \
         rolled back to {}",
        pending.name,
        pending.switched_at.to_rfc3339(),
        pending.new_manifest.display(),
        pending.previous_manifest.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    #[test]
    fn a_model_fails_probation_only_when_failures_are_many_and_the_majority() {
        let verdict = |ok, failed| probation_verdict(RunCounts { ok, failed });
        assert_eq!(verdict(0, 0), ProbationVerdict::Healthy);
        assert_eq!(verdict(0, 2), ProbationVerdict::Healthy, "two failures may be bad frames");
        assert_eq!(verdict(0, 3), ProbationVerdict::Failing);
        assert_eq!(verdict(10, 3), ProbationVerdict::Healthy);
        assert_eq!(verdict(3, 4), ProbationVerdict::Failing);
    }

    const HUNG: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_frame_that_never_ends_during_probation_is_a_hung_model() {
        let runs = ModelRuns::default();
        let (_trigger, mut shutdown) = crate::base::shutdown::channel();
        runs.record("nanodet", true);
        runs.frame_started();
        let since = runs.get("nanodet");
        let outcome =
            watch_probation(&runs, "nanodet", since, Duration::from_secs(5), Duration::from_millis(700), &mut shutdown)
                .await;
        let ProbationOutcome::Hung(busy) = outcome else { panic!("not hung: {outcome:?}") };
        assert!(busy >= Duration::from_millis(700));
    }

    /// A config file whose one model was switched to a copy of the shipped detector; returns the
    /// file, the state folder, and the previous and new manifests.
    fn a_box_with_a_switched_model(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
        let state = dir.join("state");
        std::fs::create_dir(&state).unwrap();
        let old = nanodet_manifest();
        let new = dir.join("nanodet-new.toml");
        std::fs::copy(&old, &new).unwrap();
        for file in ["nanodet.onnx", "coco_labels.txt"] {
            std::os::unix::fs::symlink(old.with_file_name(file), dir.join(file)).unwrap();
        }
        let path = dir.join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "state_dir = \"state\"\n[[models]]\nmanifest = {:?}\n[[cameras]]\nid = \"yard\"\nsource = {{ kind = \"replay\", path = \"x\" }}\n",
                new.display().to_string()
            ),
        )
        .unwrap();
        (path, state, old, new)
    }

    #[test]
    fn a_switch_left_pending_is_rolled_back_in_the_config_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let (path, state, old, new) = a_box_with_a_switched_model(dir.path());
        let config = Config::load(&path).unwrap();
        assert_eq!(roll_back_unconfirmed_switch(&path, &config).unwrap(), None, "nothing pending");
        let pending = PendingSwitch {
            target: SwitchTarget::Model(0),
            name: "nanodet".into(),
            previous_manifest: old.clone(),
            new_manifest: new.clone(),
            switched_at: chrono::Utc::now(),
        };
        pending.save(&state).unwrap();
        let note = roll_back_unconfirmed_switch(&path, &config).unwrap().expect("rolled back");
        assert!(note.contains("never finished its probation"), "{note}");
        assert_eq!(Config::load(&path).unwrap().models[0].manifest, old);
        assert!(!state.join(PENDING_SWITCH_FILE).exists(), "cleared once done");
    }

    #[test]
    fn a_pending_file_written_by_the_previous_version_still_rolls_back() {
        // A box upgraded during a probation finds the file as the version before `SwitchTarget` wrote it.
        let dir = tempfile::tempdir().unwrap();
        let (path, state, old, new) = a_box_with_a_switched_model(dir.path());
        let written_before = format!(
            "{{\n  \"index\": 0,\n  \"name\": \"nanodet\",\n  \"previous_manifest\": {:?},\n  \"new_manifest\": {:?},\n  \
             \"switched_at\": \"2025-06-01T12:00:00.123456789Z\"\n}}",
            old.display().to_string(),
            new.display().to_string()
        );
        std::fs::write(state.join(PENDING_SWITCH_FILE), written_before).unwrap();
        let config = Config::load(&path).unwrap();
        let note = roll_back_unconfirmed_switch(&path, &config).unwrap().expect("rolled back");
        assert!(note.contains("2025-06-01T12:00:00") && note.contains("nanodet-new.toml"), "{note}");
        assert_eq!(Config::load(&path).unwrap().models[0].manifest, old);
        assert!(!state.join(PENDING_SWITCH_FILE).exists(), "cleared once done");
    }

    #[test]
    fn the_pending_file_keeps_the_format_the_previous_version_reads() {
        let head = PendingSwitch {
            target: SwitchTarget::Classifier(ClassifierSlot::OverflowState),
            name: "site".into(),
            previous_manifest: "a.toml".into(),
            new_manifest: "b.toml".into(),
            switched_at: "2025-06-01T12:00:00Z".parse().unwrap(),
        };
        let model = PendingSwitch { target: SwitchTarget::Model(2), name: "nanodet".into(), ..head.clone() };
        let as_written = |pending: &PendingSwitch| serde_json::to_value(pending).unwrap();
        let fields =
            json!({ "previous_manifest": "a.toml", "new_manifest": "b.toml", "switched_at": "2025-06-01T12:00:00Z" });
        let with = |extra: Value| {
            let mut all = fields.as_object().unwrap().clone();
            all.extend(extra.as_object().unwrap().clone());
            Value::Object(all)
        };
        // A head switch wrote `index: 0` beside its slot; a model switch no `classifier` at all.
        assert_eq!(as_written(&head), with(json!({ "index": 0, "name": "site", "classifier": "overflow_state" })));
        assert_eq!(as_written(&model), with(json!({ "index": 2, "name": "nanodet" })));
        for pending in [head, model] {
            assert_eq!(serde_json::from_value::<PendingSwitch>(as_written(&pending)).unwrap(), pending);
        }
    }

    #[tokio::test]
    async fn probation_notices_a_failing_model_and_lets_a_working_one_pass() {
        let runs = ModelRuns::default();
        let (_trigger, mut shutdown) = crate::base::shutdown::channel();
        runs.record("nanodet", false); // before the switch: not counted
        for _ in 0..5 {
            runs.record("nanodet", true);
        }
        // Runs before the switch do not count: without runs of its own, time alone passes nothing.
        let since = runs.get("nanodet");
        let idle = watch_probation(&runs, "nanodet", since, Duration::from_millis(300), HUNG, &mut shutdown).await;
        assert_eq!(idle, ProbationOutcome::TooFewRuns(RunCounts { ok: 0, failed: 0 }));
        let working = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for _ in 0..3 {
                runs.record("nanodet", true);
            }
        };
        let since = runs.get("nanodet");
        let (verdict, ()) = tokio::join!(
            watch_probation(&runs, "nanodet", since, Duration::from_millis(600), HUNG, &mut shutdown),
            working
        );
        assert_eq!(verdict, ProbationOutcome::Passed(RunCounts { ok: 3, failed: 0 }));
        let failing = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for _ in 0..4 {
                runs.record("nanodet", false);
            }
        };
        let since = runs.get("nanodet");
        let (verdict, ()) = tokio::join!(
            watch_probation(&runs, "nanodet", since, Duration::from_secs(5), HUNG, &mut shutdown),
            failing
        );
        assert_eq!(verdict, ProbationOutcome::Failed(RunCounts { ok: 0, failed: 4 }));
    }

    fn nanodet_manifest() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/nanodet.toml")
    }

    #[test]
    fn the_real_detector_passes_the_self_test_on_the_samples() {
        let config =
            ModelConfig { manifest: nanodet_manifest(), score_threshold: None, class_thresholds: Default::default() };
        let mut model = Model::load(&config, crate::config::BackendKind::Tract).unwrap();
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/samples");
        let summary = self_test(&mut model, &samples).unwrap();
        assert_eq!(summary["pictures"], 3);
        assert!(summary["findings"].as_u64().unwrap() > 0, "{summary}");
    }

    /// A backend that returns garbage: the double beside the real detector's self-test above.
    struct GarbageBackend;
    impl crate::infer::Backend for GarbageBackend {
        fn name(&self) -> &'static str {
            "garbage"
        }
        fn execution_provider(&self) -> String {
            "cpu".into()
        }
        fn run(
            &mut self,
            _input: &[f32],
            _shape: &[usize],
            outputs: &mut Vec<crate::infer::Output>,
        ) -> Result<(), crate::infer::InferError> {
            *outputs = vec![crate::infer::Output { name: "x".into(), shape: vec![1, 3], data: vec![f32::NAN; 3] }];
            Ok(())
        }
    }

    #[test]
    fn a_model_with_nonsense_output_fails_the_self_test() {
        let verified = crate::infer::manifest::Manifest::load(&nanodet_manifest()).unwrap().verify().unwrap();
        let mut model = Model::with_backend(verified, Box::new(GarbageBackend), None);
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/samples");
        let err = self_test(&mut model, &samples).unwrap_err();
        assert!(err.contains("coffee.png"), "{err}");
    }
}
