//! The config file as a store of settings that may change at run time (the `set`, `reload` and
//! `model` commands, later the web page): each change is validated as a whole new config, then
//! written atomically (temp file + fsync + rename + fsync of the folder), keeping the user's
//! comments and layout. A refused change leaves the file and the running config untouched.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use toml_edit::{DocumentMut, Item, Table, Value};

use super::preflight::check_startable;
use crate::base::write_file::{sync_folder, temporary_path, write_synced};
use crate::config::{Config, ConfigError};
use crate::judge::control::ClassifierSlot;

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(
        "the agent runs on its embedded defaults (started without --config FILE), so there is no config file to change"
    )]
    NoConfigFile,
    #[error("`{key}` cannot be changed at run time; settable keys: {}", super::settable::settable_patterns())]
    NotSettable { key: String },
    /// In the table of settable keys, but not for whoever asked (see `control::settable`).
    #[error("`{key}` {problem}; only the config file (or an admin on the box's page, where the table says so) may change it")]
    LocalOnly { key: String, problem: String },
    #[error("`{key}`: {problem}")]
    UnknownTarget { key: String, problem: String },
    /// The new config is well-formed but a value is out of range (or otherwise refused).
    #[error("`{key}` {problem}")]
    OutOfRange { key: String, problem: String },
    /// The new config does not parse: wrong type, unknown key.
    #[error("{0}")]
    InvalidValue(String),
    #[error("cannot read config file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write config file {path}: {message}")]
    Write { path: PathBuf, message: String },
    /// The new config reads well but the box would not start with it (a model, a classifier).
    #[error("refused, the box would not start with it: {0}")]
    WouldNotStart(String),
}

impl ChangeError {
    /// A short machine-readable name for command acks.
    pub fn code(&self) -> &'static str {
        match self {
            ChangeError::NoConfigFile => "no_config_file",
            ChangeError::NotSettable { .. } => "not_settable",
            ChangeError::LocalOnly { .. } => "local_only",
            ChangeError::UnknownTarget { .. } => "unknown_target",
            ChangeError::OutOfRange { .. } => "out_of_range",
            ChangeError::InvalidValue(_) => "invalid_value",
            ChangeError::Read { .. } | ChangeError::Write { .. } => "config_file_error",
            ChangeError::WouldNotStart(_) => "would_not_start",
        }
    }
}

/// One requested change: a key such as `rules.object.min_score` and its new value (JSON null
/// removes the key, so its default applies).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub key: String,
    pub value: serde_json::Value,
}

/// A change that was validated and written.
#[derive(Debug, Clone)]
pub struct Applied {
    pub previous: Arc<Config>,
    pub config: Arc<Config>,
    /// Dotted keys whose value differs from before, e.g. `cameras[0].enabled`; keys of the site
    /// calibration file are named as in that file (`scenes.gate.zones`, `thresholds.nanodet.truck`).
    pub changed: Vec<String>,
    /// The files written: the config file, and the site calibration file when zones live there.
    pub written: Vec<PathBuf>,
}

/// Where the zones of one camera are kept, so they are saved where they take effect.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum ZonesHome {
    /// `[[scenes.<camera>.zones]]` in the config file.
    ConfigFile(PathBuf),
    /// The site calibration file (`site.calibration`) has zones for the camera, and they replace
    /// the config file's: changes go there.
    SiteFile(PathBuf),
    /// The embedded defaults (no `--config FILE`): nothing can be saved.
    Nowhere,
}

struct Current {
    config: Arc<Config>,
    /// The file text the config was read from: what edits start from and diffs compare to.
    text: String,
    /// The site calibration file's text (empty without one), for the same purpose.
    site_text: String,
}

/// The files one change may edit: the config file, and the site file the config names.
struct Documents {
    config: DocumentMut,
    site: Option<SiteDocument>,
}

struct SiteDocument {
    path: PathBuf,
    document: DocumentMut,
    touched: bool,
}

pub struct ConfigStore {
    path: Option<PathBuf>,
    current: Mutex<Current>,
}

fn site_text(config: &Config) -> String {
    config.site.calibration.as_deref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
}

impl ConfigStore {
    /// `path` is the file the config was loaded from; None for the embedded defaults.
    pub fn new(path: Option<PathBuf>, config: Config) -> Self {
        let text = path.as_deref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
        let site_text = site_text(&config);
        Self { path, current: Mutex::new(Current { config: Arc::new(config), text, site_text }) }
    }

    fn lock(&self) -> MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn current(&self) -> Arc<Config> {
        self.lock().config.clone()
    }

