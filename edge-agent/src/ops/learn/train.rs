//! The learning itself, on embeddings already computed: the per-class minimum, a stratified
//! held-out split, a multinomial logistic regression (linfa-logistic) on standardised features,
//! folded back into one linear layer over the raw features, and the held-out figures.

use std::collections::BTreeMap;

use linfa::prelude::*;
use linfa_logistic::MultiLogisticRegression;
use ndarray::{Array1, Array2};
use serde::Serialize;

/// Fewer labelled crops than this in a class and no head is trained: with a quarter held out,
/// 8 leaves 6 to learn from and 2 to check on.
pub const MIN_PER_CLASS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(
        "the labels name one class only ({label:?}, {count} crops); a classifier needs at least two classes, \
         e.g. label crops of what is not {label:?} too"
    )]
    OneClass { label: String, count: usize },
    #[error("no labelled crops")]
    Empty,
    #[error("too few labelled crops to train and check a classifier (at least {MIN_PER_CLASS} per class): {}", describe_short(.short))]
    TooFew { short: Vec<Shortfall> },
    #[error("the logistic regression did not fit: {0}")]
    Fit(String),
}

/// A class with too few crops: how many it has and how many more it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub label: String,
    pub have: usize,
    pub more: usize,
}

fn describe_short(short: &[Shortfall]) -> String {
    let parts: Vec<String> =
        short.iter().map(|s| format!("{:?} has {}, needs {} more", s.label, s.have, s.more)).collect();
    parts.join("; ")
}

/// Crops per label; refuses one class, or any class under [`MIN_PER_CLASS`] (naming them all).
pub fn check_counts(labels: &[String]) -> Result<BTreeMap<String, usize>, TrainError> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for label in labels {
        *counts.entry(label.clone()).or_default() += 1;
    }
    match counts.len() {
        0 => return Err(TrainError::Empty),
        1 => {
            let (label, count) = counts.into_iter().next().unwrap_or_default();
            return Err(TrainError::OneClass { label, count });
        }
        _ => {}
    }
    let short: Vec<Shortfall> = counts
        .iter()
        .filter(|(_, &n)| n < MIN_PER_CLASS)
        .map(|(label, &have)| Shortfall { label: label.clone(), have, more: MIN_PER_CLASS - have })
        .collect();
    if !short.is_empty() {
        return Err(TrainError::TooFew { short });
    }
    Ok(counts)
}

/// A small deterministic generator (splitmix64): the same samples give the same split on every box.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Indices to train on and to hold out: `share` of each class held out (at least one, and at
/// least one left to train on), chosen by a seeded shuffle within the class.
pub fn stratified_split(labels: &[String], share: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut by_class: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, label) in labels.iter().enumerate() {
        by_class.entry(label.as_str()).or_default().push(i);
    }
    let mut random = SplitMix(seed);
    let (mut train, mut held_out) = (Vec::new(), Vec::new());
    for indices in by_class.values_mut() {
        // Fisher–Yates.
        for i in (1..indices.len()).rev() {
            let j = (random.next() % (i as u64 + 1)) as usize;
            indices.swap(i, j);
        }
        let n = indices.len();
        let hold = ((n as f64 * share).round() as usize).clamp(1, n.saturating_sub(1).max(1));
        held_out.extend_from_slice(&indices[..hold]);
        train.extend_from_slice(&indices[hold..]);
    }
    train.sort_unstable();
    held_out.sort_unstable();
    (train, held_out)
}

/// A trained linear head over the raw embedding: `logits = weights · features + bias`, one row
/// per label (labels sorted).
#[derive(Debug, Clone)]
pub struct Head {
    pub labels: Vec<String>,
    pub weights: Vec<Vec<f32>>,
    pub bias: Vec<f32>,
}

impl Head {
    pub fn logits(&self, features: &[f32]) -> Vec<f32> {
        self.weights
            .iter()
            .zip(&self.bias)
            .map(|(row, b)| row.iter().zip(features).map(|(w, x)| w * x).sum::<f32>() + b)
            .collect()
    }

