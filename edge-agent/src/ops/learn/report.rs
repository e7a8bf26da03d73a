//! The report of `edge-agent learn`, a folder a supervisor can open: `summary.md` and
//! `summary.json` (counts, held-out precision and recall per class, the confusion table, the
//! ImageNet mapping's figures on the same crops), and pictures of them: `scores.svg` (precision
//! and recall bars per class) and `confusion.svg` (and `confusion-imagenet-mapping.svg`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::train::Evaluation;
use super::{Embedded, Outcome};
use crate::base::svg::{Svg, PALETTE};

#[derive(Debug, thiserror::Error)]
#[error("cannot write the report file {path}: {source}")]
pub struct ReportError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

pub struct Report<'a> {
    pub name: &'a str,
    pub outcome: &'a Outcome,
    pub examples: &'a [Embedded],
    pub samples: &'a Path,
    pub model_manifest: Option<&'a Path>,
}

/// The column heading for answers outside the labels.
const OTHER: &str = "(other)";

impl Report<'_> {
    /// Per-class figures and the confusion table as Markdown (also what the command prints).
    pub fn summary_markdown(&self) -> String {
        let o = self.outcome;
        let mut text = String::new();
        let _ = writeln!(text, "# Head {}\n", self.name);
        let _ = writeln!(
            text,
            "Trained on {} labelled crops from {}, checked on {} held-out crops it never saw.\n",
            o.trained_on,
            self.samples.display(),
            o.held_out.len()
        );
        if o.held_out_from_trained_pictures > 0 {
            let _ = writeln!(
                text,
                "Note: {} of the {} held-out crops are cut from pictures that also gave training crops; \
                 on pictures of new events the figures may be lower.\n",
                o.held_out_from_trained_pictures,
                o.held_out.len()
            );
        }
        let _ = writeln!(text, "| class | crops | held out | precision | recall |");
        let _ = writeln!(text, "|---|---:|---:|---:|---:|");
        for class in &o.evaluation.classes {
            let _ = writeln!(
                text,
                "| {} | {} | {} | {:.2} | {:.2} |",
                class.label,
                o.counts.get(&class.label).copied().unwrap_or(0),
                class.held_out,
                class.precision,
                class.recall
            );
        }
        let _ = writeln!(text, "\nHeld-out accuracy: {:.3}\n", o.evaluation.accuracy);
        let _ = writeln!(text, "Confusion (rows: labelled, columns: predicted):\n");
        text.push_str(&confusion_markdown(&o.evaluation, false));
        if let Some(baseline) = &o.baseline {
            let _ = writeln!(
                text,
                "\nThe ImageNet classifier with the category mapping on the same held-out crops: accuracy {:.3}\n",
                baseline.accuracy
            );
            text.push_str(&confusion_markdown(baseline, true));
        }
        if !o.mistakes.is_empty() {
            let _ = writeln!(text, "\nHeld-out mistakes:\n");
            for (i, predicted) in &o.mistakes {
                let crop = &self.examples[*i].crop;
                let at = crop.bbox.map(|b| format!(" at {},{},{},{}", b.x1, b.y1, b.x2, b.y2)).unwrap_or_default();
                let _ = writeln!(text, "- {}{at}: labelled {}, predicted {predicted}", crop.file, crop.label);
            }
        }
        if let Some(manifest) = self.model_manifest {
            let _ = writeln!(text, "\nModel: {}", manifest.display());
        }
        text
    }

    pub fn summary_json(&self) -> serde_json::Value {
        let o = self.outcome;
        serde_json::json!({
            "name": self.name,
            "samples": self.samples.display().to_string(),
            "counts": o.counts,
            "trained_on": o.trained_on,
            "held_out": o.held_out.len(),
            "held_out_from_trained_pictures": o.held_out_from_trained_pictures,
            "evaluation": o.evaluation,
            "imagenet_mapping": o.baseline,
            "model": self.model_manifest.map(|p| p.display().to_string()),
        })
    }

    /// Writes the report files into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
        let error = |path: &Path| {
            let path = path.to_owned();
            move |source| ReportError { path, source }
        };
        std::fs::create_dir_all(dir).map_err(error(dir))?;
        let mut files = vec![
            ("summary.md".to_string(), self.summary_markdown()),
            ("summary.json".to_string(), format!("{:#}\n", self.summary_json())),
            ("scores.svg".to_string(), scores_svg(&self.outcome.evaluation)),
            ("confusion.svg".to_string(), confusion_svg(&self.outcome.evaluation, "held-out crops: the head", false)),
        ];
        if let Some(baseline) = &self.outcome.baseline {
            files.push((
                "confusion-imagenet-mapping.svg".to_string(),
                confusion_svg(baseline, "held-out crops: ImageNet labels mapped to categories", true),
            ));
        }
        let mut written = Vec::new();
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(error(&path))?;
            written.push(path);
        }
        Ok(written)
    }
}

