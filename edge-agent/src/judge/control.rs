//! The judge's control channel: switch one of its second-stage classifiers (the taxonomy's item
//! classifier, overflow's state classifier, truck_exit's cover classifier) between two frames, the
//! way the inference worker switches a model. A site head from `edge-agent learn` is deployed, and
//! rolled back, through it.

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::rules::SecondStage;

/// Where a second-stage classifier sits: each slot is one config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifierSlot {
    /// `taxonomy.classifier`: names what is thrown into a bin (`wrong_bin`).
    Taxonomy,
    /// `rules.overflow.state_classifier`: a bin overflowing or not.
    OverflowState,
    /// `rules.truck_exit.cover_classifier`: a truck's load covered or not.
    TruckCover,
}

impl ClassifierSlot {
    pub const ALL: [ClassifierSlot; 3] =
        [ClassifierSlot::Taxonomy, ClassifierSlot::OverflowState, ClassifierSlot::TruckCover];

    /// The config key of the slot's manifest.
    pub fn manifest_key(self) -> &'static str {
        match self {
            ClassifierSlot::Taxonomy => "taxonomy.classifier",
            ClassifierSlot::OverflowState => "rules.overflow.state_classifier.manifest",
            ClassifierSlot::TruckCover => "rules.truck_exit.cover_classifier.manifest",
        }
    }

    /// The name used in requests and on the page (`taxonomy`, `overflow_state`, `truck_cover`).
    pub fn name(self) -> &'static str {
        match self {
            ClassifierSlot::Taxonomy => "taxonomy",
            ClassifierSlot::OverflowState => "overflow_state",
            ClassifierSlot::TruckCover => "truck_cover",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|slot| slot.name() == name)
    }
}

/// Requests the judge handles between two frames.
pub enum JudgeControl {
    /// Put `stage` into `slot` (None empties it); the reply carries what was there, kept for a
    /// roll-back. A slot whose rule is off, or has no config table, refuses and hands `stage` back.
    SwapClassifier {
        slot: ClassifierSlot,
        stage: Option<Box<SecondStage>>,
        reply: oneshot::Sender<Result<Option<Box<SecondStage>>, SwapRefused>>,
    },
}

/// Why a classifier was not switched in, with the offered one handed back.
pub struct SwapRefused {
    pub why: String,
    pub offered: Option<Box<SecondStage>>,
}
