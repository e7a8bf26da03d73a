//! The one table of what may change at run time, who may change it, and what a value must look
//! like. The platform's `set` and the page's settings both pass through [`check`] before the config
//! store sees a change: a key outside the table is `not_settable`, a key whose row does not name the
//! actor is `local_only` (the config file, written by root, changes everything).

use serde::Deserialize;
use serde_json::Value;

use super::config_store::ChangeError;
use crate::config::Config;
use crate::infer::plates::config::{is_plate_text, MAX_REGISTERED};
use crate::judge::config::{ZoneConfig, ZoneRole};
use crate::judge::zones::Polygon;

/// Who asks for a change (the config file needs no table: root writes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// An admin logged in on the box's page.
    PageAdmin,
    /// The holder of the platform's signing key (a signed `set`).
    Platform,
}

impl Actor {
    fn name(self) -> &'static str {
        match self {
            Actor::PageAdmin => "a page admin",
            Actor::Platform => "the platform",
        }
    }
}

/// What a value must be. Every shape is bounded; `null` (back to the default) only where said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    Bool,
    /// A number from 0 to 1.
    Fraction,
    /// A number of seconds from 0 to a day.
    Seconds,
    /// A number from 0 to `max`.
    Number {
        max: f64,
    },
    /// A whole number from `min` to `max`.
    Count {
        min: u64,
        max: u64,
    },
    /// A list of at most [`MAX_NAMES`] names (labels, zone ids).
    Names,
    /// One of `up`, `down`, `left`, `right`, or null.
    Direction,
    /// The name of a configured model, or null.
    ModelName,
    /// A camera's zone list (objects with `id`, `role`, `category`, `polygon`); its privacy zones
    /// may only grow.
    Zones,
    /// A 3×3 matrix of finite numbers, or null.
    Homography,
    /// `{ "program": <a file of the actions folder>, "min_interval_secs": <seconds> }`, or null.
    Action,
    /// A list of at most [`MAX_REGISTERED`] licence-plate texts, each written as a plate.
    Plates,
    /// Set in the config file only: file paths, privacy, anything that runs or unblurs.
    ConfigFileOnly,
}

impl Shape {
    fn describe(self) -> String {
        match self {
            Shape::Bool => "true or false",
            Shape::Fraction => "a number from 0 to 1, or null",
            Shape::Seconds => "seconds from 0 to 86400, or null",
            Shape::Number { max } => return format!("a number from 0 to {max}, or null"),
            Shape::Count { min, max } => return format!("a whole number from {min} to {max}, or null"),
            Shape::Names => "a list of at most 256 names of 1 to 64 characters, or null",
            Shape::Direction => "\"up\", \"down\", \"left\", \"right\" or null",
            Shape::ModelName => "the name of a configured model, or null",
            Shape::Zones => "a list of zones {id, role, category, polygon}; privacy zones may only grow",
            Shape::Homography => "a 3×3 list of finite numbers, or null",
            Shape::Action => "{\"program\": a file in the actions folder, \"min_interval_secs\": seconds}, or null",
            Shape::Plates => return format!("a list of at most {MAX_REGISTERED} plate texts (京A12345), or null"),
            Shape::ConfigFileOnly => "set in the config file only",
        }
        .to_string()
    }
}

/// One row: a key pattern, who may set it besides the config file, and its shape.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// Dotted key; `<rule>` is one rule's name, `<camera>` and `<model>` an id (which may hold dots),
    /// `*` any rest of the key.
    pub pattern: &'static str,
    pub page_admin: bool,
    pub platform: bool,
    pub shape: Shape,
    /// Why the row is as it is, for docs/SECURITY.md.
    pub note: &'static str,
}

const fn row(pattern: &'static str, page_admin: bool, platform: bool, shape: Shape, note: &'static str) -> Row {
    Row { pattern, page_admin, platform, shape, note }
}

/// The rules' names, as `rules.<rule>` spells them.
pub const RULES: [&str; 6] = ["object", "wrong_bin", "litter", "overflow", "road_debris", "truck_exit"];

pub const MAX_NAMES: usize = 256;
const MAX_NAME_CHARS: usize = 64;
const MAX_ZONES: usize = 64;
const MAX_CORNERS: usize = 64;
const DAY_SECS: f64 = 86_400.0;

const SLOT_NOTE: &str =
    "a classifier slot is a manifest path: it changes through the signed `model` command or a head the box trained";

