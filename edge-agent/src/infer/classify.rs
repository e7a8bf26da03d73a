//! Classifier post-processing: softmax over the logits, then the k most probable labels.

use super::{Classification, InferError, Output};

pub fn top_k(
    outputs: &[Output],
    labels: &[String],
    k: usize,
    score_threshold: f32,
) -> Result<Vec<Classification>, InferError> {
    let logits = outputs.first().ok_or_else(|| InferError::Output { message: "classifier gave no output".into() })?;
    if logits.data.len() != labels.len() {
        return Err(InferError::Output {
            message: format!(
                "classifier output {:?} has {} values (shape {:?}) but the labels file has {} labels",
                logits.name,
                logits.data.len(),
                logits.shape,
                labels.len()
            ),
        });
    }
    let probabilities = softmax(&logits.data);
    let mut ranked: Vec<(usize, f32)> = probabilities.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(ranked
        .into_iter()
        .take(k)
        .filter(|&(_, p)| p >= score_threshold)
        .map(|(class_id, score)| Classification { class_id, label: labels[class_id].clone(), score })
        .collect())
}

pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let p = softmax(&[1.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[2] > p[1] && p[1] > p[0]);
        assert!((p[2] - 0.665_240_9).abs() < 1e-6);
    }

    #[test]
    fn softmax_is_stable_for_large_logits() {
        let p = softmax(&[1000.0, 1000.0]);
        assert_eq!(p, vec![0.5, 0.5]);
    }

    #[test]
    fn top_k_ranks_labels() {
        let labels: Vec<String> = ["cat", "dog", "cup"].map(String::from).to_vec();
        let outputs = vec![Output { name: "logits".into(), shape: vec![1, 3], data: vec![0.0, 5.0, 1.0] }];
        let top = top_k(&outputs, &labels, 2, 0.0).unwrap();
        assert_eq!(top.iter().map(|c| c.label.as_str()).collect::<Vec<_>>(), ["dog", "cup"]);
    }

    #[test]
    fn label_count_mismatch_is_an_error() {
        let outputs = vec![Output { name: "logits".into(), shape: vec![1, 2], data: vec![0.0, 1.0] }];
        let err = top_k(&outputs, &["a".to_string()], 1, 0.0).unwrap_err();
        assert!(err.to_string().contains("1 labels"), "{err}");
    }
}
