//! The report of `calibrate thresholds`, a folder a supervisor can open: `summary.md` and
//! `summary.json` (precision and recall per class at the chosen threshold), one precision–recall
//! curve per class (`pr-<model>-<label>.svg`), and under `wrong/` a copy of every picture with a
//! mistake at the chosen thresholds, the mistakes drawn on it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use image::Rgb;

use super::samples::SampleSet;
use super::thresholds::{curve_svg, marks_at_thresholds, ClassCalibration, LabelledSet, Mark, MarkKind, Prediction};
use crate::evidence::draw;
use crate::infer::{BoundingBox, ModelId};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write the report file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot draw the mistakes on {path}: {message}")]
    Picture { path: PathBuf, message: String },
}

/// One model's calibration on the sample set.
pub struct ModelCalibration {
    pub model: ModelId,
    pub classes: Vec<ClassCalibration>,
    pub predictions: Vec<Prediction>,
    /// The labels this model can name.
    pub truth: LabelledSet,
}

impl ModelCalibration {
    /// What was found, falsely found and missed at the chosen thresholds, per picture.
    pub fn marks(&self) -> BTreeMap<String, Vec<Mark>> {
        marks_at_thresholds(&self.predictions, &self.truth, &self.classes)
    }
}

/// How one class did at its chosen threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Counts {
    pub found: usize,
    pub false_finds: usize,
    pub missed: usize,
}

pub struct Report<'a> {
    pub set: &'a SampleSet,
    pub target_precision: f64,
    /// The score the models were run down to.
    pub min_score: f32,
    pub models: &'a [ModelCalibration],
    /// Labels no model can give.
    pub unknown_labels: BTreeSet<String>,
}

/// Counts per (model, label).
fn counts(calibration: &ModelCalibration) -> BTreeMap<String, Counts> {
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    for mark in calibration.marks().values().flatten() {
        let c = counts.entry(mark.label.clone()).or_default();
        match mark.kind {
            MarkKind::Found => c.found += 1,
            MarkKind::FalseFind => c.false_finds += 1,
            MarkKind::Missed => c.missed += 1,
        }
    }
    counts
}