/// Every key that may change at run time. Rows are tried in order; the first match decides.
pub const TABLE: &[Row] = &[
    row("rules.<rule>.enabled", true, true, Shape::Bool, "switches a rule"),
    row(
        "rules.<rule>.min_score",
        true,
        true,
        Shape::Fraction,
        "a rule's score; people are blurred by their own threshold",
    ),
    row("rules.overflow.min_coverage", true, true, Shape::Fraction, ""),
    row("rules.wrong_bin.min_inside", true, true, Shape::Fraction, ""),
    row("rules.truck_exit.min_travel", true, true, Shape::Fraction, ""),
    row("rules.<rule>.min_duration_secs", true, true, Shape::Seconds, ""),
    row("rules.<rule>.after_secs", true, true, Shape::Seconds, ""),
    row("rules.<rule>.clear_secs", true, true, Shape::Seconds, ""),
    row("rules.<rule>.min_area_px", true, true, Shape::Number { max: 1e8 }, ""),
    row("rules.<rule>.labels", true, true, Shape::Names, "labels the models know"),
    row("rules.<rule>.item_labels", true, true, Shape::Names, "labels the models know"),
    row("rules.<rule>.zones", true, true, Shape::Names, "zone ids"),
    row("rules.litter.static_foreground", true, true, Shape::Bool, ""),
    row("rules.road_debris.model", true, true, Shape::ModelName, "one of the configured models, by name"),
    row("rules.truck_exit.leaving_direction", true, true, Shape::Direction, ""),
    row("rules.overflow.state_classifier.min_score", true, true, Shape::Fraction, ""),
    row("rules.overflow.state_classifier.on_labels", true, true, Shape::Names, ""),
    row("rules.truck_exit.cover_classifier.min_score", true, true, Shape::Fraction, ""),
    row("rules.truck_exit.cover_classifier.uncovered_labels", true, true, Shape::Names, ""),
    row("rules.truck_exit.cover_classifier.covered_labels", true, true, Shape::Names, ""),
    row(
        "rules.<rule>.action",
        true,
        false,
        Shape::Action,
        "runs a program: only one of the root-owned actions folder, named by an admin",
    ),
    row(
        "rules.<rule>.action.*",
        false,
        false,
        Shape::ConfigFileOnly,
        "an action is set whole, by an admin or the config file",
    ),
    row("rules.overflow.state_classifier", false, false, Shape::ConfigFileOnly, SLOT_NOTE),
    row("rules.overflow.state_classifier.manifest", false, false, Shape::ConfigFileOnly, SLOT_NOTE),
    row("rules.truck_exit.cover_classifier", false, false, Shape::ConfigFileOnly, SLOT_NOTE),
    row("rules.truck_exit.cover_classifier.manifest", false, false, Shape::ConfigFileOnly, SLOT_NOTE),
    row(
        "scenes.<camera>.zones",
        true,
        true,
        Shape::Zones,
        "privacy zones may be added or grown, never removed, shrunk, moved or renamed",
    ),
    row("scenes.<camera>.ground_homography", true, true, Shape::Homography, ""),
    row("scenes.<camera>.blur_people", false, false, Shape::ConfigFileOnly, "decides whether people are blurred"),
    row("tracking.match_iou", true, true, Shape::Fraction, ""),
    row("tracking.stationary_iou", true, true, Shape::Fraction, ""),
    row("tracking.max_lost_secs", true, true, Shape::Seconds, ""),
    row("tracking.stationary_memory_secs", true, true, Shape::Seconds, ""),
    row("tracking.update_interval_secs", true, true, Shape::Seconds, ""),
    row("tracking.score_window", true, true, Shape::Count { min: 1, max: 100 }, ""),
    row("cameras.<camera>.enabled", true, true, Shape::Bool, ""),
    row(
        "models.<model>.score_threshold",
        true,
        true,
        Shape::Fraction,
        "events only: people are blurred by `privacy.person_min_score`",
    ),
    row(
        "privacy.*",
        false,
        false,
        Shape::ConfigFileOnly,
        "decides what the pictures show of people and plates (`blur_plates`)",
    ),
    row("plates.registered", true, true, Shape::Plates, "the site's registered trucks"),
    row("plates.*", false, false, Shape::ConfigFileOnly, "decides whose plates are read"),
];