fn confusion_markdown(e: &Evaluation, with_other: bool) -> String {
    let mut text = String::new();
    let columns: Vec<&str> = e.labels.iter().map(String::as_str).chain(with_other.then_some(OTHER)).collect();
    let _ = writeln!(text, "| labelled \\ predicted | {} |", columns.join(" | "));
    let _ = writeln!(text, "|---|{}", "---:|".repeat(columns.len()));
    for (label, row) in e.labels.iter().zip(&e.confusion) {
        let cells: Vec<String> = row.iter().take(columns.len()).map(usize::to_string).collect();
        let _ = writeln!(text, "| {label} | {} |", cells.join(" | "));
    }
    text
}

/// Precision and recall per class as bars from 0 to 1.
pub fn scores_svg(e: &Evaluation) -> String {
    let (m, bar_h, gap) = (150.0, 14.0, 12.0);
    let (w, plot) = (520.0, 320.0);
    let h = 50.0 + e.classes.len() as f64 * (2.0 * bar_h + gap) + 30.0;
    let (bottom, one) = (h - 20.0, m + plot);
    let mut svg = Svg::file(w, h, 12, "held-out precision and recall per class");
    svg.text(
        "text",
        &[("x", &"10"), ("y", &"20")],
        &format_args!("Held-out precision (blue) and recall (orange), accuracy {:.2}; (n) crops held out", e.accuracy),
    )
    .newline();
    svg.shape("line", &[("x1", &m), ("y1", &"30"), ("x2", &m), ("y2", &bottom), ("stroke", &"black")]);
    svg.shape(
        "line",
        &[
            ("x1", &one),
            ("y1", &"30"),
            ("x2", &one),
            ("y2", &bottom),
            ("stroke", &"#999"),
            ("stroke-dasharray", &"4 3"),
        ],
    )
    .newline();
    for (i, class) in e.classes.iter().enumerate() {
        let top = 40.0 + i as f64 * (2.0 * bar_h + gap);
        let label_y = top + bar_h + 4.0;
        svg.text(
            "text",
            &[("x", &(m - 8.0)), ("y", &format_args!("{label_y:.1}")), ("text-anchor", &"end")],
            &format_args!("{} ({})", class.label, class.held_out),
        )
        .newline();
        // Precision in the series' first colour, recall in the second, each with its figure after it.
        for (row, (name, value)) in [("precision", class.precision), ("recall", class.recall)].into_iter().enumerate() {
            let (bar_y, width, figure_x) = (top + row as f64 * bar_h, value * plot, m + value * plot + 4.0);
            let figure_y = bar_y + bar_h - 3.0;
            svg.titled(
                "rect",
                &[
                    ("x", &m),
                    ("y", &format_args!("{bar_y:.1}")),
                    ("width", &format_args!("{width:.1}")),
                    ("height", &bar_h),
                    ("fill", &PALETTE[row]),
                ],
                &format_args!("{name} {value:.2}"),
            );
            svg.text(
                "text",
                &[("x", &format_args!("{figure_x:.1}")), ("y", &format_args!("{figure_y:.1}"))],
                &format_args!("{value:.2}"),
            )
            .newline();
        }
    }
    svg.finish()
}

