//! Per-class score thresholds from a labelled sample set: precision/recall at every score the model
//! gave, and the lowest threshold (most recall) whose precision reaches the target. Pure logic over
//! predictions and labels; `cmd/calibrate.rs` runs the real models to get the predictions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::base::svg::Svg;
use crate::infer::detect::iou;
use crate::infer::BoundingBox;

/// Predictions must overlap a labelled box this much to count as finding it.
pub const MATCH_IOU: f32 = 0.5;

#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    #[error("cannot read labels file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("labels file {path}, line {line}: {problem}")]
    Line { path: PathBuf, line: usize, problem: String },
}

/// What a person said is in one picture: a label, with a box when the model is a detector.
#[derive(Debug, Clone, PartialEq)]
pub struct Truth {
    pub label: String,
    pub bbox: Option<BoundingBox>,
}

/// The labelled set: picture file name → what is in it (empty: nothing of interest).
pub type LabelledSet = BTreeMap<String, Vec<Truth>>;

/// Reads `file,label[,x1,y1,x2,y2]` rows (a header row `file,...` is allowed; `#` starts a comment;
/// label `none` marks a picture with nothing of interest). With a box, a label is one object
/// (a prediction must overlap it by [`MATCH_IOU`]); without, it says the picture shows one.
pub fn read_labels(path: &Path) -> Result<LabelledSet, LabelsError> {
    let text = std::fs::read_to_string(path).map_err(|source| LabelsError::Read { path: path.to_owned(), source })?;
    parse_labels(&text, path)
}

pub fn parse_labels(text: &str, path: &Path) -> Result<LabelledSet, LabelsError> {
    let mut set = LabelledSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        // A header row may follow leading comments.
        if line.is_empty() || (set.is_empty() && line.starts_with("file,")) {
            continue;
        }
        let problem = |problem: String| LabelsError::Line { path: path.to_owned(), line: i + 1, problem };
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let (file, label) = match fields.as_slice() {
            [file, label, ..] if !file.is_empty() && !label.is_empty() => (file.to_string(), label.to_string()),
            _ => return Err(problem(format!("{line:?}: expected file,label[,x1,y1,x2,y2]"))),
        };
        let bbox = match fields.len() {
            2 => None,
            6 => {
                let n: Result<Vec<f32>, _> = fields[2..].iter().map(|f| f.parse::<f32>()).collect();
                let n = n.map_err(|_| problem(format!("{line:?}: the box x1,y1,x2,y2 must be numbers (pixels)")))?;
                if n[2] <= n[0] || n[3] <= n[1] {
                    return Err(problem(format!("{line:?}: the box needs x2 > x1 and y2 > y1")));
                }
                Some(BoundingBox { x1: n[0], y1: n[1], x2: n[2], y2: n[3] })
            }
            _ => {
                return Err(problem(format!("{line:?}: expected 2 fields (file,label) or 6 (file,label,x1,y1,x2,y2)")))
            }
        };
        let truths = set.entry(file).or_default();
        if label != "none" {
            truths.push(Truth { label, bbox });
        }
    }
    Ok(set)
}

/// One thing the model said about one picture.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub file: String,
    pub label: String,
    pub score: f32,
    pub bbox: Option<BoundingBox>,
}

/// Precision and recall when keeping predictions scoring at least `threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CurvePoint {
    pub threshold: f32,
    pub precision: f64,
    pub recall: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassCalibration {
    pub label: String,
    pub labelled: usize,
    pub threshold: f32,
    pub precision: f64,
    pub recall: f64,
    /// False when no threshold reaches the target precision (the most precise one is chosen).
    pub target_reached: bool,
    pub curve: Vec<CurvePoint>,
    /// Pictures with a mistake at the chosen threshold: a false find or a missed label.
    pub wrong_files: BTreeSet<String>,
}

/// Whether each prediction of `label` (best first) found a labelled thing; greedy, best score first.
fn match_predictions<'a>(
    label: &str,
    predictions: &'a [Prediction],
    truth: &LabelledSet,
) -> Vec<(&'a Prediction, bool)> {
    match_to_truth(label, predictions, truth).into_iter().map(|(p, found)| (p, found.is_some())).collect()
}