/// Checks one requested change against the table and the running config: the key is in the table,
/// the actor may set it, and the value has the row's shape. Nothing is quoted from the value.
pub fn check(
    actor: Actor,
    key: &str,
    value: &Value,
    current: &Config,
    model_names: &[String],
) -> Result<(), ChangeError> {
    let (row, target) = find(key).ok_or_else(|| ChangeError::NotSettable { key: printable_key(key) })?;
    let allowed = match actor {
        Actor::PageAdmin => row.page_admin,
        Actor::Platform => row.platform,
    };
    if !allowed {
        return Err(ChangeError::LocalOnly {
            key: printable_key(key),
            problem: format!("may not be changed by {}: {}", actor.name(), local_reason(row)),
        });
    }
    // A value of the wrong type is `invalid_value` (as the config file's parser says it), one of the
    // right type the shape refuses is `out_of_range`: the platform's tools tell them apart.
    let refuse = |misfit: Misfit| {
        let expected = row.shape.describe();
        match misfit {
            Misfit::WrongType(problem) => {
                ChangeError::InvalidValue(format!("`{}` {problem}; expected {expected}", printable_key(key)))
            }
            Misfit::OutOfBounds(problem) => {
                ChangeError::OutOfRange { key: printable_key(key), problem: format!("{problem}; expected {expected}") }
            }
        }
    };
    use Misfit::{OutOfBounds, WrongType};
    match row.shape {
        Shape::Bool => value.as_bool().map(|_| ()).ok_or_else(|| refuse(WrongType("is not true or false"))),
        Shape::Fraction => number_in(value, 0.0, 1.0).map_err(refuse),
        Shape::Seconds => number_in(value, 0.0, DAY_SECS).map_err(refuse),
        Shape::Number { max } => number_in(value, 0.0, max).map_err(refuse),
        Shape::Count { min, max } => match value {
            Value::Null => Ok(()),
            _ => match value.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(()),
                Some(_) => Err(refuse(OutOfBounds("is out of range"))),
                None if value.is_number() => Err(refuse(OutOfBounds("is out of range"))),
                None => Err(refuse(WrongType("is not a whole number"))),
            },
        },
        Shape::Names => names(value).map_err(refuse),
        Shape::Plates => plates(value).map_err(refuse),
        Shape::Direction => match value {
            Value::Null => Ok(()),
            Value::String(s) if ["up", "down", "left", "right"].contains(&s.as_str()) => Ok(()),
            _ => Err(refuse(WrongType("is not a direction"))),
        },
        Shape::ModelName => match value {
            Value::Null => Ok(()),
            Value::String(name) if model_names.iter().any(|m| m == name) => Ok(()),
            Value::String(_) => Err(refuse(OutOfBounds("names no configured model"))),
            _ => Err(refuse(WrongType("is not a model name"))),
        },
        Shape::Homography => homography(value).map_err(refuse),
        Shape::Zones => {
            let camera = target.unwrap_or_default();
            zones(value, camera, current)
                .map_err(|problem| ChangeError::OutOfRange { key: printable_key(key), problem })
        }
        Shape::Action => {
            action(value, current).map_err(|problem| ChangeError::OutOfRange { key: printable_key(key), problem })
        }
        Shape::ConfigFileOnly => Err(ChangeError::LocalOnly {
            key: printable_key(key),
            problem: format!("may not be changed by {}: {}", actor.name(), local_reason(row)),
        }),
    }
}

fn local_reason(row: &Row) -> &'static str {
    if row.note.is_empty() {
        "it is set in the config file only"
    } else {
        row.note
    }
}

/// The row a key falls under, with the id a `<camera>`/`<model>` placeholder matched.
pub fn find(key: &str) -> Option<(&'static Row, Option<&str>)> {
    if key.is_empty() || key.len() > 256 || key.split('.').any(str::is_empty) {
        return None;
    }
    TABLE.iter().find_map(|row| matches(row.pattern, key).map(|target| (row, target)))
}

/// Whether `key` fits `pattern`; Some(id) with the id a `<camera>` or `<model>` matched.
fn matches<'k>(pattern: &str, key: &'k str) -> Option<Option<&'k str>> {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let parts: Vec<&str> = key.split('.').collect();
    let wildcard = pattern.iter().position(|p| *p == "<camera>" || *p == "<model>");
    match wildcard {
        // `<camera>` takes every part between the fixed head and the fixed tail (ids may hold dots).
        Some(at) => {
            let tail = &pattern[at + 1..];
            if parts.len() < at + 1 + tail.len() {
                return None;
            }
            let fixed = |p: &[&str], k: &[&str]| p.iter().zip(k).all(|(p, k)| part_matches(p, k));
            let id_end = parts.len() - tail.len();
            (fixed(&pattern[..at], &parts[..at]) && fixed(tail, &parts[id_end..])).then(|| {
                let start: usize = parts[..at].iter().map(|p| p.len() + 1).sum();
                let end = key.len() - tail.iter().map(|p| p.len() + 1).sum::<usize>();
                Some(&key[start..end])
            })
        }
        None => {
            if pattern.last() == Some(&"*") {
                let head = &pattern[..pattern.len() - 1];
                (parts.len() > head.len() && head.iter().zip(&parts).all(|(p, k)| part_matches(p, k))).then_some(None)
            } else {
                (parts.len() == pattern.len() && pattern.iter().zip(&parts).all(|(p, k)| part_matches(p, k)))
                    .then_some(None)
            }
        }
    }
}

fn part_matches(pattern: &str, part: &str) -> bool {
    match pattern {
        "<rule>" => RULES.contains(&part),
        fixed => fixed == part,
    }
}

/// A key as errors may name it: the key itself when it is a plain dotted name, else a description
/// (a key is input too, and a hostile one may carry anything).
pub fn printable_key(key: &str) -> String {
    let plain = !key.is_empty()
        && key.len() <= 128
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if plain {
        key.to_string()
    } else {
        format!("(a key of {} bytes that is not a plain dotted name)", key.len())
    }
}

