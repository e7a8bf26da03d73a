//! How well the reader reads a labelled set shaped like `../shared/lpr/labels.csv`, scored exactly
//! as the reference pipeline's `evaluate.py`: texts normalised; a crop is right when its reading
//! equals the label; a scene's plate when any plate read in the picture equals it, its character
//! accuracy (1 − edit distance / length) the best over the picture's plates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::infer::detect::iou;
use crate::infer::BoundingBox;

use super::syntax::normalise;
use super::{PlateError, PlateReader};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot read labels file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("labels file {path}, line {line}: {problem}")]
    Labels { path: PathBuf, line: usize, problem: String },
    #[error("{path}: {source}")]
    Reader { path: PathBuf, source: PlateError },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Scene,
    Crop,
}

/// One labelled plate.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub file: String,
    pub text: String,
    pub kind: Kind,
    pub colour: String,
    pub rows: u8,
    /// Where the plate is in a scene, when the label says.
    pub bbox: Option<BoundingBox>,
}

/// Splits CSV text into records (RFC 4180: quoted fields may hold commas, quotes doubled, newlines);
/// each record with the line it starts on.
fn csv_records(text: &str) -> Result<Vec<(usize, Vec<String>)>, (usize, String)> {
    let mut records = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let (mut quoted, mut line, mut start) = (false, 1, 1);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => {
                line += usize::from(c == '\n');
                field.push(c);
            }
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                fields.push(std::mem::take(&mut field));
                records.push((start, std::mem::take(&mut fields)));
                line += 1;
                start = line;
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err((start, "a quoted field is not closed".into()));
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        records.push((start, fields));
    }
    Ok(records)
}

/// Reads a labels file: a header naming at least `file`, `plate_text`, `kind`, `colour`, `rows` and
/// `bbox`, then one plate per record.
pub fn read_labels(path: &Path) -> Result<Vec<Label>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Read { path: path.to_owned(), source })?;
    let bad = |line: usize, problem: String| EvalError::Labels { path: path.to_owned(), line, problem };
    let records = csv_records(&text).map_err(|(line, problem)| bad(line, problem))?;
    let mut records = records.into_iter().filter(|(_, r)| !(r.len() == 1 && r[0].trim().is_empty()));
    let (_, header) = records.next().ok_or_else(|| bad(1, "is empty; expected a header line".into()))?;
    let column = |name: &str| {
        header.iter().position(|h| h.trim() == name).ok_or_else(|| bad(1, format!("the header has no column `{name}`")))
    };
    let (file, text_at, kind, colour, rows, bbox) =
        (column("file")?, column("plate_text")?, column("kind")?, column("colour")?, column("rows")?, column("bbox")?);
    let mut labels = Vec::new();
    for (line, record) in records {
        let field = |i: usize, name: &str| {
            record.get(i).map(|s| s.trim().to_string()).ok_or_else(|| bad(line, format!("has no `{name}` field")))
        };
        let name = field(file, "file")?;
        if name.is_empty() || name.contains("..") || Path::new(&name).is_absolute() {
            return Err(bad(line, "`file` must name a picture inside the images folder".into()));
        }
        let kind = match field(kind, "kind")?.as_str() {
            "scene" => Kind::Scene,
            "crop" => Kind::Crop,
            _ => return Err(bad(line, "`kind` must be scene or crop".into())),
        };
        let rows = match field(rows, "rows")?.as_str() {
            "1" => 1,
            "2" => 2,
            _ => return Err(bad(line, "`rows` must be 1 or 2".into())),
        };
        let bbox_text = field(bbox, "bbox")?;
        let bbox = if bbox_text.is_empty() {
            None
        } else {
            let v: Vec<f32> = bbox_text.split_whitespace().filter_map(|s| s.parse().ok()).collect();
            match v[..] {
                [x1, y1, x2, y2] => Some(BoundingBox { x1, y1, x2, y2 }),
                _ => return Err(bad(line, "`bbox` must be four numbers: x1 y1 x2 y2".into())),
            }
        };
        let text = field(text_at, "plate_text")?;
        if text.is_empty() {
            return Err(bad(line, "`plate_text` is empty".into()));
        }
        labels.push(Label { file: name, text, kind, colour: field(colour, "colour")?, rows, bbox });
    }
    Ok(labels)
}

pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            current.push((previous[j + 1] + 1).min(current[j] + 1).min(previous[j] + usize::from(ca != *cb)));
        }
        previous = current;
    }
    previous[b.len()]
}

/// 1 − edit distance / the label's length, at least 0.
pub fn char_accuracy(read: &str, label: &str) -> f64 {
    let length = label.chars().count().max(1);
    (1.0 - edit_distance(read, label) as f64 / length as f64).max(0.0)
}

/// One labelled plate's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub file: String,
    pub label: String,
    pub kind: Kind,
    pub colour: String,
    pub rows: u8,
    /// The texts read (a crop's one reading, or every plate read in a scene).
    pub read: Vec<String>,
    pub exact: bool,
    pub char_accuracy: f64,
    /// A scene plate with a labelled box: whether a plate was found over it (IoU ≥ 0.3).
    pub located: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    pub plates: usize,
    pub exact: usize,
    pub exact_share: f64,
    pub char_accuracy: f64,
}

/// Time spent reading (decoding the picture excluded).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timing {
    pub pictures: usize,
    pub plates_read: usize,
    pub ms_per_picture: f64,
    pub ms_per_picture_median: f64,
    /// Mean over pictures with a plate of the picture's time / its plates (evaluate.py's figure).
    pub ms_per_plate: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Per kind, then per subset ("all", "colour=yellow", "rows=2", "yellow rows=1", …).
    pub tallies: BTreeMap<String, BTreeMap<String, Tally>>,
    pub timing: BTreeMap<String, Timing>,
    /// Scene plates with a labelled box over which a plate was found, and how many have a box.
    pub located: (usize, usize),
    /// Pictures that could not be decoded (counted as read wrong).
    pub unreadable: Vec<String>,
    pub outcomes: Vec<Outcome>,
}

/// What one picture gave, for the caller's progress display.
pub struct Progress<'a> {
    pub file: &'a str,
    pub done: usize,
    pub total: usize,
}

