//! The plate-colour classifier (HyperLPR's litemodel_cls): the straightened plate stretched to
//! 96×96, BGR /255; three scores, blue, green, yellow. Police plates are white, which it does not
//! know: the text tells those.

use std::path::Path;

use image::RgbImage;
use serde::Serialize;

use crate::infer::config::InferenceConfig;
use crate::infer::manifest::{ColourOrder, ResizeMode};
use crate::infer::preprocess::Preprocessor;

use super::model::{unit_scaled_square_input, PlateModel};
use super::PlateError;

const SIZE: usize = 96;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlateColour {
    Blue,
    Green,
    Yellow,
    White,
}

impl PlateColour {
    pub fn name(self) -> &'static str {
        match self {
            PlateColour::Blue => "blue",
            PlateColour::Green => "green",
            PlateColour::Yellow => "yellow",
            PlateColour::White => "white",
        }
    }
}

pub struct ColourClassifier {
    pub model: PlateModel,
    preprocessor: Preprocessor,
}

impl ColourClassifier {
    pub fn load(path: &Path, inference: &InferenceConfig) -> Result<Self, PlateError> {
        let shape = vec![1, 3, SIZE, SIZE];
        let (model, _) = PlateModel::load(path, &shape, inference, None)?;
        let preprocessor = unit_scaled_square_input("data", SIZE, ColourOrder::Bgr, ResizeMode::Stretch);
        Ok(Self { model, preprocessor })
    }

    /// The colour of a straightened plate.
    pub fn classify(&mut self, plate: &RgbImage) -> Result<PlateColour, PlateError> {
        let (tensor, _) = self.preprocessor.run(plate);
        let output = self.model.run(tensor, 3)?;
        let best =
            output.data[..3].iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
        Ok([PlateColour::Blue, PlateColour::Green, PlateColour::Yellow][best.0])
    }
}
