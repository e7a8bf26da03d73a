//! Detector post-processing: decoders for NanoDet and the Ultralytics YOLOv5 and YOLOv8/11 export
//! layouts (boxes in model-input pixels), and class-aware non-maximum suppression.

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
            // Nearly every cell of a frame scores below the threshold: passed over on a quick look.
            if highest(row_scores) < score_threshold {
                continue;
            }
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

/// The highest of `scores`, NaN never counting: taken lane by lane so that the compiler uses SIMD
/// (a detector's 3,500 cells × 80 classes a frame).
fn highest(scores: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = scores.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &score) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(score);
        }
    }
    lanes.iter().chain(rest).fold(f32::NEG_INFINITY, |high, &score| high.max(score))
}

/// The single `[1, a, b]` output of a YOLO export, or an error naming what was found.
fn single_yolo_output<'a>(outputs: &'a [Output], layout: &str) -> Result<&'a Output, InferError> {
    match outputs {
        [only] if only.shape.len() == 3 && only.shape[0] == 1 => Ok(only),
        _ => {
            let shapes: Vec<_> = outputs.iter().map(|o| format!("{} {:?}", o.name, o.shape)).collect();
            Err(InferError::Output {
                message: format!(
                    "{layout} expects one output [1, rows, columns]; the model gave {}",
                    shapes.join(", ")
                ),
            })
        }
    }
}

fn centre_box(cx: f32, cy: f32, w: f32, h: f32) -> BoundingBox {
    BoundingBox { x1: cx - w / 2.0, y1: cy - h / 2.0, x2: cx + w / 2.0, y2: cy + h / 2.0 }
}

/// Decodes an Ultralytics YOLOv5 export: `[1, N, 5 + C]`, each row (cx, cy, w, h, objectness,
/// C class probabilities), boxes in model-input pixels. Score = objectness × best class, as
/// Ultralytics' own `non_max_suppression` does.
pub fn decode_yolov5(
    outputs: &[Output],
    labels: &[String],
    score_threshold: f32,
) -> Result<Vec<Detection>, InferError> {
    let output = single_yolo_output(outputs, "YOLOv5")?;
    let columns = 5 + labels.len();
    if output.shape[2] != columns {
        return Err(InferError::Output {
            message: format!(
                "YOLOv5 output {:?} has shape {:?}; expected [1, N, {columns}] (5 + {} classes in the labels file)",
                output.name,
                output.shape,
                labels.len()
            ),
        });
    }
    let mut detections = Vec::new();
    for row in output.data.chunks_exact(columns) {
        let objectness = row[4];
        // Scores are objectness × class probability ≤ objectness: most rows stop here.
        if objectness < score_threshold {
            continue;
        }
        let (class, best) = best_class(&row[5..]);
        let score = objectness * best;
        if score < score_threshold {
            continue;
        }
        detections.push(Detection {
            class_id: class,
            label: labels[class].clone(),
            score,
            bbox: centre_box(row[0], row[1], row[2], row[3]),
        });
    }
    Ok(detections)
}