/// The confusion table as a grid, each cell shaded by its share of its row.
pub fn confusion_svg(e: &Evaluation, title: &str, with_other: bool) -> String {
    let columns: Vec<&str> = e.labels.iter().map(String::as_str).chain(with_other.then_some(OTHER)).collect();
    let (cell, left, top) = (64.0, 130.0, 100.0);
    let w = (left + cell * columns.len() as f64 + 20.0).max(420.0);
    let h = top + cell * e.labels.len() as f64 + 30.0;
    let mut svg = Svg::file(w, h, 12, title);
    svg.text("text", &[("x", &"10"), ("y", &"16")], &title).newline();
    svg.text(
        "text",
        &[("x", &"10"), ("y", &"32")],
        &format_args!("rows: labelled, columns: predicted; accuracy {:.2}", e.accuracy),
    )
    .newline();
    for (c, name) in columns.iter().enumerate() {
        let (x, y) = (left + cell * (c as f64 + 0.5), top - 8.0);
        svg.text(
            "text",
            &[
                ("x", &format_args!("{x:.1}")),
                ("y", &y),
                ("text-anchor", &"start"),
                ("transform", &format_args!("rotate(-35 {x:.1} {y})")),
            ],
            name,
        )
        .newline();
    }
    for (r, (label, row)) in e.labels.iter().zip(&e.confusion).enumerate() {
        let y = top + cell * r as f64;
        let total: usize = row.iter().sum();
        let label_y = y + cell / 2.0 + 4.0;
        svg.text("text", &[("x", &(left - 8.0)), ("y", &format_args!("{label_y:.1}")), ("text-anchor", &"end")], label)
            .newline();
        for (c, &count) in row.iter().take(columns.len()).enumerate() {
            let share = if total == 0 { 0.0 } else { count as f64 / total as f64 };
            // Right answers in green, wrong ones in red, darker for a larger share of the row.
            let (red, green) =
                if c == r { (255.0 * (1.0 - share * 0.7), 255.0) } else { (255.0, 255.0 * (1.0 - share * 0.7)) };
            let blue = 255.0 * (1.0 - share * 0.7);
            let (x, text_x, text_y) = (left + cell * c as f64, left + cell * (c as f64 + 0.5), y + cell / 2.0 + 6.0);
            svg.shape(
                "rect",
                &[
                    ("x", &format_args!("{x:.1}")),
                    ("y", &format_args!("{y:.1}")),
                    ("width", &cell),
                    ("height", &cell),
                    ("fill", &format_args!("rgb({red:.0},{green:.0},{blue:.0})")),
                    ("stroke", &"#999"),
                ],
            );
            svg.text(
                "text",
                &[
                    ("x", &format_args!("{text_x:.1}")),
                    ("y", &format_args!("{text_y:.1}")),
                    ("text-anchor", &"middle"),
                    ("font-size", &"16"),
                ],
                &count,
            )
            .newline();
        }
    }
    svg.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::learn::train::evaluate;

    #[test]
    fn the_pictures_hold_every_class_and_count() {
        let labels = vec!["kitchen".to_string(), "residual<&>".to_string()];
        let e = evaluate(&labels, &[0, 0, 1], &[Some(0), None, Some(1)]);
        let grid = confusion_svg(&e, "t", true);
        assert!(grid.starts_with("<svg xmlns") && grid.contains("residual&lt;&amp;&gt;"), "{grid}");
        assert_eq!(grid.matches("<rect x=").count(), 6, "2 rows × 3 columns: {grid}");
        assert!(grid.contains("(other)") && grid.contains("accuracy 0.67"), "{grid}");
        let bars = scores_svg(&e);
        assert!(bars.contains("kitchen (2)") && bars.contains("<title>recall 0.50</title>"), "{bars}");
    }
}