    /// Where `scenes.<camera>.zones` is saved: the site file when it holds zones for the camera
    /// (they replace the config's at load), else the config file.
    pub fn zones_home(&self, camera: &str) -> ZonesHome {
        let Some(path) = &self.path else { return ZonesHome::Nowhere };
        let config = self.current();
        if let Some(site) = &config.site.calibration {
            let text = std::fs::read_to_string(site).unwrap_or_default();
            let document: DocumentMut = text.parse().unwrap_or_default();
            if site_has_zones(&document, camera) {
                return ZonesHome::SiteFile(site.clone());
            }
        }
        ZonesHome::ConfigFile(path.clone())
    }

    /// Applies `changes` (checked against [`super::settable`] by the caller) all or nothing. `model_names` are the configured
    /// models' names in config order, so `models.<name>` finds its `[[models]]` entry. Zones of a
    /// camera whose zones the site calibration file holds are written there (see [`ZonesHome`]).
    pub fn set(&self, changes: &[Change], model_names: &[String]) -> Result<Applied, ChangeError> {
        self.edit(|documents| {
            for change in changes {
                apply_change(documents, change, model_names)?;
            }
            Ok(())
        })
    }

    /// Points `[[models]][index].manifest` at another manifest (the `model` command's switch and
    /// roll-back).
    pub fn set_model_manifest(&self, index: usize, manifest: &Path) -> Result<Applied, ChangeError> {
        self.edit(|documents| {
            let key = format!("models[{index}].manifest");
            let entry = array_entry(&mut documents.config, "models", &key, |_, i| i == index)?;
            entry.insert("manifest", Item::Value(Value::from(manifest.display().to_string())));
            Ok(())
        })
    }

    /// Points a second-stage classifier slot (`taxonomy.classifier`, `rules.overflow.
    /// state_classifier.manifest`, `rules.truck_exit.cover_classifier.manifest`) at another
    /// manifest: a site head deployed, or rolled back. The rule's other settings stay.
    pub fn set_classifier_manifest(&self, slot: ClassifierSlot, manifest: &Path) -> Result<Applied, ChangeError> {
        self.edit(|documents| {
            let key = slot.manifest_key();
            let parts: Vec<&str> = key.split('.').collect();
            let Some((last, tables)) = parts.split_last() else { return Ok(()) };
            let mut item = documents.config.as_item_mut();
            for part in tables {
                // A table the file lacks is created (`[taxonomy]`); overflow and truck_exit keep
                // their tables, inline or not.
                if item.get(part).is_none() {
                    if let Some(table) = item.as_table_like_mut() {
                        table.insert(part, Item::Table(Table::new()));
                    }
                }
                item = item.get_mut(part).ok_or_else(|| ChangeError::UnknownTarget {
                    key: key.to_string(),
                    problem: format!("`{part}` is not a table in the config file"),
                })?;
            }
            let table = item.as_table_like_mut().ok_or_else(|| ChangeError::UnknownTarget {
                key: key.to_string(),
                problem: "is not inside a table in the config file".to_string(),
            })?;
            table.insert(last, Item::Value(Value::from(manifest.display().to_string())));
            Ok(())
        })
    }

