//! Detector post-processing: NanoDet output decoding and class-aware non-maximum suppression.

use super::{BoundingBox, Detection, InferError, Output};

/// Decodes NanoDet's per-stride outputs into boxes in model-input pixels (before NMS).
///
/// For each stride the model gives sigmoid class scores `[1, N, C]` and side distributions
/// `[1, N, 4 * bins]`, N = grid². Softmax over each side's bins, expected bin × stride = distance
/// from the cell point (col × stride, row × stride) to the left, top, right and bottom edges.
pub fn decode_nanodet(
    outputs: &[Output],
    input_size: (usize, usize),
    bins: usize,
    labels: &[String],
    score_threshold: f32,
) -> Result<Vec<Detection>, InferError> {
    let (input_h, input_w) = input_size;
    let num_classes = labels.len();
    let mut detections = Vec::new();
    let mut strides_found = 0;
    for scores in outputs.iter().filter(|o| o.last_dim() == num_classes) {
        let anchors = scores.rows();
        let boxes = outputs.iter().find(|o| o.last_dim() == 4 * bins && o.rows() == anchors).ok_or_else(|| {
            InferError::Output {
                message: format!(
                    "NanoDet output {:?} (shape {:?}) has no matching box output of shape [1, {anchors}, {}]",
                    scores.name,
                    scores.shape,
                    4 * bins
                ),
            }
        })?;
        let grid_w = (anchors as f64 * input_w as f64 / input_h as f64).sqrt().round() as usize;
        let grid_h = anchors / grid_w.max(1);
        if grid_w == 0 || grid_w * grid_h != anchors {
            return Err(InferError::Output {
                message: format!(
                    "NanoDet output {:?} has {anchors} cells, not a grid over {input_w}×{input_h}",
                    scores.name
                ),
            });
        }
        let stride = input_w as f32 / grid_w as f32;
        strides_found += 1;
        for cell in 0..anchors {
            let row_scores = &scores.data[cell * num_classes..(cell + 1) * num_classes];
            let (class, &score) = row_scores.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap_or((0, &0.0));
            if score < score_threshold {
                continue;
            }
            let sides = &boxes.data[cell * 4 * bins..(cell + 1) * 4 * bins];
            let distance: [f32; 4] =
                std::array::from_fn(|side| expected_bin(&sides[side * bins..(side + 1) * bins]) * stride);
            let cx = (cell % grid_w) as f32 * stride;
            let cy = (cell / grid_w) as f32 * stride;
            detections.push(Detection {
                class_id: class,
                label: labels[class].clone(),
                score,
                bbox: BoundingBox {
                    x1: cx - distance[0],
                    y1: cy - distance[1],
                    x2: cx + distance[2],
                    y2: cy + distance[3],
                },
            });
        }
    }
    if strides_found == 0 {
        let shapes: Vec<_> = outputs.iter().map(|o| format!("{} {:?}", o.name, o.shape)).collect();
        return Err(InferError::Output {
            message: format!(
                "no NanoDet score output with {num_classes} classes (the labels file's count) among {}",
                shapes.join(", ")
            ),
        });
    }
    Ok(detections)
}

/// Softmax over the bins, then the expected bin index.
fn expected_bin(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    let mut weighted = 0.0;
    for (i, &l) in logits.iter().enumerate() {
        let e = (l - max).exp();
        sum += e;
        weighted += e * i as f32;
    }
    weighted / sum
}

pub fn iou(a: &BoundingBox, b: &BoundingBox) -> f32 {
    let ix = (a.x2.min(b.x2) - a.x1.max(b.x1)).max(0.0);
    let iy = (a.y2.min(b.y2) - a.y1.max(b.y1)).max(0.0);
    let intersection = ix * iy;
    let union = a.area() + b.area() - intersection;
    if union <= 0.0 {
        0.0
    } else {
        intersection / union
    }
}