/// Each prediction of `label`, best first, with the index (in its file's truths) of the labelled
/// thing it found. Greedy by score, so the matches of the predictions above any threshold are
/// the same as when only those are matched.
fn match_to_truth<'a>(
    label: &str,
    predictions: &'a [Prediction],
    truth: &LabelledSet,
) -> Vec<(&'a Prediction, Option<usize>)> {
    let mut of_class: Vec<&Prediction> = predictions.iter().filter(|p| p.label == label).collect();
    of_class.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut used: BTreeSet<(String, usize)> = BTreeSet::new();
    of_class
        .into_iter()
        .map(|p| {
            let candidates = truth.get(&p.file).map(Vec::as_slice).unwrap_or_default();
            let found = candidates
                .iter()
                .enumerate()
                .filter(|(i, t)| t.label == label && !used.contains(&(p.file.clone(), *i)))
                .find(|(_, t)| match (t.bbox, p.bbox) {
                    (Some(tb), Some(pb)) => iou(&tb, &pb) >= MATCH_IOU,
                    (None, _) => true,
                    (Some(_), None) => false,
                })
                .map(|(i, _)| i);
            if let Some(i) = found {
                used.insert((p.file.clone(), i));
            }
            (p, found)
        })
        .collect()
}

/// One thing to show on a picture of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mark {
    pub label: String,
    pub kind: MarkKind,
    /// The model's score (none for a missed label).
    pub score: Option<f32>,
    pub bbox: Option<BoundingBox>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkKind {
    /// Kept by the chosen threshold and labelled: right.
    Found,
    /// Kept by the chosen threshold, but nothing labelled there: a false find.
    FalseFind,
    /// Labelled, but nothing kept found it: a miss.
    Missed,
}

/// At each class's chosen threshold: per picture, what was found, falsely found and missed.
pub fn marks_at_thresholds(
    predictions: &[Prediction],
    truth: &LabelledSet,
    classes: &[ClassCalibration],
) -> BTreeMap<String, Vec<Mark>> {
    let mut marks: BTreeMap<String, Vec<Mark>> = BTreeMap::new();
    for class in classes {
        let mut found: BTreeSet<(String, usize)> = BTreeSet::new();
        for (p, index) in match_to_truth(&class.label, predictions, truth) {
            if p.score < class.threshold {
                break;
            }
            let kind = match index {
                Some(i) => {
                    found.insert((p.file.clone(), i));
                    MarkKind::Found
                }
                None => MarkKind::FalseFind,
            };
            marks.entry(p.file.clone()).or_default().push(Mark {
                label: class.label.clone(),
                kind,
                score: Some(p.score),
                bbox: p.bbox,
            });
        }
        for (file, truths) in truth {
            for (i, t) in truths.iter().enumerate() {
                if t.label == class.label && !found.contains(&(file.clone(), i)) {
                    marks.entry(file.clone()).or_default().push(Mark {
                        label: t.label.clone(),
                        kind: MarkKind::Missed,
                        score: None,
                        bbox: t.bbox,
                    });
                }
            }
        }
    }
    marks
}

/// Chooses the threshold of every labelled class for `target_precision`.
pub fn calibrate(predictions: &[Prediction], truth: &LabelledSet, target_precision: f64) -> Vec<ClassCalibration> {
    let classes: BTreeSet<&str> = truth.values().flatten().map(|t| t.label.as_str()).collect();
    classes.into_iter().map(|label| calibrate_class(label, predictions, truth, target_precision)).collect()
}

fn calibrate_class(label: &str, predictions: &[Prediction], truth: &LabelledSet, target: f64) -> ClassCalibration {
    let labelled = truth.values().flatten().filter(|t| t.label == label).count();
    let matched = match_predictions(label, predictions, truth);
    let mut curve = Vec::new();
    let (mut true_finds, mut finds) = (0usize, 0usize);
    for (i, (prediction, found)) in matched.iter().enumerate() {
        finds += 1;
        true_finds += usize::from(*found);
        // One point per distinct score: ties are kept or dropped together.
        let last_of_score = matched.get(i + 1).is_none_or(|(next, _)| next.score < prediction.score);
        if last_of_score {
            curve.push(CurvePoint {
                threshold: prediction.score,
                precision: true_finds as f64 / finds as f64,
                recall: if labelled == 0 { 0.0 } else { true_finds as f64 / labelled as f64 },
            });
        }
    }
    let reaching = curve
        .iter()
        .filter(|p| p.precision >= target)
        // Most recall; at equal recall a lower threshold only adds false finds, so the higher wins.
        .max_by(|a, b| {
            a.recall
                .total_cmp(&b.recall)
                .then(a.precision.total_cmp(&b.precision))
                .then(a.threshold.total_cmp(&b.threshold))
        });
    let (chosen, target_reached) = match reaching {
        Some(point) => (Some(*point), true),
        None => (
            curve
                .iter()
                .copied()
                .max_by(|a, b| a.precision.total_cmp(&b.precision).then(a.recall.total_cmp(&b.recall))),
            false,
        ),
    };
    let chosen = chosen.unwrap_or(CurvePoint { threshold: 1.0, precision: 0.0, recall: 0.0 });
    let mut wrong_files = BTreeSet::new();
    let mut found_per_file: BTreeMap<&str, usize> = BTreeMap::new();
    for (prediction, found) in &matched {
        if prediction.score >= chosen.threshold {
            if *found {
                *found_per_file.entry(&prediction.file).or_default() += 1;
            } else {
                wrong_files.insert(prediction.file.clone());
            }
        }
    }
    for (file, truths) in truth {
        let wanted = truths.iter().filter(|t| t.label == label).count();
        if found_per_file.get(file.as_str()).copied().unwrap_or(0) < wanted {
            wrong_files.insert(file.clone());
        }
    }
    ClassCalibration {
        label: label.to_string(),
        labelled,
        threshold: chosen.threshold,
        precision: chosen.precision,
        recall: chosen.recall,
        target_reached,
        curve,
        wrong_files,
    }
}

