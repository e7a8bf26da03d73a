//! `[stats]`: the daily statistics the delivery stage counts and publishes; `[actions]`: where the
//! programs of on-site actions live.

use std::path::PathBuf;

use serde::Deserialize;

use crate::base::section::Invalid;

/// Daily statistics per station, published as the MQTT `stats` message.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsConfig {
    /// Statistics are published at most this often (and when the day ends).
    pub publish_interval_secs: f64,
    /// Where days begin, e.g. "+08:00"; default: the box's local time zone.
    pub utc_offset: Option<String>,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self { publish_interval_secs: 300.0, utc_offset: None }
    }
}

/// "+08:00" → the offset; the error says what was expected.
pub fn parse_utc_offset(text: &str) -> Result<chrono::FixedOffset, String> {
    let bad = || format!("is {text:?}; expected an offset like \"+08:00\" or \"-05:30\"");
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return Err(bad()),
    };
    let (hours, minutes) = rest.split_once(':').ok_or_else(bad)?;
    let hours: i32 = hours.parse().map_err(|_| bad())?;
    let minutes: i32 = minutes.parse().map_err(|_| bad())?;
    if hours > 14 || minutes > 59 {
        return Err(bad());
    }
    chrono::FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60)).ok_or_else(bad)
}

impl StatsConfig {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        let secs = self.publish_interval_secs;
        if !(secs.is_finite() && secs >= 0.0) {
            return Err(Invalid::new("stats.publish_interval_secs", format!("is {secs}; expected seconds, 0 or more")));
        }
        if let Some(offset) = &self.utc_offset {
            parse_utc_offset(offset).map_err(|problem| Invalid::new("stats.utc_offset", problem))?;
        }
        Ok(())
    }
}

/// `[actions]`: the folder whose programs the rules' `action.program` may name. Root-owned, not
/// writable by others: the agent refuses to run anything from it otherwise.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionsConfig {
    pub folder: PathBuf,
}

impl Default for ActionsConfig {
    fn default() -> Self {
        Self { folder: PathBuf::from(super::actions::DEFAULT_FOLDER) }
    }
}