    /// Re-reads the file (the `reload` command); a file that does not validate changes nothing.
    pub fn reload(&self) -> Result<Applied, ChangeError> {
        let path = self.path.clone().ok_or(ChangeError::NoConfigFile)?;
        let mut current = self.lock();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ChangeError::Read { path: path.clone(), message: e.to_string() })?;
        let config = Config::load(&path).map_err(|e| from_config_error(e, &[(&path, &path)]))?;
        check_startable(&config).map_err(ChangeError::WouldNotStart)?;
        let site_text = site_text(&config);
        let mut changed = changed_keys(&current.text, &text);
        changed.extend(changed_keys(&current.site_text, &site_text));
        changed.sort();
        changed.dedup();
        let previous = std::mem::replace(&mut current.config, Arc::new(config));
        current.text = text;
        current.site_text = site_text;
        Ok(Applied { previous, config: current.config.clone(), changed, written: Vec::new() })
    }

    /// Edits the file texts, validates the result as a config, and only then replaces the files.
    fn edit(&self, change: impl FnOnce(&mut Documents) -> Result<(), ChangeError>) -> Result<Applied, ChangeError> {
        let path = self.path.clone().ok_or(ChangeError::NoConfigFile)?;
        let mut current = self.lock();
        // Start from the files as they are now, so a hand edit made since start is not overwritten.
        let on_disk = std::fs::read_to_string(&path)
            .map_err(|e| ChangeError::Read { path: path.clone(), message: e.to_string() })?;
        let config: DocumentMut = on_disk
            .parse()
            .map_err(|e| ChangeError::Read { path: path.clone(), message: format!("is not valid TOML: {e}") })?;
        let site = site_document(&config, &path)?;
        let mut documents = Documents { config, site };
        change(&mut documents)?;
        let text = documents.config.to_string();
        let temp = temporary_path(&path);
        write_synced(&temp, text.as_bytes()).map_err(|e| ChangeError::Write {
            path: path.clone(),
            message: format!("cannot write {}: {e}", temp.display()),
        })?;
        let site = documents.site.filter(|site| site.touched).map(|site| {
            let text = site.document.to_string();
            (temporary_path(&site.path), site.path, text)
        });
        let remove_temps = |site: &Option<(PathBuf, PathBuf, String)>| {
            let _ = std::fs::remove_file(&temp);
            if let Some((site_temp, _, _)) = site {
                let _ = std::fs::remove_file(site_temp);
            }
        };
        if let Some((site_temp, site_path, site_text)) = &site {
            if let Err(e) = write_synced(site_temp, site_text.as_bytes()) {
                remove_temps(&site);
                let message = format!("cannot write {}: {e}", site_temp.display());
                return Err(ChangeError::Write { path: site_path.clone(), message });
            }
        }
        // Loading the temp files (same folders) resolves relative paths exactly as the real files.
        let mut renamed = vec![(temp.as_path(), path.as_path())];
        if let Some((site_temp, site_path, _)) = &site {
            renamed.push((site_temp.as_path(), site_path.as_path()));
        }
        let mut config = match Config::load_with_site(&temp, site.as_ref().map(|(t, _, _)| t.as_path())) {
            Ok(config) => config,
            Err(e) => {
                remove_temps(&site);
                return Err(from_config_error(e, &renamed));
            }
        };
        if let Err(problem) = check_startable(&config) {
            remove_temps(&site);
            return Err(ChangeError::WouldNotStart(problem));
        }
        config.source = Some(path.clone());
        let mut written = Vec::new();
        let mut site_now = current.site_text.clone();
        // The site file first: a crash between the two renames leaves zones where they take effect.
        if let Some((site_temp, site_path, site_text)) = &site {
            config.site.calibration = Some(site_path.clone());
            if let Err(e) = std::fs::rename(site_temp, site_path) {
                remove_temps(&site);
                return Err(ChangeError::Write { path: site_path.clone(), message: format!("rename failed: {e}") });
            }
            sync_folder_or_warn(site_path);
            written.push(site_path.clone());
            site_now = site_text.clone();
        }
        if text == on_disk {
            let _ = std::fs::remove_file(&temp);
        } else {
            if let Err(e) = std::fs::rename(&temp, &path) {
                let _ = std::fs::remove_file(&temp);
                return Err(ChangeError::Write { path, message: format!("rename failed: {e}") });
            }
            sync_folder_or_warn(&path);
            written.insert(0, path.clone());
        }
        let mut changed = changed_keys(&current.text, &text);
        changed.extend(changed_keys(&current.site_text, &site_now));
        changed.sort();
        changed.dedup();
        let previous = std::mem::replace(&mut current.config, Arc::new(config));
        current.text = text;
        current.site_text = site_now;
        Ok(Applied { previous, config: current.config.clone(), changed, written })
    }
}

/// The site calibration file the config document names (relative to the config file), parsed
/// for editing; None when there is none or it does not exist yet.
fn site_document(config: &DocumentMut, config_path: &Path) -> Result<Option<SiteDocument>, ChangeError> {
    let Some(name) = config.get("site").and_then(|site| site.get("calibration")).and_then(|c| c.as_str()) else {
        return Ok(None);
    };
    let mut path = PathBuf::from(name);
    crate::base::section::absolutise(&mut path, config_path.parent().unwrap_or(Path::new("")));
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ChangeError::Read { path, message: e.to_string() }),
    };
    let document = text
        .parse()
        .map_err(|e| ChangeError::Read { path: path.clone(), message: format!("is not valid TOML: {e}") })?;
    Ok(Some(SiteDocument { path, document, touched: false }))
}

/// Whether a site file has a non-empty `scenes.<camera>.zones`.
fn site_has_zones(site: &DocumentMut, camera: &str) -> bool {
    let zones = site.get("scenes").and_then(|s| s.get(camera)).and_then(|s| s.get("zones"));
    match zones {
        Some(Item::ArrayOfTables(tables)) => !tables.is_empty(),
        Some(Item::Value(Value::Array(values))) => !values.is_empty(),
        _ => false,
    }
}

/// A rename is done even if the folder cannot be synced; a power cut may then undo it.
fn sync_folder_or_warn(path: &Path) {
    if let Err(e) = sync_folder(path) {
        tracing::warn!(path = %path.display(), "cannot sync the folder after a rename: {e}");
    }
}

