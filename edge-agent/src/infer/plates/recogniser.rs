//! The text recogniser (PP-OCRv4 mobile): one line of text, 48 pixels high, BGR, (x/255 − 0.5)/0.5,
//! zero-padded on the right; out come per-frame class probabilities, decoded in `ctc`. Its
//! dictionary is the model file's own `character` metadata.

use std::path::Path;

use image::RgbImage;

use crate::infer::config::InferenceConfig;
use crate::infer::preprocess::taps;

use super::ctc::{self, Dictionary, Frames, LineReading};
use super::model::PlateModel;
use super::syntax::Line;
use super::PlateError;

pub const HEIGHT: usize = 48;
/// The input's width. PaddleOCR pads a line to at least 320; a plate (about 3:1) is about 150 pixels
/// wide at this height, and in a Python prototype of this reader on the dev half of ../shared/lpr it
/// read as well or better padded to 256 (crops 324 of 331 right against 320's 320, scenes with the
/// 640 detector 194 of 200 against 193) in 0.75 of the time; narrower, it read far worse (crops 304
/// of 331 unpadded). One width also keeps tract's plan fixed. Wider lines are squeezed into it.
pub const WIDTH: usize = 256;

pub struct Recogniser {
    pub model: PlateModel,
    dictionary: Dictionary,
    input: Vec<f32>,
}

impl Recogniser {
    pub fn load(path: &Path, inference: &InferenceConfig) -> Result<Self, PlateError> {
        let (model, metadata) = PlateModel::load(path, &[1, 3, HEIGHT, WIDTH], inference, Some("character"))?;
        let dictionary = Dictionary::from_metadata(metadata.as_deref().unwrap_or_default());
        if dictionary.classes() < 3 {
            return Err(PlateError::model(path, "has an empty `character` dictionary in its metadata"));
        }
        Ok(Self { model, dictionary, input: vec![0.0; 3 * HEIGHT * WIDTH] })
    }

    /// Reads `line` (a picture of one text line) as the part `kind` of a plate.
    pub fn read(&mut self, line: &RgbImage, kind: Line, min_char_probability: f32) -> Result<LineReading, PlateError> {
        fill_input(&mut self.input, line);
        let classes = self.dictionary.classes();
        let output = self.model.run(&self.input, classes)?;
        Ok(ctc::read_line(Frames { data: &output.data, classes }, &self.dictionary, kind, min_char_probability))
    }
}

/// The recogniser's input for `line`: resized to 48 pixels high keeping its aspect ratio (bilinear,
/// as OpenCV's INTER_LINEAR), at most [`WIDTH`] wide, the rest zero.
pub fn fill_input(input: &mut [f32], line: &RgbImage) {
    input.fill(0.0);
    let (w, h) = line.dimensions();
    if w == 0 || h == 0 {
        return;
    }
    let width = ((HEIGHT as f64 * w as f64 / h as f64).ceil() as usize).clamp(1, WIDTH);
    let (columns, rows) = (taps(w, width as u32), taps(h, HEIGHT as u32));
    let pixels = line.as_raw();
    let stride = w as usize * 3;
    let plane = HEIGHT * WIDTH;
    for (y, row) in rows.iter().enumerate() {
        for (x, column) in columns.iter().enumerate() {
            let at = |yy: u32, xx: u32, c: usize| pixels[yy as usize * stride + xx as usize * 3 + c] as f32;
            for (plane_index, c) in [2usize, 1, 0].into_iter().enumerate() {
                let top = at(row.low, column.low, c)
                    + (at(row.low, column.high, c) - at(row.low, column.low, c)) * column.weight;
                let bottom = at(row.high, column.low, c)
                    + (at(row.high, column.high, c) - at(row.high, column.low, c)) * column.weight;
                let p = top + (bottom - top) * row.weight;
                input[plane_index * plane + y * WIDTH + x] = p / 127.5 - 1.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_scaled_to_48_high_in_bgr_and_padded_with_zeros() {
        // 24×12, pure red: 48×96 after scaling, the rest of the 256 columns zero.
        let line = RgbImage::from_pixel(24, 12, image::Rgb([255, 0, 0]));
        let mut input = vec![7.0; 3 * HEIGHT * WIDTH];
        fill_input(&mut input, &line);
        let plane = HEIGHT * WIDTH;
        assert_eq!(input[0], -1.0, "blue plane first");
        assert_eq!(input[2 * plane], 1.0, "red plane last");
        assert_eq!(input[2 * plane + 95], 1.0);
        assert_eq!(input[2 * plane + 96], 0.0, "padding");
        assert_eq!(input[2 * plane + (HEIGHT - 1) * WIDTH + 95], 1.0);
    }

    #[test]
    fn a_very_wide_line_is_squeezed_into_the_width() {
        let line = RgbImage::from_pixel(1000, 10, image::Rgb([0, 0, 255]));
        let mut input = vec![0.0; 3 * HEIGHT * WIDTH];
        fill_input(&mut input, &line);
        assert_eq!(input[WIDTH - 1], 1.0, "content up to the last column");
    }
}