    /// Index of the most likely label.
    pub fn predict(&self, features: &[f32]) -> usize {
        let logits = self.logits(features);
        (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap_or(0)
    }
}

/// How the regression is run.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    /// L2 penalty on the weights (of standardised features).
    pub alpha: f64,
    pub max_iterations: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self { alpha: 1.0, max_iterations: 200 }
    }
}

/// Fits a head on `features` (one row per crop) with `labels`. Features are standardised for the
/// fit (linfa asks for it) and the scaling is folded into the weights, so the head takes the raw
/// embedding, as the ONNX graph hands it over.
pub fn fit(features: &[Vec<f32>], labels: &[String], options: TrainOptions) -> Result<Head, TrainError> {
    let names: Vec<String> = check_distinct(labels)?;
    let rows = features.len();
    let width = features.first().map(Vec::len).unwrap_or(0);
    let mut mean = vec![0.0f64; width];
    for row in features {
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += f64::from(x) / rows as f64;
        }
    }
    let mut spread = vec![0.0f64; width];
    for row in features {
        for ((s, &x), m) in spread.iter_mut().zip(row).zip(&mean) {
            *s += (f64::from(x) - m).powi(2) / rows as f64;
        }
    }
    // A feature that never varies gets scale 1: it carries nothing, and must not blow up.
    let scale: Vec<f64> = spread.iter().map(|v| if v.sqrt() > 1e-6 { v.sqrt() } else { 1.0 }).collect();
    let records = Array2::from_shape_fn((rows, width), |(i, j)| (f64::from(features[i][j]) - mean[j]) / scale[j]);
    let targets: Array1<usize> =
        labels.iter().map(|l| names.iter().position(|n| n == l).unwrap_or(0)).collect::<Vec<_>>().into();
    let dataset = Dataset::new(records, targets);
    let fitted = MultiLogisticRegression::default()
        .alpha(options.alpha)
        .max_iterations(options.max_iterations)
        .fit(&dataset)
        .map_err(|e| TrainError::Fit(e.to_string()))?;
    // params: width × classes (linfa's class order, sorted: the same as `names`).
    let params = fitted.params();
    let intercept = fitted.intercept();
    let mut weights = vec![vec![0.0f32; width]; names.len()];
    let mut bias = vec![0.0f32; names.len()];
    for (column, &class) in fitted.classes().iter().enumerate() {
        let mut b = intercept[column];
        for j in 0..width {
            let w = params[[j, column]] / scale[j];
            weights[class][j] = w as f32;
            b -= w * mean[j];
        }
        bias[class] = b as f32;
    }
    Ok(Head { labels: names, weights, bias })
}

/// The sorted distinct labels; at least two.
fn check_distinct(labels: &[String]) -> Result<Vec<String>, TrainError> {
    let mut names: Vec<String> = labels.to_vec();
    names.sort();
    names.dedup();
    match names.len() {
        0 => Err(TrainError::Empty),
        1 => Err(TrainError::OneClass { label: names.remove(0), count: labels.len() }),
        _ => Ok(names),
    }
}

/// One class's held-out figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassFigures {
    pub label: String,
    pub held_out: usize,
    pub precision: f64,
    pub recall: f64,
}

/// Held-out results: `confusion[truth][predicted]`, the last column for answers outside the labels
/// (a mapping's "unknown").
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub labels: Vec<String>,
    pub confusion: Vec<Vec<usize>>,
    pub classes: Vec<ClassFigures>,
    pub accuracy: f64,
}