/// The loader's complaint about temp files, told about the real files (`renamed`: temp → real).
fn from_config_error(error: ConfigError, renamed: &[(&Path, &Path)]) -> ChangeError {
    let fix = |text: String| {
        renamed
            .iter()
            .fold(text, |text, (temp, real)| text.replace(&temp.display().to_string(), &real.display().to_string()))
    };
    match error {
        ConfigError::Invalid { key, problem, .. } => ChangeError::OutOfRange { key, problem },
        ConfigError::Site(crate::config::site::SiteError::Invalid { path, key, problem }) => {
            ChangeError::OutOfRange { key, problem: fix(format!("{problem} (in site file {})", path.display())) }
        }
        ConfigError::Read { path, source } => ChangeError::Read { path, message: source.to_string() },
        other => ChangeError::InvalidValue(fix(other.to_string())),
    }
}

fn apply_change(documents: &mut Documents, change: &Change, model_names: &[String]) -> Result<(), ChangeError> {
    let key = change.key.as_str();
    let (first, rest) = key.split_once('.').unwrap_or((key, ""));
    if first == "scenes" {
        // `scenes.<camera id>.<field>`, the id taken whole even when it holds dots.
        let (camera, field) = rest.rsplit_once('.').ok_or_else(|| ChangeError::NotSettable { key: key.into() })?;
        if field == "zones" {
            return set_zones(documents, camera, &change.value, key);
        }
        let scene = scene_table(&mut documents.config, camera, key)?;
        return set_value(scene, field, to_toml(&change.value, key)?);
    }
    let document = &mut documents.config;
    let value = to_toml(&change.value, key)?;
    let (table, field): (&mut dyn toml_edit::TableLike, &str) = match first {
        "cameras" | "models" => {
            let (target, field) = rest.rsplit_once('.').ok_or_else(|| ChangeError::NotSettable { key: key.into() })?;
            let entry = if first == "cameras" {
                array_entry(document, "cameras", key, |entry, _| {
                    entry.get("id").and_then(|id| id.as_str()) == Some(target)
                })?
            } else {
                let index =
                    model_names.iter().position(|name| name == target).ok_or_else(|| ChangeError::UnknownTarget {
                        key: key.into(),
                        problem: format!("names no configured model; configured: {}", model_names.join(", ")),
                    })?;
                array_entry(document, "models", key, |_, i| i == index)?
            };
            (entry, field)
        }
        _ => {
            let mut path: Vec<&str> = key.split('.').collect();
            let field = path.pop().unwrap_or(key);
            let mut table: &mut dyn toml_edit::TableLike = document.as_table_mut();
            for part in path {
                if table.get(part).is_none() {
                    let mut implicit = Table::new();
                    implicit.set_implicit(true);
                    table.insert(part, Item::Table(implicit));
                }
                table = table.get_mut(part).and_then(|item| item.as_table_like_mut()).ok_or_else(|| {
                    ChangeError::UnknownTarget { key: key.into(), problem: format!("`{part}` is not a table") }
                })?;
            }
            (table, field)
        }
    };
    set_value(table, field, value)
}

fn set_value(table: &mut dyn toml_edit::TableLike, field: &str, value: Option<Value>) -> Result<(), ChangeError> {
    match value {
        Some(value) => {
            table.insert(field, Item::Value(value));
        }
        None => {
            table.remove(field);
        }
    }
    Ok(())
}

/// `[scenes.<camera>]` of a document, created (without a header of its own) when missing.
fn scene_table<'d>(
    document: &'d mut DocumentMut,
    camera: &str,
    key: &str,
) -> Result<&'d mut dyn toml_edit::TableLike, ChangeError> {
    let scenes = document.entry("scenes").or_insert_with(|| {
        let mut implicit = Table::new();
        implicit.set_implicit(true);
        Item::Table(implicit)
    });
    let scenes = scenes
        .as_table_like_mut()
        .ok_or_else(|| ChangeError::UnknownTarget { key: key.into(), problem: "`scenes` is not a table".into() })?;
    if scenes.get(camera).is_none() {
        let mut implicit = Table::new();
        implicit.set_implicit(true);
        scenes.insert(camera, Item::Table(implicit));
    }
    scenes.get_mut(camera).and_then(|item| item.as_table_like_mut()).ok_or_else(|| ChangeError::UnknownTarget {
        key: key.into(),
        problem: format!("`scenes.{camera}` is not a table"),
    })
}