/// Reads every labelled picture under `images` with `reader` and scores it. A picture that cannot
/// be decoded is counted as read wrong and listed; a failing model stops the evaluation.
pub fn evaluate(
    reader: &mut PlateReader,
    labels: &[Label],
    images: &Path,
    on_picture: &mut dyn FnMut(Progress<'_>),
) -> Result<Report, EvalError> {
    // One entry per picture, its labels in file order.
    let mut pictures: Vec<(&str, Kind, Vec<&Label>)> = Vec::new();
    for label in labels {
        match pictures.iter_mut().find(|(f, k, _)| *f == label.file && *k == label.kind) {
            Some((_, _, list)) => list.push(label),
            None => pictures.push((&label.file, label.kind, vec![label])),
        }
    }
    let mut report = Report::default();
    let mut times: BTreeMap<Kind, (Vec<Duration>, Vec<f64>, usize)> = BTreeMap::new();
    let total = pictures.len();
    for (done, (file, kind, plate_labels)) in pictures.into_iter().enumerate() {
        let path = images.join(file);
        let reads: Option<Vec<super::PlateRead>> = match crate::source::replay::decode_picture("plates", &path) {
            Err(_) => {
                report.unreadable.push(file.to_string());
                None
            }
            Ok(picture) => {
                let started = Instant::now();
                let reads = match kind {
                    Kind::Crop => reader.read_crop(&picture).map(|r| r.into_iter().collect()),
                    Kind::Scene => reader.read(&picture),
                }
                .map_err(|source| EvalError::Reader { path: path.clone(), source })?;
                let elapsed = started.elapsed();
                let entry = times.entry(kind).or_default();
                entry.0.push(elapsed);
                if !reads.is_empty() {
                    entry.1.push(elapsed.as_secs_f64() * 1000.0 / reads.len() as f64);
                    entry.2 += reads.len();
                }
                Some(reads)
            }
        };
        let reads = reads.unwrap_or_default();
        let texts: Vec<String> = reads.iter().map(|r| normalise(&r.text)).collect();
        for label in plate_labels {
            let exact = texts.iter().any(|t| *t == label.text);
            let best = texts.iter().map(|t| char_accuracy(t, &label.text)).fold(0.0, f64::max);
            let located = match (kind, label.bbox) {
                (Kind::Scene, Some(b)) => Some(reads.iter().any(|r| iou(&r.bbox, &b) >= 0.3)),
                _ => None,
            };
            report.outcomes.push(Outcome {
                file: file.to_string(),
                label: label.text.clone(),
                kind,
                colour: label.colour.clone(),
                rows: label.rows,
                read: texts.clone(),
                exact,
                char_accuracy: best,
                located,
            });
        }
        on_picture(Progress { file, done: done + 1, total });
    }
    for (kind, (durations, per_plate, plates_read)) in times {
        let mut ms: Vec<f64> = durations.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
        let median = if ms.is_empty() {
            0.0
        } else if ms.len() % 2 == 1 {
            ms[ms.len() / 2]
        } else {
            (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2.0
        };
        report.timing.insert(
            kind_name(kind).into(),
            Timing {
                pictures: ms.len(),
                plates_read,
                ms_per_picture: mean(&ms),
                ms_per_picture_median: median,
                ms_per_plate: mean(&per_plate),
            },
        );
    }
    report.tallies = tallies(&report.outcomes);
    let located: Vec<bool> = report.outcomes.iter().filter_map(|o| o.located).collect();
    report.located = (located.iter().filter(|&&l| l).count(), located.len());
    Ok(report)
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Scene => "scenes",
        Kind::Crop => "crops",
    }
}

/// Whole-plate and character accuracy per kind: all, by colour, by rows, by colour and rows.
fn tallies(outcomes: &[Outcome]) -> BTreeMap<String, BTreeMap<String, Tally>> {
    let mut by_kind: BTreeMap<String, BTreeMap<String, Tally>> = BTreeMap::new();
    for o in outcomes {
        let subsets = [
            "all".to_string(),
            format!("colour={}", o.colour),
            format!("rows={}", o.rows),
            format!("{} rows={}", o.colour, o.rows),
        ];
        let kind = by_kind.entry(kind_name(o.kind).to_string()).or_default();
        for subset in subsets {
            let t = kind.entry(subset).or_default();
            t.plates += 1;
            t.exact += usize::from(o.exact);
            t.char_accuracy += o.char_accuracy;
        }
    }
    for t in by_kind.values_mut().flat_map(|k| k.values_mut()) {
        t.exact_share = t.exact as f64 / t.plates.max(1) as f64;
        t.char_accuracy /= t.plates.max(1) as f64;
    }
    by_kind
}

impl Report {
    /// The tables as text: one per kind, then the times.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (kind, subsets) in &self.tallies {
            out.push_str(&format!("{kind}\n  {:<22} {:>6} {:>8} {:>9}\n", "subset", "plates", "exact", "char acc"));
            // "all" first, then the subsets in name order.
            let all = subsets.get("all").into_iter().map(|t| ("all", t));
            for (name, t) in all.chain(subsets.iter().filter(|(n, _)| *n != "all").map(|(n, t)| (n.as_str(), t))) {
                out.push_str(&format!(
                    "  {name:<22} {:>6} {:>7.1}% {:>8.1}%\n",
                    t.plates,
                    100.0 * t.exact_share,
                    100.0 * t.char_accuracy
                ));
            }
        }
        if self.located.1 > 0 {
            out.push_str(&format!(
                "scene plates located (IoU ≥ 0.3 with the labelled box): {} of {}\n",
                self.located.0, self.located.1
            ));
        }
        for (kind, t) in &self.timing {
            out.push_str(&format!(
                "time, {kind}: {:.1} ms per picture (median {:.1}), {:.1} ms per plate read ({} pictures, {} plates read)\n",
                t.ms_per_picture, t.ms_per_picture_median, t.ms_per_plate, t.pictures, t.plates_read
            ));
        }
        if !self.unreadable.is_empty() {
            out.push_str(&format!("pictures that could not be decoded: {}\n", self.unreadable.join(", ")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_and_character_accuracy_are_the_reference_ones() {
        assert_eq!(edit_distance("沪B14292", "沪B14292"), 0);
        assert_eq!(edit_distance("超B14292", "沪B14292"), 1);
        assert_eq!(edit_distance("", "沪B14292"), 7);
        assert_eq!(edit_distance("粤AK93312", "粤AK9331"), 1);
        assert!((char_accuracy("粤AK93312", "粤AK9331") - (1.0 - 1.0 / 7.0)).abs() < 1e-12);
        assert_eq!(char_accuracy("completely different text", "沪B14292"), 0.0);
    }

    #[test]
    fn labels_with_quoted_commas_and_boxes_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.csv");
        std::fs::write(
            &path,
            "file,plate_text,kind,colour,rows,source,licence,label_basis,bbox,notes\n\
             a.png,沪B14292,scene,yellow,1,x,\"Apache-2.0 (uncertain, see \"\"notes\"\")\",eye,138 335 339 421,\"two\nlines\"\n\
             b.png,京AP7901,crop,yellow,2,x,y,z,,\n",
        )
        .unwrap();
        let labels = read_labels(&path).unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels[0].bbox, Some(BoundingBox { x1: 138.0, y1: 335.0, x2: 339.0, y2: 421.0 }));
        assert_eq!((labels[1].kind, labels[1].rows, labels[1].bbox), (Kind::Crop, 2, None));
    }

    #[test]
    fn bad_labels_are_refused_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.csv");
        let header = "file,plate_text,kind,colour,rows,bbox\n";
        for (body, expected) in [
            ("a.png,沪B14292,street,blue,1,\n", "line 2: `kind`"),
            ("a.png,沪B14292,scene,blue,3,\n", "line 2: `rows`"),
            ("../../etc/passwd,沪B14292,scene,blue,1,\n", "line 2: `file`"),
            ("a.png,沪B14292,scene,blue,1,1 2 3\n", "line 2: `bbox`"),
            ("a.png,,scene,blue,1,\n", "line 2: `plate_text`"),
            ("a.png,\"unclosed,scene,blue,1,\n", "line 2: a quoted field"),
        ] {
            std::fs::write(&path, format!("{header}{body}")).unwrap();
            let err = read_labels(&path).unwrap_err().to_string();
            assert!(err.contains(expected) && err.contains("labels.csv"), "{err}");
        }
        std::fs::write(&path, "file,text\n").unwrap();
        assert!(read_labels(&path).unwrap_err().to_string().contains("no column `plate_text`"));
    }

    #[test]
    fn tallies_split_by_colour_and_rows() {
        let outcome = |colour: &str, rows, exact| Outcome {
            file: "f".into(),
            label: "沪B14292".into(),
            kind: Kind::Scene,
            colour: colour.into(),
            rows,
            read: vec![],
            exact,
            char_accuracy: if exact { 1.0 } else { 0.5 },
            located: None,
        };
        let t = tallies(&[outcome("yellow", 1, true), outcome("yellow", 2, false), outcome("blue", 1, true)]);
        let scenes = &t["scenes"];
        assert_eq!((scenes["all"].plates, scenes["all"].exact), (3, 2));
        assert_eq!((scenes["colour=yellow"].plates, scenes["colour=yellow"].exact), (2, 1));
        assert_eq!((scenes["yellow rows=1"].plates, scenes["yellow rows=1"].exact), (1, 1));
        assert!((scenes["rows=2"].char_accuracy - 0.5).abs() < 1e-12);
    }
}