/// Decodes an Ultralytics YOLOv8 / YOLO11 export: `[1, 4 + C, N]`, i.e. transposed, one row per
/// value (cx, cy, w, h, then C class probabilities, no objectness), boxes in model-input pixels.
/// A `[1, N, 4 + C]` output (some export scripts transpose it back) is read too.
pub fn decode_yolov8(
    outputs: &[Output],
    labels: &[String],
    score_threshold: f32,
) -> Result<Vec<Detection>, InferError> {
    let output = single_yolo_output(outputs, "YOLOv8")?;
    let values = 4 + labels.len();
    let (transposed, anchors) = match (output.shape[1], output.shape[2]) {
        (v, n) if v == values => (true, n),
        (n, v) if v == values => (false, n),
        _ => {
            return Err(InferError::Output {
                message: format!(
                    "YOLOv8 output {:?} has shape {:?}; expected [1, {values}, N] (4 + {} classes in the labels file)",
                    output.name,
                    output.shape,
                    labels.len()
                ),
            })
        }
    };
    // Element `value` of anchor `n`, whichever way round the tensor is.
    let at = |value: usize, n: usize| {
        if transposed {
            output.data[value * anchors + n]
        } else {
            output.data[n * values + value]
        }
    };
    // Best class per anchor, walking class rows in memory order rather than striding across them.
    let mut best = vec![(0usize, f32::NEG_INFINITY); anchors];
    for class in 0..labels.len() {
        for (n, slot) in best.iter_mut().enumerate() {
            let score = at(4 + class, n);
            if score > slot.1 {
                *slot = (class, score);
            }
        }
    }
    let mut detections = Vec::new();
    for (n, &(class, score)) in best.iter().enumerate() {
        if score < score_threshold {
            continue;
        }
        detections.push(Detection {
            class_id: class,
            label: labels[class].clone(),
            score,
            bbox: centre_box(at(0, n), at(1, n), at(2, n), at(3, n)),
        });
    }
    Ok(detections)
}