/// Scores predictions against the truth; a prediction of `None` is an answer outside `labels`.
pub fn evaluate(labels: &[String], truth: &[usize], predicted: &[Option<usize>]) -> Evaluation {
    let k = labels.len();
    let mut confusion = vec![vec![0usize; k + 1]; k];
    for (&t, p) in truth.iter().zip(predicted) {
        confusion[t][p.unwrap_or(k)] += 1;
    }
    let classes = (0..k)
        .map(|c| {
            let held_out: usize = confusion[c].iter().sum();
            let predicted_as: usize = (0..k).map(|t| confusion[t][c]).sum();
            let right = confusion[c][c];
            ClassFigures {
                label: labels[c].clone(),
                held_out,
                precision: if predicted_as == 0 { 0.0 } else { right as f64 / predicted_as as f64 },
                recall: if held_out == 0 { 0.0 } else { right as f64 / held_out as f64 },
            }
        })
        .collect();
    let right: usize = (0..k).map(|c| confusion[c][c]).sum();
    let accuracy = if truth.is_empty() { 0.0 } else { right as f64 / truth.len() as f64 };
    Evaluation { labels: labels.to_vec(), confusion, classes, accuracy }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(spec: &[(&str, usize)]) -> Vec<String> {
        spec.iter().flat_map(|(l, n)| std::iter::repeat_n(l.to_string(), *n)).collect()
    }

    #[test]
    fn one_class_and_short_classes_are_refused_saying_how_many_more() {
        let err = check_counts(&labels(&[("kitchen", 20)])).unwrap_err().to_string();
        assert!(err.contains("one class") && err.contains("kitchen"), "{err}");
        let err = check_counts(&labels(&[("kitchen", 20), ("residual", 5), ("hazardous", 1)])).unwrap_err();
        let TrainError::TooFew { short } = &err else { panic!("{err}") };
        assert_eq!(
            short,
            &[
                Shortfall { label: "hazardous".into(), have: 1, more: 7 },
                Shortfall { label: "residual".into(), have: 5, more: 3 }
            ]
        );
        let text = err.to_string();
        assert!(text.contains("\"residual\" has 5, needs 3 more") && text.contains("at least 8"), "{text}");
        assert_eq!(check_counts(&labels(&[("a", 8), ("b", 9)])).unwrap()["b"], 9);
    }

    #[test]
    fn the_split_holds_out_a_share_of_every_class_the_same_way_each_time() {
        let all = labels(&[("a", 8), ("b", 12), ("c", 9)]);
        let (train, held) = stratified_split(&all, 0.25, 7);
        assert_eq!(train.len() + held.len(), all.len());
        let held_of = |l: &str| held.iter().filter(|&&i| all[i] == l).count();
        assert_eq!((held_of("a"), held_of("b"), held_of("c")), (2, 3, 2));
        assert!(train.iter().all(|i| !held.contains(i)));
        assert_eq!(stratified_split(&all, 0.25, 7), (train, held.clone()));
        assert_ne!(stratified_split(&all, 0.25, 8).1, held, "another seed, another split");
    }

    /// Two clouds of points in 3-d that differ in one feature (with a large offset and scale, so
    /// the folding of the standardisation into the weights is exercised): the head separates them.
    #[test]
    fn the_fitted_head_works_on_raw_features_and_separates_two_clouds() {
        let mut random = SplitMix(1);
        let mut noise = || (random.next() % 1000) as f32 / 1000.0 - 0.5;
        let mut features = Vec::new();
        let mut names = Vec::new();
        for i in 0..40 {
            let class = i % 2;
            features.push(vec![100.0 + noise(), 50.0 + 20.0 * class as f32 + 8.0 * noise(), noise()]);
            names.push(if class == 0 { "closed".to_string() } else { "open".to_string() });
        }
        let head = fit(&features, &names, TrainOptions::default()).unwrap();
        assert_eq!(head.labels, ["closed", "open"]);
        let right = features.iter().zip(&names).filter(|(f, l)| head.labels[head.predict(f)] == **l).count();
        assert_eq!(right, 40);
        assert_eq!(head.labels[head.predict(&[100.0, 48.0, 0.0])], "closed");
        assert_eq!(head.labels[head.predict(&[100.0, 72.0, 0.0])], "open");
    }

    #[test]
    fn figures_count_unknown_answers_as_misses() {
        let names = vec!["kitchen".to_string(), "residual".to_string()];
        let truth = [0, 0, 0, 1, 1];
        let predicted = [Some(0), Some(1), None, Some(1), Some(1)];
        let e = evaluate(&names, &truth, &predicted);
        assert_eq!(e.confusion, vec![vec![1, 1, 1], vec![0, 2, 0]]);
        assert!((e.accuracy - 0.6).abs() < 1e-12);
        assert_eq!(
            e.classes[0],
            ClassFigures { label: "kitchen".into(), held_out: 3, precision: 1.0, recall: 1.0 / 3.0 }
        );
        assert!((e.classes[1].precision - 2.0 / 3.0).abs() < 1e-12 && e.classes[1].recall == 1.0);
    }
}