/// Writes a camera's zones where they take effect: into the site file when it holds zones for the
/// camera, else into the config file. Zones are written as `[[scenes.<camera>.zones]]` tables, as
/// people write them. Clearing the site file's zones also clears the config file's, so that "no
/// zones" is what the camera gets (the config's would otherwise come back).
fn set_zones(documents: &mut Documents, camera: &str, value: &serde_json::Value, key: &str) -> Result<(), ChangeError> {
    let zones = zone_tables(value, key)?;
    let in_site = documents.site.as_ref().is_some_and(|site| site_has_zones(&site.document, camera));
    let clearing = matches!(&zones, Some(Item::ArrayOfTables(tables)) if tables.is_empty()) || zones.is_none();
    if in_site {
        if let Some(site) = documents.site.as_mut() {
            site.touched = true;
            let scene = scene_table(&mut site.document, camera, key)?;
            put_zones(scene, zones.clone());
        }
        if !clearing {
            return Ok(());
        }
    }
    let scene = scene_table(&mut documents.config, camera, key)?;
    put_zones(scene, zones);
    Ok(())
}

fn put_zones(scene: &mut dyn toml_edit::TableLike, zones: Option<Item>) {
    scene.remove("zones");
    match zones {
        Some(Item::ArrayOfTables(tables)) if tables.is_empty() => {}
        Some(item) => {
            scene.insert("zones", item);
        }
        None => {}
    }
}

/// A JSON list of zone objects as TOML tables; anything else is passed on as a plain value, so
/// the loader names what is wrong with it. None for null.
fn zone_tables(value: &serde_json::Value, key: &str) -> Result<Option<Item>, ChangeError> {
    let serde_json::Value::Array(items) = value else {
        return Ok(to_toml(value, key)?.map(Item::Value));
    };
    if !items.iter().all(|item| item.is_object()) {
        return Ok(to_toml(value, key)?.map(Item::Value));
    }
    let mut tables = toml_edit::ArrayOfTables::new();
    for item in items {
        let mut table = Table::new();
        if let serde_json::Value::Object(fields) = item {
            // People read `id`, `role`, `category` first, then the corners.
            let mut names: Vec<&String> = fields.keys().collect();
            let rank = |name: &str| ["id", "role", "category", "polygon"].iter().position(|n| *n == name).unwrap_or(4);
            names.sort_by_key(|name| rank(name));
            for name in names {
                if let Some(v) = to_toml(&fields[name], key)? {
                    table.insert(name, Item::Value(v));
                }
            }
        }
        tables.push(table);
    }
    Ok(Some(Item::ArrayOfTables(tables)))
}

/// The entry of an array of tables (`[[cameras]]`, or an inline array) that `pick` chooses.
fn array_entry<'d>(
    document: &'d mut DocumentMut,
    array: &str,
    key: &str,
    pick: impl Fn(&dyn toml_edit::TableLike, usize) -> bool,
) -> Result<&'d mut dyn toml_edit::TableLike, ChangeError> {
    let missing = || ChangeError::UnknownTarget {
        key: key.into(),
        problem: format!(
            "no such entry in `{array}` of the config file (entries that come from the defaults cannot be changed; \
             write them into the file first)"
        ),
    };
    match document.get_mut(array) {
        Some(Item::ArrayOfTables(tables)) => tables
            .iter_mut()
            .enumerate()
            .find(|(i, t)| pick(*t as &dyn toml_edit::TableLike, *i))
            .map(|(_, t)| t as &mut dyn toml_edit::TableLike)
            .ok_or_else(missing),
        Some(Item::Value(Value::Array(values))) => values
            .iter_mut()
            .enumerate()
            .filter_map(|(i, v)| v.as_inline_table_mut().map(|t| (i, t)))
            .find(|(i, t)| pick(*t as &dyn toml_edit::TableLike, *i))
            .map(|(_, t)| t as &mut dyn toml_edit::TableLike)
            .ok_or_else(missing),
        _ => Err(missing()),
    }
}

/// JSON from a command to a TOML value; None for null (remove the key).
fn to_toml(value: &serde_json::Value, key: &str) -> Result<Option<Value>, ChangeError> {
    use serde_json::Value as Json;
    Ok(Some(match value {
        Json::Null => return Ok(None),
        Json::Bool(b) => Value::from(*b),
        Json::String(s) => Value::from(s.as_str()),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) if f.is_finite() => Value::from(f),
            _ => return Err(ChangeError::InvalidValue(format!("`{key}`: {n} is not a number TOML can hold"))),
        },
        Json::Array(items) => {
            let mut array = toml_edit::Array::new();
            for item in items {
                match to_toml(item, key)? {
                    Some(v) => array.push(v),
                    None => return Err(ChangeError::InvalidValue(format!("`{key}`: null inside a list"))),
                }
            }
            Value::Array(array)
        }
        Json::Object(fields) => {
            let mut table = toml_edit::InlineTable::new();
            for (name, item) in fields {
                if let Some(v) = to_toml(item, key)? {
                    table.insert(name, v);
                }
            }
            Value::InlineTable(table)
        }
    }))
}

