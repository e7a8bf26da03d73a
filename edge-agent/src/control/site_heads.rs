//! Deploying a site head (a classifier from `edge-agent learn`) into one of the judge's
//! second-stage slots: load and check against the manifest → the slot's labels must be among the
//! head's → the switch (`switch.rs`: self-test, swap in the judge between two frames, config,
//! probation on its runs, roll-back then or at the next start). A head failing in its first
//! minutes, or never running, is switched back. Every refusal before the switch leaves the agent
//! exactly as it was.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use super::commands::CommandError;
use super::settings::LiveSettings;
use super::switch::{
    self_test, slot_manifest, watch_probation, PendingSwitch, ProbationOutcome, Stage, SwitchTarget, Switched,
    PROBATION_EXTENSION, PROBATION_MIN_RUNS,
};
use crate::base::shutdown::Shutdown;
use crate::config::Config;
use crate::infer::control::{ModelRuns, RunCounts};
use crate::infer::manifest::Task;
use crate::judge::control::{ClassifierSlot, JudgeControl};
use crate::judge::rules::SecondStage;

/// Where a deployment stands, for the page and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStage {
    Probation,
    Confirmed,
    RolledBack,
    /// The agent stopped during the probation; the next start rolls it back.
    Interrupted,
}

/// The last deployment of a site head.
#[derive(Debug, Clone, Serialize)]
pub struct Deployment {
    pub slot: ClassifierSlot,
    pub key: &'static str,
    pub name: String,
    pub sha256: String,
    pub manifest: PathBuf,
    pub previous_manifest: PathBuf,
    pub stage: DeploymentStage,
    pub message: String,
    pub self_test: Value,
    pub switched_at: DateTime<Utc>,
    pub probation_secs: u64,
}

pub struct SiteHeads {
    settings: Arc<LiveSettings>,
    runs: Arc<ModelRuns>,
    state_dir: PathBuf,
    /// Shared with the `model` command: one switch (and its pending file) at a time.
    switch_busy: Arc<AtomicBool>,
    last: Mutex<Option<Deployment>>,
}

/// A classifier slot of the judge, as the stage a head switch swaps a classifier in.
struct JudgeSlot<'a> {
    settings: &'a LiveSettings,
    slot: ClassifierSlot,
}

impl Stage for JudgeSlot<'_> {
    type Part = Option<Box<SecondStage>>;

    async fn swap_in(&self, stage: Self::Part) -> Result<Self::Part, CommandError> {
        let (reply, answer) = oneshot::channel();
        self.settings
            .judge_control()
            .send(JudgeControl::SwapClassifier { slot: self.slot, stage, reply })
            .await
            .map_err(|_| CommandError::new("internal", "the judge has stopped"))?;
        match answer.await {
            Ok(Ok(old)) => Ok(old),
            Ok(Err(refused)) => Err(CommandError::new("unknown_target", refused.why)),
            Err(_) => Err(CommandError::new("internal", "the judge did not answer")),
        }
    }
}

/// A head switched into its slot, on probation.
type HeadSwitch = Switched<Option<Box<SecondStage>>>;

impl SiteHeads {
    pub fn new(
        settings: Arc<LiveSettings>,
        runs: Arc<ModelRuns>,
        state_dir: PathBuf,
        switch_busy: Arc<AtomicBool>,
    ) -> Self {
        Self { settings, runs, state_dir, switch_busy, last: Mutex::new(None) }
    }