/// The precision–recall curve of one class as a small SVG (recall across, precision up).
pub fn curve_svg(class: &ClassCalibration, target: f64) -> String {
    let (w, h, m) = (320.0, 240.0, 36.0);
    let x = |recall: f64| m + recall * (w - 2.0 * m);
    let y = |precision: f64| h - m - precision * (h - 2.0 * m);
    let (bottom, right, middle, target_y) = (h - m, w - m, h / 2.0, y(target));
    let points: Vec<String> = class.curve.iter().map(|p| format!("{:.1},{:.1}", x(p.recall), y(p.precision))).collect();
    let mut svg = Svg::file(w, h, 11, &format!("precision-recall of {}", class.label));
    svg.shape("line", &[("x1", &m), ("y1", &bottom), ("x2", &right), ("y2", &bottom), ("stroke", &"black")]);
    svg.shape("line", &[("x1", &m), ("y1", &m), ("x2", &m), ("y2", &bottom), ("stroke", &"black")]).newline();
    svg.text("text", &[("x", &(w / 2.0)), ("y", &(h - 8.0)), ("text-anchor", &"middle")], &"recall");
    svg.text(
        "text",
        &[
            ("x", &"10"),
            ("y", &middle),
            ("transform", &format_args!("rotate(-90 10 {middle})")),
            ("text-anchor", &"middle"),
        ],
        &"precision",
    )
    .newline();
    let (threshold, precision, recall) = (class.threshold, class.precision, class.recall);
    svg.text(
        "text",
        &[("x", &m), ("y", &"20")],
        &format_args!("{}: threshold {threshold:.3}, precision {precision:.2}, recall {recall:.2}", class.label),
    )
    .newline();
    svg.shape(
        "line",
        &[
            ("x1", &m),
            ("y1", &target_y),
            ("x2", &right),
            ("y2", &target_y),
            ("stroke", &"#999"),
            ("stroke-dasharray", &"4 3"),
        ],
    )
    .newline();
    svg.shape(
        "polyline",
        &[("fill", &"none"), ("stroke", &"#1565c0"), ("stroke-width", &"2"), ("points", &points.join(" "))],
    )
    .newline();
    let (px, py) = (x(recall), y(precision));
    svg.shape(
        "circle",
        &[("cx", &format_args!("{px:.1}")), ("cy", &format_args!("{py:.1}")), ("r", &"4"), ("fill", &"#c62828")],
    )
    .newline();
    svg.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(x1: f32, y1: f32, x2: f32, y2: f32) -> Option<BoundingBox> {
        Some(BoundingBox { x1, y1, x2, y2 })
    }

    fn prediction(file: &str, label: &str, score: f32, bbox: Option<BoundingBox>) -> Prediction {
        Prediction { file: file.into(), label: label.into(), score, bbox }
    }

    #[test]
    fn labels_csv_with_boxes_negatives_and_comments() {
        let text = "file,label,x1,y1,x2,y2\n# a comment\ndog.jpg,truck,457,79,685,159\ndog.jpg,dog,116,211,345,531\nrocket.jpg,none\ncoffee.png,cup\n";
        let set = parse_labels(text, Path::new("labels.csv")).unwrap();
        assert_eq!(set["dog.jpg"].len(), 2);
        assert!(set["rocket.jpg"].is_empty());
        assert_eq!(set["coffee.png"], vec![Truth { label: "cup".into(), bbox: None }]);
    }

    #[test]
    fn bad_label_rows_name_the_file_and_line() {
        let err = parse_labels("dog.jpg,truck,1,2,3\n", Path::new("site/labels.csv")).unwrap_err();
        assert!(err.to_string().contains("site/labels.csv, line 1"), "{err}");
        let err = parse_labels("a.jpg,dog\nb.jpg,dog,10,10,5,20\n", Path::new("l.csv")).unwrap_err();
        assert!(err.to_string().contains("line 2") && err.to_string().contains("x2 > x1"), "{err}");
    }

    #[test]
    fn the_lowest_threshold_that_keeps_the_target_precision_is_chosen() {
        // Five labelled trucks; the model scores 4 of them, with two false finds in between.
        let truth =
            parse_labels("a,truck\nb,truck\nc,truck\nd,truck\ne,truck\nf,none\ng,none\n", Path::new("l.csv")).unwrap();
        let predictions = vec![
            prediction("a", "truck", 0.9, None),
            prediction("b", "truck", 0.8, None),
            prediction("f", "truck", 0.7, None), // false
            prediction("c", "truck", 0.6, None),
            prediction("d", "truck", 0.5, None),
            prediction("g", "truck", 0.4, None), // false
        ];
        let calibrated = calibrate(&predictions, &truth, 0.95);
        let truck = &calibrated[0];
        assert_eq!(truck.threshold, 0.8);
        assert_eq!((truck.precision, truck.recall), (1.0, 0.4));
        assert!(truck.target_reached);
        let relaxed = &calibrate(&predictions, &truth, 0.75)[0];
        assert_eq!(relaxed.threshold, 0.5, "4 of 5 finds right is 0.8 precision");
        assert!((relaxed.recall - 0.8).abs() < 1e-12);
        assert_eq!(relaxed.wrong_files, BTreeSet::from(["e".to_string(), "f".to_string()]));
        // At 0.5 precision every threshold down to 0.5 qualifies; 0.4 adds a false find, no recall.
        let loose = &calibrate(&predictions, &truth, 0.5)[0];
        assert_eq!((loose.threshold, loose.precision), (0.5, 0.8));
        let marks = marks_at_thresholds(&predictions, &truth, std::slice::from_ref(relaxed));
        let kinds = |file: &str| marks.get(file).map(|m| m.iter().map(|m| m.kind).collect::<Vec<_>>());
        assert_eq!(kinds("a"), Some(vec![MarkKind::Found]));
        assert_eq!(kinds("e"), Some(vec![MarkKind::Missed]));
        assert_eq!(kinds("f"), Some(vec![MarkKind::FalseFind]));
        assert_eq!(kinds("g"), None, "0.4 is below the chosen 0.5");
    }

    #[test]
    fn boxes_must_overlap_to_count_and_each_label_is_found_once() {
        let truth = parse_labels("dog.jpg,truck,457,79,685,159\n", Path::new("l.csv")).unwrap();
        let predictions = vec![
            prediction("dog.jpg", "truck", 0.36, boxed(457.0, 80.0, 686.0, 161.0)),
            prediction("dog.jpg", "truck", 0.30, boxed(460.0, 82.0, 690.0, 164.0)), // duplicate
            prediction("dog.jpg", "truck", 0.50, boxed(0.0, 0.0, 100.0, 100.0)),    // elsewhere
        ];
        let truck = &calibrate(&predictions, &truth, 0.5)[0];
        let found: Vec<bool> = match_predictions("truck", &predictions, &truth).iter().map(|(_, f)| *f).collect();
        assert_eq!(found, vec![false, true, false]);
        assert_eq!(truck.threshold, 0.36);
        assert_eq!(truck.precision, 0.5);
    }

    #[test]
    fn an_unreachable_target_takes_the_most_precise_threshold_and_says_so() {
        let truth = parse_labels("a,cup\nb,none\n", Path::new("l.csv")).unwrap();
        let predictions = vec![prediction("b", "cup", 0.9, None), prediction("a", "cup", 0.5, None)];
        let cup = &calibrate(&predictions, &truth, 0.95)[0];
        assert!(!cup.target_reached);
        assert_eq!(cup.threshold, 0.5);
        assert_eq!(cup.precision, 0.5);
    }

    #[test]
    fn the_curve_is_an_svg_with_the_chosen_point() {
        let truth = parse_labels("a,cup\n", Path::new("l.csv")).unwrap();
        let cup = &calibrate(&[prediction("a", "cup", 0.5, None)], &truth, 0.9)[0];
        let svg = curve_svg(cup, 0.9);
        assert!(svg.starts_with("<svg") && svg.contains("<polyline") && svg.contains("cup: threshold 0.500"));
    }
}
