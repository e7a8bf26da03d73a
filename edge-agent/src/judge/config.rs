//! What the user writes about rules: `[rules.*]`.

use serde::Deserialize;

use crate::config::Invalid;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    #[serde(default)]
    pub object: ObjectRuleConfig,
}

/// The plain rule: any detection of these labels at or above `min_score` is an event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRuleConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Labels to report; people are left out on purpose (privacy by default).
    #[serde(default = "default_object_labels")]
    pub labels: Vec<String>,
    #[serde(default = "default_object_min_score")]
    pub min_score: f32,
}

impl Default for ObjectRuleConfig {
    fn default() -> Self {
        Self { enabled: true, labels: default_object_labels(), min_score: default_object_min_score() }
    }
}

fn default_true() -> bool {
    true
}

fn default_object_labels() -> Vec<String> {
    ["truck", "car", "bus", "motorcycle", "bicycle", "bottle", "cup"].map(String::from).to_vec()
}

fn default_object_min_score() -> f32 {
    0.3
}

impl RulesConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let min_score = self.object.min_score;
        if !(0.0..=1.0).contains(&min_score) {
            return Err(Invalid::new(
                "rules.object.min_score",
                format!("is {min_score}; expected a value from 0 to 1"),
            ));
        }
        Ok(())
    }
}