/// Dotted keys whose values differ between two config texts (`cameras[0].enabled`); a text that
/// does not parse counts as empty.
pub fn changed_keys(before: &str, after: &str) -> Vec<String> {
    let parse = |text: &str| text.parse::<toml::Table>().unwrap_or_default();
    let mut changed = BTreeSet::new();
    diff(&toml::Value::Table(parse(before)), &toml::Value::Table(parse(after)), String::new(), &mut changed);
    changed.into_iter().collect()
}

fn diff(before: &toml::Value, after: &toml::Value, key: String, changed: &mut BTreeSet<String>) {
    use toml::Value as T;
    let join = |name: &str| if key.is_empty() { name.to_string() } else { format!("{key}.{name}") };
    match (before, after) {
        (T::Table(a), T::Table(b)) => {
            for name in a.keys().chain(b.keys()) {
                match (a.get(name), b.get(name)) {
                    (Some(x), Some(y)) => diff(x, y, join(name), changed),
                    _ => {
                        changed.insert(join(name));
                    }
                }
            }
        }
        // Arrays of tables are compared entry by entry, so `cameras[1].enabled` is named exactly.
        (T::Array(a), T::Array(b)) if a.len() == b.len() && a.iter().chain(b).all(|v| v.is_table()) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(x, y, format!("{key}[{i}]"), changed);
            }
        }
        (a, b) if a != b => {
            changed.insert(key);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FILE: &str = r#"# The yard box.
device_id = "yard-1"

[rules.object]
min_score = 0.3 # tuned on site

[[cameras]]
id = "gate"
source = { kind = "replay", path = "frames" }

[[cameras]]
id = "ramp"
source = { kind = "replay", path = "frames" }

[[models]]
manifest = "models/nanodet.toml"
"#;

    fn store() -> (tempfile::TempDir, ConfigStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, FILE).unwrap();
        link_models(dir.path());
        let config = Config::load(&path).unwrap();
        (dir, ConfigStore::new(Some(path), config))
    }

    /// The real models where the test files say (`models/`): every change is checked as a start
    /// would check it, models included.
    fn link_models(dir: &Path) {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        std::os::unix::fs::symlink(models, dir.join("models")).unwrap();
    }

    fn change(key: &str, value: serde_json::Value) -> Change {
        Change { key: key.into(), value }
    }

    #[test]
    fn a_valid_change_is_written_keeping_comments_and_applied() {
        let (dir, store) = store();
        let applied = store
            .set(
                &[change("rules.object.min_score", json!(0.55)), change("cameras.ramp.enabled", json!(false))],
                &["nanodet".into()],
            )
            .unwrap();
        assert_eq!(applied.config.rules.object.min_score, 0.55);
        assert!(!applied.config.cameras[1].enabled && applied.config.cameras[0].enabled);
        assert_eq!(applied.changed, vec!["cameras[1].enabled", "rules.object.min_score"]);
        let text = std::fs::read_to_string(dir.path().join("agent.toml")).unwrap();
        assert!(text.contains("# The yard box.") && text.contains("min_score = 0.55"), "{text}");
        assert_eq!(store.current().rules.object.min_score, 0.55);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left behind: {leftovers:?}");
    }

    #[test]
    fn zones_drawn_for_a_camera_are_written_as_its_scene_and_validated() {
        let (dir, store) = store();
        let zones = json!([{ "id": "bin-1", "role": "bin", "category": "recyclable",
                             "polygon": [[0.1, 0.1], [0.4, 0.1], [0.4, 0.5], [0.1, 0.5]] }]);
        let applied = store.set(&[change("scenes.gate.zones", zones)], &[]).unwrap();
        let scene = &applied.config.scenes["gate"];
        assert_eq!(scene.zones.len(), 1);
        assert_eq!(scene.zones[0].id, "bin-1");
        assert_eq!(scene.zones[0].polygon[2], [0.4, 0.5]);
        let text = std::fs::read_to_string(dir.path().join("agent.toml")).unwrap();
        assert!(text.contains("# tuned on site"), "comments are kept:\n{text}");
        assert!(Config::load(&dir.path().join("agent.toml")).unwrap().scenes.contains_key("gate"));
        // A polygon with two corners is not a zone: refused, and the file stays as it was.
        let bad = json!([{ "id": "line", "role": "road", "polygon": [[0.1, 0.1], [0.2, 0.2]] }]);
        let err = store.set(&[change("scenes.gate.zones", bad)], &[]).unwrap_err();
        assert!(err.to_string().contains("scenes"), "{err}");
        assert_eq!(store.current().scenes["gate"].zones[0].id, "bin-1");
        assert!(store.set(&[change("scenes.gate.colour", json!("red"))], &[]).is_err(), "not a settable key");
    }

    #[test]
    fn an_out_of_range_value_changes_nothing() {
        let (dir, store) = store();
        let err = store
            .set(&[change("cameras.gate.enabled", json!(false)), change("rules.object.min_score", json!(1.5))], &[])
            .unwrap_err();
        assert_eq!(err.code(), "out_of_range");
        assert!(err.to_string().contains("rules.object.min_score"), "{err}");
        assert_eq!(std::fs::read_to_string(dir.path().join("agent.toml")).unwrap(), FILE);
        assert!(store.current().cameras[0].enabled);
    }

    #[test]
    fn a_wrong_type_or_unknown_field_is_refused_naming_it() {
        let (_dir, store) = store();
        let err = store.set(&[change("rules.object.min_score", json!("high"))], &[]).unwrap_err();
        assert_eq!(err.code(), "invalid_value");
        assert!(err.to_string().contains("min_score"), "{err}");
        let err = store.set(&[change("rules.object.colour", json!(1))], &[]).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        assert!(!err.to_string().contains(".tmp-"), "names the real file: {err}");
    }

    #[test]
    fn unknown_targets_are_refused_naming_them() {
        let (_dir, store) = store();
        let err = store.set(&[change("cameras.dock.enabled", json!(false))], &[]).unwrap_err();
        assert_eq!(err.code(), "unknown_target");
        let err = store.set(&[change("models.yolo.score_threshold", json!(0.5))], &["nanodet".into()]).unwrap_err();
        assert!(
            err.to_string().contains("models.yolo.score_threshold") && err.to_string().contains("nanodet"),
            "{err}"
        );
    }

    #[test]
    fn model_thresholds_are_found_by_model_name_and_null_resets_them() {
        let (_dir, store) = store();
        let applied = store.set(&[change("models.nanodet.score_threshold", json!(0.45))], &["nanodet".into()]).unwrap();
        assert_eq!(applied.config.models[0].score_threshold, Some(0.45));
        let applied = store.set(&[change("models.nanodet.score_threshold", json!(null))], &["nanodet".into()]).unwrap();
        assert_eq!(applied.config.models[0].score_threshold, None);
    }

    #[test]
    fn reload_reads_hand_edits_and_names_the_changed_keys() {
        let (dir, store) = store();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, FILE.replace("min_score = 0.3", "min_score = 0.7")).unwrap();
        let applied = store.reload().unwrap();
        assert_eq!(applied.changed, vec!["rules.object.min_score"]);
        assert_eq!(store.current().rules.object.min_score, 0.7);
        std::fs::write(&path, "device_id = \"a/b\"\n").unwrap();
        let err = store.reload().unwrap_err();
        assert_eq!(err.code(), "out_of_range");
        assert_eq!(store.current().rules.object.min_score, 0.7, "a bad file changes nothing");
    }

    /// A config pointing at a site file that holds the zones of camera `gate`.
    fn store_with_site() -> (tempfile::TempDir, ConfigStore) {
        let dir = tempfile::tempdir().unwrap();
        link_models(dir.path());
        std::fs::write(
            dir.path().join("yard.toml"),
            "# Yard, measured on site\nsite = \"yard\"\n\n[[scenes.gate.zones]]\nid = \"exit\"\nrole = \"site_exit\"\n\
             polygon = [[0.2, 0.5], [0.8, 0.5], [0.9, 1.0], [0.1, 1.0]]\n",
        )
        .unwrap();
        let text = format!("{FILE}\n[site]\ncalibration = \"yard.toml\"\n\n[[scenes.gate.zones]]\nid = \"old\"\nrole = \"road\"\npolygon = [[0, 0], [1, 0], [1, 1]]\n");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.scenes["gate"].zones[0].id, "exit", "the site's zones replace the config's");
        (dir, ConfigStore::new(Some(path), config))
    }

    #[test]
    fn zones_the_site_file_holds_are_saved_into_the_site_file() {
        let (dir, store) = store_with_site();
        let site = dir.path().join("yard.toml");
        let config_before = std::fs::read_to_string(dir.path().join("agent.toml")).unwrap();
        assert_eq!(store.zones_home("gate"), ZonesHome::SiteFile(site.clone()));
        assert_eq!(store.zones_home("ramp"), ZonesHome::ConfigFile(dir.path().join("agent.toml")));
        let zones = json!([{ "id": "exit", "role": "site_exit", "polygon": [[0.1, 0.5], [0.9, 0.5], [0.9, 1.0], [0.1, 1.0]] },
                           { "id": "window", "role": "privacy", "polygon": [[0.8, 0.0], [1.0, 0.0], [1.0, 0.2]] }]);
        let applied = store.set(&[change("scenes.gate.zones", zones)], &[]).unwrap();
        assert_eq!(applied.written, vec![site.clone()], "only the site file is written");
        assert!(applied.changed.iter().all(|k| k.starts_with("scenes.gate.zones")), "{:?}", applied.changed);
        assert!(!applied.changed.is_empty());
        let ids: Vec<&str> = applied.config.scenes["gate"].zones.iter().map(|z| z.id.as_str()).collect();
        assert_eq!(ids, ["exit", "window"]);
        assert_eq!(applied.config.site.calibration.as_deref(), Some(site.as_path()));
        assert_eq!(std::fs::read_to_string(dir.path().join("agent.toml")).unwrap(), config_before);
        let text = std::fs::read_to_string(&site).unwrap();
        assert!(text.contains("# Yard, measured on site") && text.contains("[[scenes.gate.zones]]"), "{text}");
        assert_eq!(Config::load(&dir.path().join("agent.toml")).unwrap().scenes["gate"].zones.len(), 2);

        // A zone the loader refuses names its key and the site file; nothing changes, no temp file stays.
        let crossing = json!([{ "id": "x", "role": "road", "polygon": [[0, 0], [1, 1], [1, 0], [0, 1]] }]);
        let err = store.set(&[change("scenes.gate.zones", crossing)], &[]).unwrap_err();
        assert_eq!(err.code(), "out_of_range");
        assert!(
            err.to_string().contains("scenes.gate.zones[0].polygon") && err.to_string().contains("yard.toml"),
            "{err}"
        );
        assert!(!err.to_string().contains(".tmp-"), "{err}");
        assert_eq!(std::fs::read_to_string(&site).unwrap(), text);
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
    }

    #[test]
    fn zones_drawn_for_a_camera_without_site_zones_go_into_the_config_as_tables() {
        let (dir, store) = store_with_site();
        let zones = json!([{ "polygon": [[0.1, 0.1], [0.4, 0.1], [0.4, 0.5]], "role": "bin", "category": "kitchen", "id": "bin-k" }]);
        let applied = store.set(&[change("scenes.ramp.zones", zones)], &[]).unwrap();
        assert_eq!(applied.written, vec![dir.path().join("agent.toml")]);
        let text = std::fs::read_to_string(dir.path().join("agent.toml")).unwrap();
        assert!(
            text.contains("[[scenes.ramp.zones]]\nid = \"bin-k\"\nrole = \"bin\"\ncategory = \"kitchen\"\npolygon"),
            "{text}"
        );
        assert_eq!(applied.config.scenes["ramp"].zones[0].category.as_deref(), Some("kitchen"));
    }

    #[test]
    fn clearing_the_site_files_zones_clears_the_configs_too() {
        let (dir, store) = store_with_site();
        let applied = store.set(&[change("scenes.gate.zones", json!([]))], &[]).unwrap();
        assert_eq!(applied.written.len(), 2, "{:?}", applied.written);
        assert!(
            applied.config.scenes.get("gate").is_none_or(|s| s.zones.is_empty()),
            "no zones, not the config's old ones"
        );
        assert!(!std::fs::read_to_string(dir.path().join("agent.toml")).unwrap().contains("id = \"old\""));
        assert_eq!(store.zones_home("gate"), ZonesHome::ConfigFile(dir.path().join("agent.toml")));
    }

    #[test]
    fn reload_names_changes_in_the_site_file() {
        let (dir, store) = store_with_site();
        let site = dir.path().join("yard.toml");
        let text = std::fs::read_to_string(&site).unwrap().replace("[0.2, 0.5]", "[0.25, 0.5]");
        std::fs::write(&site, text).unwrap();
        let applied = store.reload().unwrap();
        assert_eq!(applied.changed, vec!["scenes.gate.zones[0].polygon"]);
        assert_eq!(store.current().scenes["gate"].zones[0].polygon[0], [0.25, 0.5]);
    }

    #[test]
    fn without_a_config_file_nothing_can_be_set() {
        let store = ConfigStore::new(None, Config::embedded_defaults());
        let err = store.set(&[change("rules.object.min_score", json!(0.5))], &[]).unwrap_err();
        assert_eq!(err.code(), "no_config_file");
    }
}