    /// The last deployment since start, if any.
    pub fn last(&self) -> Option<Deployment> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, deployment: &Deployment) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(deployment.clone());
    }

    fn set_stage(&self, stage: DeploymentStage, message: String) {
        if let Some(last) = self.last.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            last.stage = stage;
            last.message = message;
        }
    }

    /// Switches the head of `manifest` into `slot` and starts its probation in the background
    /// (watch [`Self::last`]). Returns once it is switched in, or with why nothing changed.
    pub async fn deploy(
        self: &Arc<Self>,
        slot: ClassifierSlot,
        manifest: &Path,
        shutdown: Shutdown,
    ) -> Result<Deployment, CommandError> {
        if self.switch_busy.swap(true, Ordering::SeqCst) {
            return Err(CommandError::new(
                "busy",
                "a model or classifier switch is in its probation; try again when it is confirmed or rolled back",
            ));
        }
        match self.switch(slot, manifest).await {
            Ok((deployment, switched)) => {
                self.record(&deployment);
                let heads = self.clone();
                let name = deployment.name.clone();
                let probation = Duration::from_secs(deployment.probation_secs);
                // Counted from here, not from when the spawned task first runs: the head's first
                // runs may come before that.
                let baseline = self.runs.get(&name);
                tokio::spawn(async move {
                    let mut shutdown = shutdown;
                    heads.probation(slot, switched, &name, baseline, probation, &mut shutdown).await;
                    heads.switch_busy.store(false, Ordering::SeqCst);
                });
                Ok(deployment)
            }
            Err(e) => {
                self.switch_busy.store(false, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Everything up to and including the switch; an error here has changed nothing.
    async fn switch(&self, slot: ClassifierSlot, manifest: &Path) -> Result<(Deployment, HeadSwitch), CommandError> {
        let config = self.settings.store().current();
        if self.settings.store().path().is_none() {
            return Err(CommandError::new(
                "no_config_file",
                "the agent runs on its embedded defaults (no --config FILE), so a classifier switch could not be persisted",
            ));
        }
        let previous_manifest = slot_manifest(&config, slot).ok_or_else(|| {
            CommandError::new(
                "unknown_target",
                format!(
                    "`{}` is not configured: its rule needs its table (labels) in the config first",
                    slot.manifest_key()
                ),
            )
        })?;
        let self_test_folder = config.model_update.self_test_folder();
        let (config_for_load, path) = (config.clone(), manifest.to_owned());
        let (stage, self_test) =
            tokio::task::spawn_blocking(move || prepare(&config_for_load, slot, &path, &self_test_folder))
                .await
                .map_err(|e| CommandError::new("internal", format!("classifier loading task failed: {e}")))??;
        let (name, sha256) = (stage.id().name.clone(), stage.id().sha256.clone());
        let pending = PendingSwitch {
            target: SwitchTarget::Classifier(slot),
            name: name.clone(),
            previous_manifest: previous_manifest.clone(),
            new_manifest: manifest.to_owned(),
            switched_at: Utc::now(),
        };
        let judge = JudgeSlot { settings: &self.settings, slot };
        let new = Some(Box::new(stage));
        let switched = pending.switch_in(&judge, new, self.settings.store(), &self.state_dir).await?;
        let probation_secs = config.model_update.probation_secs;
        tracing::info!(slot = slot.manifest_key(), classifier = %name, %sha256, "site head switched in; on probation");
        let deployment = Deployment {
            slot,
            key: slot.manifest_key(),
            name,
            sha256,
            manifest: manifest.to_owned(),
            previous_manifest,
            stage: DeploymentStage::Probation,
            message: format!(
                "on probation for {probation_secs} s: it needs {PROBATION_MIN_RUNS} successful runs on real crops"
            ),
            self_test,
            switched_at: switched.pending.switched_at,
            probation_secs,
        };
        Ok((deployment, switched))
    }

    /// Watches the head's runs; switches the previous classifier back into `slot` unless it passes.
    async fn probation(
        &self,
        slot: ClassifierSlot,
        switched: HeadSwitch,
        name: &str,
        baseline: RunCounts,
        duration: Duration,
        shutdown: &mut Shutdown,
    ) {
        // The judge's heartbeat covers a classifier that hangs: the watchdog restarts the agent
        // and the start rolls the switch back.
        let why = match watch_probation(&self.runs, name, baseline, duration, Duration::MAX, shutdown).await {
            ProbationOutcome::Interrupted => {
                let message = "the agent stopped during the probation; the next start rolls it back".to_string();
                return self.set_stage(DeploymentStage::Interrupted, message);
            }
            ProbationOutcome::Passed(counts) => {
                switched.confirm(&self.state_dir);
                tracing::info!(classifier = %name, ok = counts.ok, "site head passed its probation");
                let message = format!("confirmed after {} successful runs and {} failed", counts.ok, counts.failed);
                return self.set_stage(DeploymentStage::Confirmed, message);
            }
            ProbationOutcome::Hung(busy) => format!("a frame ran {} s", busy.as_secs()),
            ProbationOutcome::Failed(counts) => format!(
                "the new classifier failed {} of {} runs during its probation; the previous one ({}) is back",
                counts.failed,
                counts.ok + counts.failed,
                switched.pending.previous_manifest.display()
            ),
            ProbationOutcome::TooFewRuns(counts) => format!(
                "the new classifier ran successfully only {} times in {} s (it needs {PROBATION_MIN_RUNS}: nothing came \
                 its way to classify); the previous one ({}) is back",
                counts.ok,
                (duration * PROBATION_EXTENSION).as_secs(),
                switched.pending.previous_manifest.display()
            ),
        };
        tracing::error!(classifier = %name, "{why}");
        let judge = JudgeSlot { settings: &self.settings, slot };
        match switched.roll_back(&judge, self.settings.store(), &self.state_dir, || {}).await {
            Ok(()) => self.set_stage(DeploymentStage::RolledBack, why),
            Err(e) => self.set_stage(
                DeploymentStage::RolledBack,
                format!("{why}; but the roll-back failed ({e}): the next start rolls it back"),
            ),
        }
    }
}

/// The labels `slot` needs the head to have, and why.
fn needed_labels(config: &Config, slot: ClassifierSlot) -> Result<Vec<String>, CommandError> {
    let rules = &config.rules;
    match slot {
        ClassifierSlot::Taxonomy => Ok(Vec::new()),
        ClassifierSlot::OverflowState => match (&rules.overflow.state_classifier, rules.overflow.enabled) {
            (Some(state), true) => Ok(state.on_labels.clone()),
            _ => Err(CommandError::new(
                "unknown_target",
                "`rules.overflow` is off or has no `state_classifier` table (`on_labels`)",
            )),
        },
        ClassifierSlot::TruckCover => match (&rules.truck_exit.cover_classifier, rules.truck_exit.enabled) {
            (Some(cover), true) => Ok(cover.uncovered_labels.iter().chain(&cover.covered_labels).cloned().collect()),
            _ => Err(CommandError::new(
                "unknown_target",
                "`rules.truck_exit` is off or has no `cover_classifier` table (its labels)",
            )),
        },
    }
}

/// Loads the head as the judge would, checks it fits the slot and runs it on the self-test
/// pictures; blocking.
fn prepare(
    config: &Config,
    slot: ClassifierSlot,
    manifest: &Path,
    self_test_folder: &Path,
) -> Result<(SecondStage, Value), CommandError> {
    let mut stage = SecondStage::load(manifest, config.judge_settings().backend).map_err(|e| {
        CommandError::new(
            "load_failed",
            format!("the classifier {} does not load: {e}; nothing changed", manifest.display()),
        )
    })?;
    let model = stage.model_mut();
    if model.task() != Task::Classify {
        return Err(CommandError::new(
            "load_failed",
            format!("{} is a detector; `{}` takes a classifier", manifest.display(), slot.manifest_key()),
        ));
    }
    let labels = model.labels().to_vec();
    let missing: Vec<String> = match slot {
        ClassifierSlot::Taxonomy => labels
            .iter()
            .filter(|label| !config.taxonomy.categories.iter().any(|c| &c.name == *label))
            .cloned()
            .collect(),
        _ => needed_labels(config, slot)?.into_iter().filter(|label| !labels.contains(label)).collect(),
    };
    if !missing.is_empty() {
        let what = match slot {
            ClassifierSlot::Taxonomy => format!(
                "its labels {missing:?} are not categories of [taxonomy] ({}); a head for `taxonomy.classifier` is \
                 trained on category labels",
                config.taxonomy.categories.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
            _ => format!(
                "the rule's labels {missing:?} are not among the classifier's ({}); train it on crops labelled with them",
                labels.join(", ")
            ),
        };
        return Err(CommandError::new("labels_mismatch", format!("{}: {what}; nothing changed", manifest.display())));
    }
    let summary = self_test(model, self_test_folder)
        .map_err(|why| CommandError::new("self_test_failed", format!("{why}; nothing changed")))?;
    Ok((stage, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config_store::ConfigStore;
    use crate::control::switch::{roll_back_unconfirmed_switch, PENDING_SWITCH_FILE};
    use crate::delivery::board::StatusBoard;
    use crate::judge::Judge;
    use tokio::sync::{mpsc, watch};

    fn models() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
    }

    /// The shipped classifier under another name, its 1000 outputs labelled with the four
    /// categories in turn: a real classifier whose labels are categories, like a site head's.
    fn category_classifier(dir: &Path) -> PathBuf {
        let shipped = std::fs::read_to_string(models().join("efficientnet_lite0.toml")).unwrap();
        let labels: Vec<&str> = (0..1000).map(|i| ["recyclable", "hazardous", "kitchen", "residual"][i % 4]).collect();
        std::fs::write(dir.join("categories.txt"), labels.join("\n") + "\n").unwrap();
        let manifest = shipped
            .replace("name = \"efficientnet_lite0\"", "name = \"site_test\"")
            .replace(
                "file = \"efficientnet_lite0.onnx\"",
                &format!("file = {:?}", models().join("efficientnet_lite0.onnx").display().to_string()),
            )
            .replace("labels = \"imagenet_labels.txt\"", "labels = \"categories.txt\"");
        let path = dir.join("site_test.toml");
        std::fs::write(&path, manifest).unwrap();
        path
    }

    /// A config file, the live settings over it and a running judge.
    async fn agent_parts(dir: &Path, extra: &str) -> (PathBuf, Arc<LiveSettings>, Arc<ModelRuns>) {
        let path = dir.join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "state_dir = \"state\"\n[model_update]\nprobation_secs = 1\n\
                 [[cameras]]\nid = \"yard\"\nsource = {{ kind = \"replay\", path = \"x\" }}\n{extra}"
            ),
        )
        .unwrap();
        let config = crate::config::Config::load(&path).unwrap();
        std::fs::create_dir_all(&config.state_dir).unwrap();
        let runs = Arc::new(ModelRuns::default());
        let mut judge = Judge::open(&config.judge_settings(), &[]).unwrap();
        judge.count_runs_in(runs.clone());
        let (judge_settings, judge_settings_rx) = watch::channel(Arc::new(config.judge_settings()));
        let (judge_control, judge_control_rx) = mpsc::channel(4);
        let (_inferred_tx, inferred_rx) = mpsc::channel(1);
        let (judged_tx, _judged_rx) = mpsc::channel(1);
        let heartbeat = Arc::new(crate::base::liveness::Liveness::default()).register("judge");
        tokio::spawn(async move {
            let _keep = (_inferred_tx, _judged_rx);
            crate::judge::run_judge(judge, inferred_rx, judged_tx, judge_settings_rx, judge_control_rx, heartbeat).await
        });
        let board = Arc::new(StatusBoard::new("box".into(), Vec::new()));
        let settings = Arc::new(LiveSettings::new(
            ConfigStore::new(Some(path.clone()), config),
            board,
            judge_settings,
            mpsc::channel(1).0,
            judge_control,
            Default::default(),
        ));
        (path, settings, runs)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_head_failing_its_probation_is_switched_back_and_the_config_restored() {
        let dir = tempfile::tempdir().unwrap();
        let head = category_classifier(dir.path());
        let bin = "[[scenes.yard.zones]]\nid = \"bin\"\nrole = \"bin\"\ncategory = \"kitchen\"\n\
                   polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]\n";
        let (path, settings, runs) = agent_parts(dir.path(), bin).await;
        let state_dir = dir.path().join("state");
        let heads = Arc::new(SiteHeads::new(settings.clone(), runs.clone(), state_dir.clone(), Default::default()));
        let (_trigger, shutdown) = crate::base::shutdown::channel();

        let deployment = heads.deploy(ClassifierSlot::Taxonomy, &head, shutdown.clone()).await.unwrap();
        assert_eq!((deployment.name.as_str(), deployment.stage), ("site_test", DeploymentStage::Probation));
        assert!(deployment.self_test["pictures"].as_u64().unwrap() > 0);
        assert_eq!(crate::config::Config::load(&path).unwrap().taxonomy.classifier, head);
        assert!(state_dir.join(PENDING_SWITCH_FILE).exists());
        let busy = heads.deploy(ClassifierSlot::Taxonomy, &head, shutdown.clone()).await.unwrap_err();
        assert_eq!(busy.code, "busy", "one switch at a time");

        // The judge's runs of the head fail (as a broken head's would): it is switched back.
        for _ in 0..3 {
            runs.record("site_test", false);
        }
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let last = heads.last().unwrap();
                if last.stage != DeploymentStage::Probation {
                    return last;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("the probation ends");
        assert_eq!(ended.stage, DeploymentStage::RolledBack, "{}", ended.message);
        assert!(ended.message.contains("failed 3 of 3 runs"), "{}", ended.message);
        let restored = crate::config::Config::load(&path).unwrap().taxonomy.classifier;
        assert_eq!(restored, deployment.previous_manifest, "the config names the previous classifier again");
        assert!(!state_dir.join(PENDING_SWITCH_FILE).exists());
        // The judge holds the previous classifier: switching in nothing hands it back.
        let (reply, answer) = oneshot::channel();
        let control = JudgeControl::SwapClassifier { slot: ClassifierSlot::Taxonomy, stage: None, reply };
        settings.judge_control().send(control).await.unwrap();
        let held = answer.await.unwrap().ok().flatten().expect("a classifier in the slot");
        assert_eq!(held.id().name, "efficientnet_lite0");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_head_whose_labels_do_not_fit_the_slot_is_refused_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let head = category_classifier(dir.path());
        let overflow = format!(
            "[rules.overflow]\nenabled = true\nstate_classifier = {{ manifest = {:?}, on_labels = [\"overflowing\"] }}\n",
            head.display().to_string()
        );
        let (path, settings, runs) = agent_parts(dir.path(), &overflow).await;
        let before = std::fs::read_to_string(&path).unwrap();
        let heads = Arc::new(SiteHeads::new(settings, runs, dir.path().join("state"), Default::default()));
        let (_trigger, shutdown) = crate::base::shutdown::channel();
        let refused = heads.deploy(ClassifierSlot::OverflowState, &head, shutdown.clone()).await.unwrap_err();
        assert_eq!(refused.code, "labels_mismatch", "{}", refused.message);
        assert!(refused.message.contains("\"overflowing\""), "{}", refused.message);
        let imagenet = models().join("efficientnet_lite0.toml");
        let refused = heads.deploy(ClassifierSlot::Taxonomy, &imagenet, shutdown.clone()).await.unwrap_err();
        assert_eq!(refused.code, "labels_mismatch", "ImageNet labels are not categories: {}", refused.message);
        let detector = models().join("nanodet.toml");
        let refused = heads.deploy(ClassifierSlot::Taxonomy, &detector, shutdown).await.unwrap_err();
        assert_eq!(refused.code, "load_failed", "{}", refused.message);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        assert!(!dir.path().join("state").join(PENDING_SWITCH_FILE).exists());
        assert!(heads.last().is_none());
    }

    #[test]
    fn a_head_switch_left_pending_is_rolled_back_in_its_slot_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let head = category_classifier(dir.path());
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "state_dir = \"state\"\n[taxonomy]\nclassifier = {:?}\n[rules.overflow]\nenabled = true\n\
                 state_classifier = {{ manifest = {:?}, on_labels = [\"kitchen\"] }}\n",
                head.display().to_string(),
                head.display().to_string()
            ),
        )
        .unwrap();
        let config = crate::config::Config::load(&path).unwrap();
        std::fs::create_dir_all(&config.state_dir).unwrap();
        let previous = models().join("efficientnet_lite0.toml");
        let pending = PendingSwitch {
            target: SwitchTarget::Classifier(ClassifierSlot::Taxonomy),
            name: "site_test".into(),
            previous_manifest: previous.clone(),
            new_manifest: head.clone(),
            switched_at: Utc::now(),
        };
        pending.save(&config.state_dir).unwrap();
        let note = roll_back_unconfirmed_switch(&path, &config).unwrap().expect("rolled back");
        assert!(note.contains("site_test"), "{note}");
        let after = crate::config::Config::load(&path).unwrap();
        assert_eq!(after.taxonomy.classifier, previous);
        assert_eq!(
            after.rules.overflow.state_classifier.as_ref().unwrap().manifest,
            head,
            "the other slot is untouched"
        );
        assert!(!config.state_dir.join(PENDING_SWITCH_FILE).exists());

        // The overflow slot's inline table keeps its labels when its manifest is switched.
        let store = ConfigStore::new(Some(path.clone()), after);
        store.set_classifier_manifest(ClassifierSlot::OverflowState, &previous).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("on_labels = [\"kitchen\"]"), "{text}");
        let state = crate::config::Config::load(&path).unwrap().rules.overflow.state_classifier.unwrap();
        assert_eq!(state.manifest, previous);
    }
}
