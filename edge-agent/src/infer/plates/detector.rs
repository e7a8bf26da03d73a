//! The plate detector (HyperLPR's y5fu, YOLOv5-face style): the picture letterboxed into S×S, RGB
//! /255; per anchor cx, cy, w, h, objectness, four corners and single/double-row scores. Kept: rows
//! over the objectness threshold, scored objectness × the better row score, class-agnostic NMS.

use std::path::Path;

use image::RgbImage;

use crate::infer::config::InferenceConfig;
use crate::infer::detect::iou;
use crate::infer::manifest::{ColourOrder, ResizeMode};
use crate::infer::preprocess::Preprocessor;
use crate::infer::BoundingBox;

use super::model::{unit_scaled_square_input, PlateModel};
use super::warp::Corners;
use super::PlateError;

/// Values per anchor in the detector's output.
const ROW: usize = 15;

/// One plate found in a picture, in its pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub bbox: BoundingBox,
    /// Top left, top right, bottom right, bottom left.
    pub corners: Corners,
    /// Objectness × the row score.
    pub score: f32,
    pub double_row: bool,
}

pub struct Detector {
    pub model: PlateModel,
    preprocessor: Preprocessor,
    size: usize,
}

impl Detector {
    pub fn load(path: &Path, size: usize, inference: &InferenceConfig) -> Result<Self, PlateError> {
        let shape = vec![1, 3, size, size];
        let (model, _) = PlateModel::load(path, &shape, inference, None)?;
        let preprocessor = unit_scaled_square_input("input", size, ColourOrder::Rgb, ResizeMode::Letterbox);
        Ok(Self { model, preprocessor, size })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// The plates in `picture`, best first, at most `max_plates`.
    pub fn detect(
        &mut self,
        picture: &RgbImage,
        objectness: f32,
        nms_iou: f32,
        max_plates: usize,
    ) -> Result<Vec<Found>, PlateError> {
        let (tensor, transform) = self.preprocessor.run(picture);
        let output = self.model.run(tensor, ROW)?;
        let mut found: Vec<Found> = output
            .data
            .chunks_exact(ROW)
            .filter(|r| r[4] > objectness && r.iter().all(|v| v.is_finite()))
            .map(|r| {
                let (single, double) = (r[4] * r[13], r[4] * r[14]);
                let to_frame = |x: f32, y: f32| {
                    [(x - transform.pad_x) / transform.scale_x, (y - transform.pad_y) / transform.scale_y]
                };
                let model_box = BoundingBox {
                    x1: r[0] - r[2] / 2.0,
                    y1: r[1] - r[3] / 2.0,
                    x2: r[0] + r[2] / 2.0,
                    y2: r[1] + r[3] / 2.0,
                };
                Found {
                    bbox: model_box,
                    corners: [
                        to_frame(r[5], r[6]),
                        to_frame(r[7], r[8]),
                        to_frame(r[9], r[10]),
                        to_frame(r[11], r[12]),
                    ],
                    score: single.max(double),
                    double_row: double > single,
                }
            })
            .collect();
        // NMS in model pixels (the scale is the same on both axes), then boxes into the picture.
        found.sort_by(|a, b| b.score.total_cmp(&a.score));
        let mut kept: Vec<Found> = Vec::new();
        for candidate in found {
            if kept.len() == max_plates {
                break;
            }
            if kept.iter().all(|k| iou(&k.bbox, &candidate.bbox) <= nms_iou) {
                kept.push(candidate);
            }
        }
        for plate in &mut kept {
            plate.bbox = transform.to_frame(plate.bbox);
        }
        Ok(kept)
    }
}