/// Why a value does not fit its row's shape.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Misfit {
    /// Not the type the shape takes (`invalid_value`).
    WrongType(&'static str),
    /// The right type, outside what the shape allows (`out_of_range`).
    OutOfBounds(&'static str),
}

fn number_in(value: &Value, min: f64, max: f64) -> Result<(), Misfit> {
    match value {
        Value::Null => Ok(()),
        Value::Number(n) => match n.as_f64() {
            Some(x) if x.is_finite() && (min..=max).contains(&x) => Ok(()),
            _ => Err(Misfit::OutOfBounds("is out of range")),
        },
        _ => Err(Misfit::WrongType("is not a number")),
    }
}

fn is_name(text: &str) -> bool {
    let chars = text.chars().count();
    (1..=MAX_NAME_CHARS).contains(&chars) && !text.chars().any(char::is_control)
}

fn names(value: &Value) -> Result<(), Misfit> {
    list_of(value, MAX_NAMES, is_name, "holds something that is not a name", "is not a list of names")
}

fn plates(value: &Value) -> Result<(), Misfit> {
    let not_a_plate = "holds something that is not written as a plate";
    list_of(value, MAX_REGISTERED, is_plate_text, not_a_plate, "is not a list of plate texts")
}

/// Null, or a list of at most `max` texts that each pass `accept`.
fn list_of(
    value: &Value,
    max: usize,
    accept: fn(&str) -> bool,
    not_one: &'static str,
    not_a_list: &'static str,
) -> Result<(), Misfit> {
    match value {
        Value::Null => Ok(()),
        Value::Array(items) if items.len() <= max => {
            items.iter().all(|item| item.as_str().is_some_and(accept)).then_some(()).ok_or(Misfit::OutOfBounds(not_one))
        }
        Value::Array(_) => Err(Misfit::OutOfBounds("is too long a list")),
        _ => Err(Misfit::WrongType(not_a_list)),
    }
}

fn homography(value: &Value) -> Result<(), Misfit> {
    match value {
        Value::Null => Ok(()),
        Value::Array(rows) if rows.len() == 3 => rows
            .iter()
            .all(|row| {
                row.as_array().is_some_and(|cells| {
                    cells.len() == 3 && cells.iter().all(|c| c.as_f64().is_some_and(f64::is_finite))
                })
            })
            .then_some(())
            .ok_or(Misfit::WrongType("is not 3 rows of 3 finite numbers")),
        _ => Err(Misfit::WrongType("is not a 3×3 matrix")),
    }
}

/// A zone as a remote or page change must write it: no field beyond these.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ZoneInput {
    id: String,
    role: ZoneRole,
    #[serde(default)]
    category: Option<String>,
    polygon: Vec<[f64; 2]>,
}

/// A camera's new zones: well-formed, bounded, and every privacy zone of the running config is still
/// there under its id, covered by its new polygon.
fn zones(value: &Value, camera: &str, current: &Config) -> Result<(), String> {
    let before: Vec<&ZoneConfig> = current
        .scenes
        .get(camera)
        .map(|scene| scene.zones.iter().filter(|z| z.role == ZoneRole::Privacy).collect())
        .unwrap_or_default();
    let expected = "expected a list of zones {id, role, category, polygon} (corners 0..1)";
    let new: Vec<ZoneInput> = match value {
        Value::Null if before.is_empty() => return Ok(()),
        Value::Null => return Err(format!("would remove the privacy zones of camera {}", printable_key(camera))),
        Value::Array(items) if items.len() <= MAX_ZONES => {
            let mut zones = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let zone: ZoneInput = serde_json::from_value(item.clone()).map_err(|_| {
                    format!("zone {} is not a zone with exactly id, role, category and polygon; {expected}", i + 1)
                })?;
                if !is_name(&zone.id) || zone.category.as_deref().is_some_and(|c| !is_name(c)) {
                    return Err(format!(
                        "zone {} has an id or category that is not a name of 1 to 64 characters",
                        i + 1
                    ));
                }
                let corners_ok = (3..=MAX_CORNERS).contains(&zone.polygon.len())
                    && zone.polygon.iter().flatten().all(|c| c.is_finite() && (0.0..=1.0).contains(c));
                if !corners_ok {
                    return Err(format!("zone {} needs 3 to {MAX_CORNERS} corners inside 0..1", i + 1));
                }
                zones.push(zone);
            }
            zones
        }
        Value::Array(_) => return Err(format!("has more than {MAX_ZONES} zones")),
        _ => return Err(format!("is not a list; {expected}")),
    };
    for old in before {
        let kept = new.iter().find(|z| z.role == ZoneRole::Privacy && z.id == old.id);
        let Some(kept) = kept else {
            return Err(format!(
                "would remove or rename privacy zone {} of camera {}; privacy zones may only be added or grown \
                 (the config file may change them)",
                printable_key(&old.id),
                printable_key(camera)
            ));
        };
        let covers = match (Polygon::new(&kept.polygon), Polygon::new(&old.polygon)) {
            (Ok(new), Ok(old)) => new.covers(&old),
            // A new polygon the judge would refuse covers nothing; an old one it refused never hid anything.
            (Err(_), _) => false,
            (Ok(_), Err(_)) => true,
        };
        if !covers {
            return Err(format!(
                "would shrink or move privacy zone {} of camera {}; its new polygon must cover the old one",
                printable_key(&old.id),
                printable_key(camera)
            ));
        }
    }
    Ok(())
}