/// Class-aware greedy NMS: highest score first; a box is dropped when it overlaps a kept box of the
/// same class by more than `iou_threshold`. Returns at most `max_detections`, best first.
pub fn non_maximum_suppression(
    mut detections: Vec<Detection>,
    iou_threshold: f32,
    max_detections: usize,
) -> Vec<Detection> {
    detections.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for candidate in detections {
        if kept.len() == max_detections {
            break;
        }
        let suppressed =
            kept.iter().any(|k| k.class_id == candidate.class_id && iou(&k.bbox, &candidate.bbox) > iou_threshold);
        if !suppressed {
            kept.push(candidate);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(class_id: usize, score: f32, x1: f32, y1: f32, x2: f32, y2: f32) -> Detection {
        Detection { class_id, label: format!("c{class_id}"), score, bbox: BoundingBox { x1, y1, x2, y2 } }
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = BoundingBox { x1: 0.0, y1: 0.0, x2: 10.0, y2: 10.0 };
        let b = BoundingBox { x1: 5.0, y1: 0.0, x2: 15.0, y2: 10.0 };
        assert!((iou(&a, &b) - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(iou(&a, &a), 1.0);
        let far = BoundingBox { x1: 20.0, y1: 20.0, x2: 30.0, y2: 30.0 };
        assert_eq!(iou(&a, &far), 0.0);
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes_of_one_class() {
        let kept = non_maximum_suppression(
            vec![
                det(0, 0.6, 0.0, 0.0, 10.0, 10.0),
                det(0, 0.9, 1.0, 1.0, 11.0, 11.0),
                det(0, 0.5, 50.0, 50.0, 60.0, 60.0),
            ],
            0.5,
            100,
        );
        let scores: Vec<f32> = kept.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.5]);
    }

    #[test]
    fn nms_is_class_aware() {
        let kept = non_maximum_suppression(
            vec![det(0, 0.9, 0.0, 0.0, 10.0, 10.0), det(1, 0.8, 0.0, 0.0, 10.0, 10.0)],
            0.5,
            100,
        );
        assert_eq!(kept.len(), 2, "a truck and a car in the same place are both kept");
    }

    #[test]
    fn nms_caps_the_count() {
        let many = (0..10).map(|i| det(0, 0.5, i as f32 * 100.0, 0.0, i as f32 * 100.0 + 10.0, 10.0)).collect();
        assert_eq!(non_maximum_suppression(many, 0.5, 3).len(), 3);
    }

    #[test]
    fn nanodet_decodes_a_hand_built_cell() {
        // One stride-32 grid of 2×2 on a 64×64 input, 2 classes, 3 bins. Cell 3 (row 1, col 1) is a
        // class-1 box whose sides are each exactly bin 1 away: distance 32 from the point (32, 32).
        let labels = vec!["a".to_string(), "b".to_string()];
        let mut scores = vec![0.0f32; 4 * 2];
        scores[3 * 2 + 1] = 0.9;
        let mut boxes = vec![0.0f32; 4 * 12];
        for side in 0..4 {
            let bins = &mut boxes[3 * 12 + side * 3..3 * 12 + side * 3 + 3];
            bins.copy_from_slice(&[-100.0, 100.0, -100.0]);
        }
        let outputs = vec![
            Output { name: "scores".into(), shape: vec![1, 4, 2], data: scores },
            Output { name: "boxes".into(), shape: vec![1, 4, 12], data: boxes },
        ];
        let found = decode_nanodet(&outputs, (64, 64), 3, &labels, 0.5).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].label, "b");
        let b = found[0].bbox;
        assert!((b.x1 - 0.0).abs() < 1e-3 && (b.y1 - 0.0).abs() < 1e-3, "{b:?}");
        assert!((b.x2 - 64.0).abs() < 1e-3 && (b.y2 - 64.0).abs() < 1e-3, "{b:?}");
    }

    #[test]
    fn nanodet_with_the_wrong_label_count_says_so() {
        let outputs = vec![Output { name: "scores".into(), shape: vec![1, 4, 80], data: vec![0.0; 320] }];
        let err = decode_nanodet(&outputs, (64, 64), 11, &["x".to_string()], 0.3).unwrap_err();
        assert!(err.to_string().contains("1 classes"), "{err}");
    }
}