fn best_class(scores: &[f32]) -> (usize, f32) {
    scores
        .iter()
        .copied()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, s)| if s > best.1 { (i, s) } else { best })
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
    fn the_quick_look_at_a_cell_finds_its_highest_score_wherever_it_lies_and_never_a_nan() {
        for len in [1, 7, 8, 9, 80, 81] {
            for at in 0..len {
                let mut scores: Vec<f32> = (0..len).map(|i| -(i as f32) / 100.0).collect();
                scores[at] = 0.75;
                assert_eq!(highest(&scores), 0.75, "{len} classes, the highest at {at}");
            }
        }
        assert_eq!(highest(&[f32::NAN, 0.2, f32::NAN, 0.1]), 0.2);
        assert_eq!(highest(&[f32::NAN; 9]), f32::NEG_INFINITY, "NaN scores never pass a threshold");
        assert_eq!(highest(&[]), f32::NEG_INFINITY);
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

    fn labels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    /// A YOLOv5 row: box centre and size in model pixels, objectness, class probabilities.
    fn yolov5_row(cx: f32, cy: f32, w: f32, h: f32, objectness: f32, classes: [f32; 3]) -> Vec<f32> {
        let mut row = vec![cx, cy, w, h, objectness];
        row.extend(classes);
        row
    }

    #[test]
    fn yolov5_scores_are_objectness_times_class_and_boxes_are_corner_form() {
        let rows = [
            yolov5_row(100.0, 100.0, 40.0, 20.0, 0.9, [0.1, 0.8, 0.05]),
            // Same object, a little lower: NMS drops it.
            yolov5_row(102.0, 101.0, 40.0, 20.0, 0.8, [0.1, 0.7, 0.05]),
            // Below the threshold on objectness alone.
            yolov5_row(300.0, 300.0, 10.0, 10.0, 0.2, [0.0, 0.0, 1.0]),
            // Confident objectness, weak class: 0.9 × 0.2 = 0.18 < 0.25.
            yolov5_row(400.0, 50.0, 10.0, 10.0, 0.9, [0.2, 0.1, 0.1]),
            // Another class in the same place: class-aware NMS keeps it.
            yolov5_row(100.0, 100.0, 40.0, 20.0, 0.95, [0.9, 0.0, 0.0]),
        ];
        let output = Output { name: "output0".into(), shape: vec![1, rows.len(), 8], data: rows.concat() };
        let raw = decode_yolov5(&[output], &labels(3), 0.25).unwrap();
        assert_eq!(raw.len(), 3, "{raw:?}");
        let kept = non_maximum_suppression(raw, 0.45, 100);
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert_eq!(kept[0].label, "c0");
        assert!((kept[0].score - 0.855).abs() < 1e-6, "{kept:?}");
        assert_eq!(kept[1].label, "c1");
        assert!((kept[1].score - 0.72).abs() < 1e-6, "{kept:?}");
        assert_eq!(kept[1].bbox, BoundingBox { x1: 80.0, y1: 90.0, x2: 120.0, y2: 110.0 });
    }

    /// YOLOv8 anchors (cx, cy, w, h, classes...) laid out as the export does: one row per value.
    fn yolov8_transposed(anchors: &[[f32; 7]]) -> Output {
        let n = anchors.len();
        let mut data = vec![0.0; 7 * n];
        for (i, anchor) in anchors.iter().enumerate() {
            for (value, &v) in anchor.iter().enumerate() {
                data[value * n + i] = v;
            }
        }
        Output { name: "output0".into(), shape: vec![1, 7, n], data }
    }

    const YOLOV8_ANCHORS: [[f32; 7]; 5] = [
        [320.0, 240.0, 100.0, 50.0, 0.05, 0.9, 0.1],
        [322.0, 241.0, 100.0, 50.0, 0.05, 0.6, 0.1],
        [50.0, 60.0, 20.0, 40.0, 0.3, 0.0, 0.0],
        [500.0, 500.0, 30.0, 30.0, 0.1, 0.1, 0.2],
        [320.0, 240.0, 100.0, 50.0, 0.7, 0.0, 0.0],
    ];

    #[test]
    fn yolov8_reads_the_transposed_layout() {
        let raw = decode_yolov8(&[yolov8_transposed(&YOLOV8_ANCHORS)], &labels(3), 0.25).unwrap();
        assert_eq!(raw.len(), 4, "anchor 3's best score 0.2 is below 0.25: {raw:?}");
        let kept = non_maximum_suppression(raw, 0.7, 100);
        let summary: Vec<(&str, f32)> = kept.iter().map(|d| (d.label.as_str(), d.score)).collect();
        assert_eq!(summary, vec![("c1", 0.9), ("c0", 0.7), ("c0", 0.3)]);
        assert_eq!(kept[0].bbox, BoundingBox { x1: 270.0, y1: 215.0, x2: 370.0, y2: 265.0 });
        assert_eq!(kept[2].bbox, BoundingBox { x1: 40.0, y1: 40.0, x2: 60.0, y2: 80.0 });
    }

    #[test]
    fn yolov8_reads_an_untransposed_output_the_same() {
        let rows = Output { name: "output0".into(), shape: vec![1, 5, 7], data: YOLOV8_ANCHORS.concat() };
        let from_rows = decode_yolov8(&[rows], &labels(3), 0.25).unwrap();
        let from_columns = decode_yolov8(&[yolov8_transposed(&YOLOV8_ANCHORS)], &labels(3), 0.25).unwrap();
        assert_eq!(from_rows, from_columns);
    }

    #[test]
    fn yolo_outputs_that_do_not_fit_the_labels_say_what_was_expected() {
        let output = Output { name: "output0".into(), shape: vec![1, 84, 10], data: vec![0.0; 840] };
        let err = decode_yolov8(&[output.clone()], &labels(3), 0.25).unwrap_err().to_string();
        assert!(err.contains("[1, 84, 10]") && err.contains("[1, 7, N]"), "{err}");
        let err = decode_yolov5(&[output], &labels(3), 0.25).unwrap_err().to_string();
        assert!(err.contains("[1, N, 8]"), "{err}");
        let two = vec![
            Output { name: "a".into(), shape: vec![1, 7, 1], data: vec![0.0; 7] },
            Output { name: "b".into(), shape: vec![1, 7, 1], data: vec![0.0; 7] },
        ];
        let err = decode_yolov8(&two, &labels(3), 0.25).unwrap_err().to_string();
        assert!(err.contains("one output"), "{err}");
    }

    #[test]
    fn nanodet_with_the_wrong_label_count_says_so() {
        let outputs = vec![Output { name: "scores".into(), shape: vec![1, 4, 80], data: vec![0.0; 320] }];
        let err = decode_nanodet(&outputs, (64, 64), 11, &["x".to_string()], 0.3).unwrap_err();
        assert!(err.to_string().contains("1 classes"), "{err}");
    }
}