/// An f32 as the f64 with its shortest decimal form (0.3, not 0.30000001192092896).
fn short(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

fn file_safe(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' }).collect()
}

/// `pr-<model>-<label>.svg`.
pub fn curve_file(model: &str, label: &str) -> String {
    format!("pr-{}-{}.svg", file_safe(model), file_safe(label))
}

/// `wrong/<picture>`, always a JPEG.
pub fn wrong_file(picture: &str) -> String {
    let lower = picture.to_lowercase();
    if lower.ends_with(".jpg") || lower.ends_with(".jpeg") {
        format!("wrong/{picture}")
    } else {
        format!("wrong/{picture}.jpg")
    }
}

impl Report<'_> {
    /// Pictures with a mistake of any model at its chosen thresholds.
    pub fn wrong_pictures(&self) -> BTreeSet<String> {
        self.models.iter().flat_map(|m| m.classes.iter().flat_map(|c| c.wrong_files.iter().cloned())).collect()
    }

    /// The summary as Markdown (also what the command prints).
    pub fn summary_markdown(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "# Threshold calibration\n");
        let _ = writeln!(
            text,
            "Samples: {} ({} labelled pictures), labels: {}; target precision {}; models run down to score {}.\n",
            self.set.folder.display(),
            self.set.truth.len(),
            self.set.labels_file.display(),
            self.target_precision,
            self.min_score
        );
        for calibration in self.models {
            let counts = counts(calibration);
            let _ = writeln!(text, "## Model {}\n", calibration.model.name);
            let _ = writeln!(
                text,
                "| class | labelled | threshold (as written) | precision | recall | found | false finds | missed | target | curve |"
            );
            let _ = writeln!(text, "|---|---|---|---|---|---|---|---|---|---|");
            for class in &calibration.classes {
                let c = counts.get(&class.label).copied().unwrap_or_default();
                let _ = writeln!(
                    text,
                    "| {} | {} | {:.4} | {:.3} | {:.3} | {} | {} | {} | {} | [svg]({}) |",
                    class.label,
                    class.labelled,
                    super::site_file::four_decimals_down(class.threshold),
                    class.precision,
                    class.recall,
                    c.found,
                    c.false_finds,
                    c.missed,
                    match (class.target_reached, class.curve.is_empty()) {
                        (true, _) => "reached",
                        (false, false) => "NOT reached",
                        (false, true) => "never found: not written",
                    },
                    curve_file(&calibration.model.name, &class.label)
                );
            }
            let _ = writeln!(text);
        }
        let wrong = self.wrong_pictures();
        if wrong.is_empty() {
            let _ = writeln!(text, "No picture has a mistake at the chosen thresholds.");
        } else {
            let _ = writeln!(text, "Pictures with a mistake at the chosen thresholds (red: false find, blue: missed label, green: right):\n");
            for picture in &wrong {
                let _ = writeln!(text, "- {picture}: [{}]({})", wrong_file(picture), wrong_file(picture));
            }
        }
        if !self.set.unlabelled.is_empty() {
            let _ = writeln!(text, "\nNot labelled, so not used: {}.", self.set.unlabelled.join(", "));
        }
        if !self.unknown_labels.is_empty() {
            let labels: Vec<&str> = self.unknown_labels.iter().map(String::as_str).collect();
            let _ = writeln!(text, "\nLabels no model can give, not calibrated: {}.", labels.join(", "));
        }
        text
    }

    pub fn summary_json(&self) -> serde_json::Value {
        let models: Vec<serde_json::Value> = self
            .models
            .iter()
            .map(|calibration| {
                let counts = counts(calibration);
                let classes: Vec<serde_json::Value> = calibration
                    .classes
                    .iter()
                    .map(|class| {
                        serde_json::json!({
                            "label": class.label,
                            "labelled": class.labelled,
                            "threshold": short(class.threshold),
                            "precision": class.precision,
                            "recall": class.recall,
                            "target_reached": class.target_reached,
                            "counts": counts.get(&class.label).copied().unwrap_or_default(),
                            "curve": class.curve.iter().map(|p| serde_json::json!({
                                "threshold": short(p.threshold), "precision": p.precision, "recall": p.recall,
                            })).collect::<Vec<_>>(),
                            "curve_svg": curve_file(&calibration.model.name, &class.label),
                            "wrong_pictures": class.wrong_files,
                        })
                    })
                    .collect();
                serde_json::json!({ "model": calibration.model, "classes": classes })
            })
            .collect();
        let wrong: Vec<serde_json::Value> = self
            .wrong_pictures()
            .iter()
            .map(|p| serde_json::json!({ "picture": p, "annotated": wrong_file(p) }))
            .collect();
        serde_json::json!({
            "samples": self.set.folder,
            "labels": self.set.labels_file,
            "pictures": self.set.truth.len(),
            "unlabelled_pictures": self.set.unlabelled,
            "target_precision": self.target_precision,
            "min_score": short(self.min_score),
            "models": models,
            "wrong_pictures": wrong,
            "unknown_labels": self.unknown_labels,
        })
    }

    /// Writes the whole folder; `wrong/` is made anew so it holds only this run's pictures.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
        let write = |name: &str, bytes: &[u8]| -> Result<PathBuf, ReportError> {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| ReportError::Write { path: path.clone(), source })?;
            }
            std::fs::write(&path, bytes).map_err(|source| ReportError::Write { path: path.clone(), source })?;
            Ok(path)
        };
        let wrong_dir = dir.join("wrong");
        if wrong_dir.is_dir() {
            std::fs::remove_dir_all(&wrong_dir)
                .map_err(|source| ReportError::Write { path: wrong_dir.clone(), source })?;
        }
        let mut written = vec![write("summary.md", self.summary_markdown().as_bytes())?];
        let json = serde_json::to_string_pretty(&self.summary_json()).unwrap_or_default();
        written.push(write("summary.json", json.as_bytes())?);
        for calibration in self.models {
            for class in &calibration.classes {
                let svg = curve_svg(class, self.target_precision);
                written.push(write(&curve_file(&calibration.model.name, &class.label), svg.as_bytes())?);
            }
        }
        let mut marks: BTreeMap<String, Vec<Mark>> = BTreeMap::new();
        for calibration in self.models {
            for (file, found) in calibration.marks() {
                marks.entry(file).or_default().extend(found);
            }
        }
        for picture in self.wrong_pictures() {
            let path = self.set.path_of(&picture);
            let image = crate::source::replay::decode_picture("calibrate", &path)
                .map_err(|e| ReportError::Picture { path: path.clone(), message: e.to_string() })?;
            let annotated = annotate(&image, marks.get(&picture).map(Vec::as_slice).unwrap_or_default());
            let jpeg = draw::encode_jpeg(&annotated, 85)
                .map_err(|e| ReportError::Picture { path: path.clone(), message: e.to_string() })?;
            written.push(write(&wrong_file(&picture), &jpeg)?);
        }
        Ok(written)
    }
}

const FOUND_COLOUR: Rgb<u8> = Rgb([0, 150, 60]);
const FALSE_COLOUR: Rgb<u8> = Rgb([220, 30, 30]);
const MISSED_COLOUR: Rgb<u8> = Rgb([30, 90, 230]);

/// The picture with its marks: right finds green, false finds red, missed labels blue. A mark
/// without a box (a picture-level label) is written in the top-left corner.
pub fn annotate(image: &image::RgbImage, marks: &[Mark]) -> image::RgbImage {
    let mut canvas = image.clone();
    let thickness = (canvas.width().max(canvas.height()) / 300).max(2);
    let size = draw::text_size_for(&canvas);
    let mut corner_y = 2.0;
    // Right finds first, so that mistakes are drawn over them.
    let mut ordered: Vec<&Mark> = marks.iter().collect();
    ordered.sort_by_key(|m| m.kind != MarkKind::Found);
    for mark in ordered {
        let (colour, caption) = match (mark.kind, mark.score) {
            (MarkKind::Found, Some(s)) => (FOUND_COLOUR, format!("{} {s:.2}", mark.label)),
            (MarkKind::FalseFind, Some(s)) => (FALSE_COLOUR, format!("FALSE {} {s:.2}", mark.label)),
            (MarkKind::Missed, _) | (_, None) => (MISSED_COLOUR, format!("MISSED {}", mark.label)),
        };
        match mark.bbox {
            Some(b) => {
                let b = BoundingBox {
                    x1: b.x1.max(0.0),
                    y1: b.y1.max(0.0),
                    x2: b.x2.min(canvas.width() as f32 - 1.0),
                    y2: b.y2.min(canvas.height() as f32 - 1.0),
                };
                draw::draw_labelled_box(&mut canvas, b, &caption, colour, thickness)
            }
            None => {
                draw::draw_label(&mut canvas, 2.0, corner_y, &caption, size, colour);
                corner_y += size * 1.6;
            }
        }
    }
    canvas
}