/// An on-site action as a page admin may set it: the name of a program in the actions folder.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionInput {
    program: String,
    #[serde(default)]
    min_interval_secs: Option<f64>,
}

fn action(value: &Value, current: &Config) -> Result<(), String> {
    if value.is_null() {
        return Ok(());
    }
    let expected = "expected {\"program\": a file in the actions folder, \"min_interval_secs\": seconds}";
    let input: ActionInput =
        serde_json::from_value(value.clone()).map_err(|_| format!("is not an action; {expected}"))?;
    if input.min_interval_secs.is_some_and(|s| !(s.is_finite() && (0.0..=DAY_SECS).contains(&s))) {
        return Err("has `min_interval_secs` out of range (0 to 86400)".into());
    }
    crate::delivery::actions::program_path(&current.actions.folder, &input.program)
        .map(|_| ())
        .map_err(|e| format!("cannot be set: {e}"))
}

/// The keys someone other than the config file may set, for the `not_settable` error.
pub fn settable_patterns() -> String {
    let patterns: Vec<&str> = TABLE.iter().filter(|r| r.page_admin || r.platform).map(|r| r.pattern).collect();
    patterns.join(", ")
}

/// The table as Markdown, for docs/SECURITY.md (a test keeps the page and the code equal).
pub fn markdown_table() -> String {
    let mark = |yes: bool| if yes { "yes" } else { "—" };
    let mut out = String::from("| key | config file | page admin | platform | value |\n|---|---|---|---|---|\n");
    for row in TABLE {
        let value = match row.shape {
            Shape::ConfigFileOnly => row.note.to_string(),
            shape if row.note.is_empty() => shape.describe(),
            shape => format!("{} ({})", shape.describe(), row.note),
        };
        out.push_str(&format!(
            "| `{}` | yes | {} | {} | {} |\n",
            row.pattern,
            mark(row.page_admin),
            mark(row.platform),
            value.replace('|', "\\|")
        ));
    }
    out.push_str("| anything else | yes | — | — | refused `not_settable` |\n");
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::control::config_store::{Change, ConfigStore};
    use crate::control::settings::set_checked;

    /// A yard with a privacy zone, a bin, a classifier slot, an action and an actions folder with one
    /// protected program; the real models, so each change is start-checked as on a box.
    const FILE: &str = r#"device_id = "yard-1"
state_dir = "state"

[actions]
folder = "actions"

[[cameras]]
id = "gate"
source = { kind = "replay", path = "frames" }

[[models]]
manifest = "models/nanodet.toml"

[rules.object]
min_score = 0.3
action = { program = "prompt", min_interval_secs = 60 }

[rules.truck_exit.cover_classifier]
manifest = "models/efficientnet_lite0.toml"
uncovered_labels = ["garbage truck"]
covered_labels = ["tow truck"]

[[scenes.gate.zones]]
id = "window"
role = "privacy"
polygon = [[0.2, 0.2], [0.4, 0.2], [0.4, 0.5], [0.2, 0.5]]

[[scenes.gate.zones]]
id = "bin-1"
role = "bin"
category = "recyclable"
polygon = [[0.5, 0.5], [0.9, 0.5], [0.9, 0.9], [0.5, 0.9]]
"#;

    fn yard() -> (tempfile::TempDir, ConfigStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, FILE).unwrap();
        std::os::unix::fs::symlink(Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"), dir.path().join("models"))
            .unwrap();
        let actions = dir.path().join("actions");
        std::fs::create_dir(&actions).unwrap();
        std::fs::set_permissions(&actions, std::fs::Permissions::from_mode(0o755)).unwrap();
        for program in ["prompt", "siren"] {
            std::fs::write(actions.join(program), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(actions.join(program), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let config = Config::load(&path).unwrap();
        (dir, ConfigStore::new(Some(path), config))
    }

    fn set(store: &ConfigStore, actor: Actor, key: &str, value: Value) -> Result<(), ChangeError> {
        set_checked(store, actor, &[Change { key: key.into(), value }], &["nanodet".to_string()]).map(|_| ())
    }

    fn window(polygon: Value) -> Value {
        json!([
            { "id": "window", "role": "privacy", "polygon": polygon },
            { "id": "bin-1", "role": "bin", "category": "recyclable",
              "polygon": [[0.5, 0.5], [0.9, 0.5], [0.9, 0.9], [0.5, 0.9]] }
        ])
    }

    #[test]
    fn keys_outside_the_table_are_not_settable_and_named_only_when_plain() {
        let (_dir, store) = yard();
        for key in [
            "device_id",
            "mqtt.url",
            "mqtt.password",
            "cameras.gate.source",
            "models.nanodet.manifest",
            "state_dir",
            "evidence.key_dir",
            "rules.object",
            "privacy",
            "",
            "rules..min_score",
        ] {
            let err = set(&store, Actor::Platform, key, json!("x")).unwrap_err();
            assert_eq!(err.code(), "not_settable", "{key}: {err}");
        }
        let err = set(&store, Actor::PageAdmin, "web.\"users\"\n", json!(1)).unwrap_err();
        assert!(!err.to_string().contains("users"), "a hostile key is not quoted: {err}");
    }

    #[test]
    fn what_runs_a_program_or_unblurs_people_is_local_for_the_platform() {
        let (_dir, store) = yard();
        for (key, value) in [
            ("rules.object.action", json!({ "program": "siren" })),
            ("rules.litter.action.command", json!(["/bin/sh", "-c", "reboot"])),
            ("privacy.blur_people", json!(false)),
            ("privacy.person_min_score", json!(1.0)),
            ("privacy.person_labels", json!([])),
            ("scenes.gate.blur_people", json!(false)),
            ("rules.truck_exit.cover_classifier.manifest", json!("/etc/shadow")),
            ("rules.overflow.state_classifier", json!({ "manifest": "state/keys/device.key", "on_labels": ["a"] })),
        ] {
            let err = set(&store, Actor::Platform, key, value).unwrap_err();
            assert_eq!(err.code(), "local_only", "{key}: {err}");
            assert!(err.to_string().contains(key), "{err}");
        }
        // The page admin may not unblur or repoint a slot either; it may name an action program.
        for key in ["privacy.blur_people", "scenes.gate.blur_people", "rules.truck_exit.cover_classifier.manifest"] {
            assert_eq!(set(&store, Actor::PageAdmin, key, json!(false)).unwrap_err().code(), "local_only", "{key}");
        }
        set(&store, Actor::PageAdmin, "rules.object.action", json!({ "program": "siren", "min_interval_secs": 30 }))
            .unwrap();
        assert_eq!(store.current().rules.object.action.as_ref().unwrap().program, "siren");
    }

    #[test]
    fn an_admins_action_names_a_program_of_the_folder_never_a_command_line() {
        let (_dir, store) = yard();
        for value in [
            json!({ "program": "/bin/sh" }),
            json!({ "program": "../actions/prompt" }),
            json!({ "program": "missing" }),
            json!({ "command": ["/bin/sh", "-c", "id"] }),
            json!({ "program": "prompt", "args": ["x"] }),
            json!({ "program": "prompt", "min_interval_secs": -1 }),
            json!("prompt"),
        ] {
            let err = set(&store, Actor::PageAdmin, "rules.litter.action", value.clone()).unwrap_err();
            assert_eq!(err.code(), "out_of_range", "{value}: {err}");
        }
        assert!(store.current().rules.litter.action.is_none());
    }

    #[test]
    fn privacy_zones_may_grow_or_be_added_but_never_shrink_move_vanish_or_be_renamed() {
        let (_dir, store) = yard();
        let old = json!([[0.2, 0.2], [0.4, 0.2], [0.4, 0.5], [0.2, 0.5]]);
        let refused = [
            json!(null),
            json!([]),
            json!([{ "id": "bin-1", "role": "bin", "category": "recyclable",
                     "polygon": [[0.5, 0.5], [0.9, 0.5], [0.9, 0.9], [0.5, 0.9]] }]),
            window(json!([[0.0, 0.0], [0.02, 0.0], [0.02, 0.02], [0.0, 0.02]])),
            window(json!([[0.2, 0.2], [0.4, 0.2], [0.4, 0.45], [0.2, 0.45]])),
            window(json!([[0.25, 0.2], [0.45, 0.2], [0.45, 0.5], [0.25, 0.5]])),
            json!([{ "id": "window-2", "role": "privacy", "polygon": old }]),
            json!([{ "id": "window", "role": "ignore", "polygon": old }]),
            json!([{ "id": "window", "role": "privacy", "polygon": [[0.0, 0.0], [0.02, 0.0], [0.02, 0.02]], "x": null }]),
            json!([{ "id": "window", "role": "privacy", "polygon": old, "x": null }]),
            json!("window"),
        ];
        for actor in [Actor::Platform, Actor::PageAdmin] {
            for value in &refused {
                let err = set(&store, actor, "scenes.gate.zones", value.clone()).unwrap_err();
                assert_eq!(err.code(), "out_of_range", "{actor:?} {value}: {err}");
            }
        }
        assert_eq!(
            store.current().scenes["gate"].zones[0].polygon,
            vec![[0.2, 0.2], [0.4, 0.2], [0.4, 0.5], [0.2, 0.5]]
        );
        // Grown, then another added: fine for both.
        set(
            &store,
            Actor::Platform,
            "scenes.gate.zones",
            window(json!([[0.1, 0.1], [0.45, 0.1], [0.45, 0.55], [0.1, 0.55]])),
        )
        .unwrap();
        let mut with_door = window(json!([[0.1, 0.1], [0.45, 0.1], [0.45, 0.55], [0.1, 0.55]]));
        with_door.as_array_mut().unwrap().push(json!({ "id": "door", "role": "privacy",
            "polygon": [[0.6, 0.1], [0.7, 0.1], [0.7, 0.3], [0.6, 0.3]] }));
        set(&store, Actor::PageAdmin, "scenes.gate.zones", with_door).unwrap();
        assert_eq!(store.current().scenes["gate"].zones.len(), 3);
    }

    #[test]
    fn values_must_have_their_rows_shape_and_errors_quote_none_of_them() {
        let (_dir, store) = yard();
        // Wrong type: `invalid_value`; the right type out of the row's bounds: `out_of_range`.
        for (key, value, code) in [
            ("rules.object.min_score", json!(1.5), "out_of_range"),
            ("rules.object.min_score", json!("S3cretValue"), "invalid_value"),
            ("rules.object.enabled", json!("yes"), "invalid_value"),
            ("rules.object.labels", json!(["S3cretValue\n"]), "out_of_range"),
            ("rules.object.labels", json!(vec!["x"; 300]), "out_of_range"),
            ("tracking.score_window", json!(0), "out_of_range"),
            ("tracking.score_window", json!(2.5), "out_of_range"),
            ("tracking.score_window", json!("S3cretValue"), "invalid_value"),
            ("tracking.max_lost_secs", json!(1e9), "out_of_range"),
            ("rules.truck_exit.leaving_direction", json!("S3cretValue"), "invalid_value"),
            ("rules.road_debris.model", json!("S3cretValue"), "out_of_range"),
            ("scenes.gate.ground_homography", json!([[1, 0], [0, 1]]), "invalid_value"),
            ("models.nanodet.score_threshold", json!(-0.1), "out_of_range"),
        ] {
            let err = set(&store, Actor::Platform, key, value).unwrap_err();
            assert_eq!(err.code(), code, "{key}: {err}");
            assert!(!err.to_string().contains("S3cretValue"), "{err}");
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn the_markdown_table_in_docs_security_is_the_codes() {
        let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/SECURITY.md")).unwrap();
        assert!(page.contains(&markdown_table()), "docs/SECURITY.md must hold this table:\n{}", markdown_table());
    }

    /// A random value of any JSON shape, deep enough for zone lists and actions.
    fn any_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-2.0f64..2.0).prop_map(|x| json!(x)),
            any::<i64>().prop_map(Value::from),
            prop::sample::select(vec![
                "prompt", "siren", "/bin/sh", "../x", "window", "privacy", "up", "nanodet", "person"
            ])
            .prop_map(Value::from),
            "[ -~]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(vec![
                        "id",
                        "role",
                        "polygon",
                        "category",
                        "program",
                        "min_interval_secs",
                        "x"
                    ]),
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
            ]
        })
    }

    /// A rectangle zone; privacy ones often near the real window, so some shrink or move it.
    fn zone() -> impl Strategy<Value = Value> {
        (
            prop::sample::select(vec!["window", "bin-1", "door"]),
            prop::sample::select(vec!["privacy", "bin", "ignore", "road"]),
            (0.0f64..0.6, 0.0f64..0.6, 0.01f64..0.4, 0.01f64..0.4),
            any::<bool>(),
        )
            .prop_map(|(id, role, (x, y, w, h), extra)| {
                let mut zone = json!({ "id": id, "role": role,
                    "polygon": [[x, y], [x + w, y], [x + w, y + h], [x, y + h]] });
                if role == "bin" {
                    zone["category"] = json!("recyclable");
                }
                if extra {
                    zone["x"] = Value::Null;
                }
                zone
            })
    }

    /// A value shaped for `shape` half the time (so changes get past parsing and reach the store),
    /// anything at all otherwise.
    fn value_for(shape: Shape) -> BoxedStrategy<Value> {
        let shaped: BoxedStrategy<Value> = match shape {
            Shape::Bool => any::<bool>().prop_map(Value::from).boxed(),
            Shape::Fraction | Shape::Seconds | Shape::Number { .. } | Shape::Count { .. } => {
                prop_oneof![(-1.0f64..2.0).prop_map(|x| json!(x)), (0u64..200).prop_map(Value::from)].boxed()
            }
            Shape::Names => prop::collection::vec(prop::sample::select(vec!["person", "truck", "window", "cup"]), 0..3)
                .prop_map(|v| json!(v))
                .boxed(),
            Shape::Plates => {
                prop::collection::vec(prop::sample::select(vec!["浙EA3262", "京A12345", "A1", "/etc"]), 0..3)
                    .prop_map(|v| json!(v))
                    .boxed()
            }
            Shape::Direction => prop::sample::select(vec!["up", "down", "sideways"]).prop_map(Value::from).boxed(),
            Shape::ModelName => prop::sample::select(vec!["nanodet", "other"]).prop_map(Value::from).boxed(),
            Shape::Zones => prop::collection::vec(zone(), 0..4).prop_map(Value::Array).boxed(),
            Shape::Homography => {
                prop::collection::vec(prop::collection::vec(-2.0f64..2.0, 3), 3).prop_map(|m| json!(m)).boxed()
            }
            Shape::Action => {
                (prop::sample::select(vec!["prompt", "siren", "/bin/sh", "../actions/prompt", "rm"]), 0.0f64..100.0)
                    .prop_map(|(program, secs)| json!({ "program": program, "min_interval_secs": secs }))
                    .boxed()
            }
            Shape::ConfigFileOnly => {
                prop::sample::select(vec!["/etc/shadow", "state/keys/device.key", "models/nanodet.toml"])
                    .prop_map(Value::from)
                    .boxed()
            }
        };
        prop_oneof![shaped, any_value()].boxed()
    }

    /// A key of any row (placeholders filled in) with a value for it.
    fn any_change() -> impl Strategy<Value = (String, Value)> {
        (0..TABLE.len(), prop::sample::select(RULES.to_vec())).prop_flat_map(|(index, rule)| {
            let row = &TABLE[index];
            let key = row
                .pattern
                .replace("<rule>", rule)
                .replace("<camera>", "gate")
                .replace("<model>", "nanodet")
                .replace('*', "blur_people");
            (Just(key), value_for(row.shape))
        })
    }

    /// What no settable change may alter: privacy (zones covered, blur, people), every path, the
    /// model and classifier slots, and (for the platform) every action.
    fn protected(config: &Config) -> String {
        let privacy_zones: Vec<_> = config
            .scenes
            .values()
            .flat_map(|s| s.zones.iter().filter(|z| z.role == ZoneRole::Privacy))
            .map(|z| z.id.clone())
            .collect();
        format!(
            "{:?} {:?} {:?} {} {:?} {:?} {:?} {:?} {:?} {:?}",
            privacy_zones,
            config.privacy.blur_people,
            config.privacy.person_labels,
            config.privacy.person_min_score,
            config.scenes.values().map(|s| s.blur_people).collect::<Vec<_>>(),
            config.models.iter().map(|m| &m.manifest).collect::<Vec<_>>(),
            config.rules.truck_exit.cover_classifier.as_ref().map(|c| &c.manifest),
            config.rules.overflow.state_classifier.as_ref().map(|c| &c.manifest),
            (&config.state_dir, &config.actions.folder, &config.taxonomy.classifier, &config.site.calibration),
            config.cameras.iter().map(|c| format!("{:?}", c.source)).collect::<Vec<_>>(),
        )
    }

    fn actions(config: &Config) -> Vec<Option<String>> {
        let r = &config.rules;
        [
            &r.object.action,
            &r.wrong_bin.action,
            &r.litter.action,
            &r.overflow.action,
            &r.road_debris.action,
            &r.truck_exit.action,
            &config.tamper.action,
        ]
        .iter()
        .map(|a| a.as_ref().map(|a| a.program.clone()))
        .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// Random values for every key of the table, from both actors, in batches: privacy, paths,
        /// slots and (from the platform) actions never change; an admin's action is always a program
        /// of the folder; privacy zones only grow; and no error quotes what was sent.
        #[test]
        fn fuzz_no_settable_change_weakens_privacy_or_reaches_a_file(
            changes in prop::collection::vec((any_change(), any::<bool>()), 1..8)
        ) {
            let (_dir, store) = yard();
            let before = store.current();
            let window_before = before.scenes["gate"].zones.iter().find(|z| z.id == "window").unwrap().polygon.clone();
            for ((key, value), from_platform) in changes {
                let actor = if from_platform { Actor::Platform } else { Actor::PageAdmin };
                let sent = value.to_string();
                let actions_before = actions(&store.current());
                match set(&store, actor, &key, value) {
                    Ok(()) => {}
                    Err(e) => {
                        let text = e.to_string();
                        prop_assert!(sent.len() < 6 || !text.contains(&sent), "{text} quotes {sent}");
                    }
                }
                let now = store.current();
                prop_assert_eq!(protected(&now), protected(&before));
                if from_platform {
                    prop_assert_eq!(actions(&now), actions_before);
                }
                for program in actions(&now).into_iter().flatten() {
                    prop_assert!(program == "prompt" || program == "siren", "action {}", program);
                }
                let window = now.scenes["gate"].zones.iter().find(|z| z.id == "window" && z.role == ZoneRole::Privacy);
                prop_assert!(window.is_some(), "the privacy zone is gone");
                let (new, old) = (Polygon::new(&window.unwrap().polygon).unwrap(), Polygon::new(&window_before).unwrap());
                prop_assert!(new.covers(&old), "the privacy zone shrank or moved");
            }
        }
    }
}
