//! Draws what the models found onto a copy of the frame, and encodes it as JPEG for the page.

use image::{Rgb, RgbImage};

use crate::infer::{BoundingBox, Findings, ModelResult};

const EVENT_COLOUR: Rgb<u8> = Rgb([255, 48, 48]);
const DETECTION_COLOUR: Rgb<u8> = Rgb([255, 200, 0]);

/// Boxes of every detection (yellow) and of those that became events (red, thicker).
pub fn annotate(frame: &RgbImage, results: &[ModelResult], event_boxes: &[BoundingBox]) -> RgbImage {
    let mut canvas = frame.clone();
    let thickness = (frame.width().max(frame.height()) / 300).max(2);
    for result in results {
        if let Findings::Detect { detections } = &result.findings {
            for d in detections {
                draw_rectangle(&mut canvas, d.bbox, DETECTION_COLOUR, thickness);
            }
        }
    }
    for b in event_boxes {
        draw_rectangle(&mut canvas, *b, EVENT_COLOUR, thickness * 2);
    }
    canvas
}

/// Outline of `b`, `thickness` pixels wide inside the box, clipped to the image.
pub fn draw_rectangle(image: &mut RgbImage, b: BoundingBox, colour: Rgb<u8>, thickness: u32) {
    let (w, h) = image.dimensions();
    if w == 0 || h == 0 {
        return;
    }
    let clamp_x = |v: f32| (v.round().max(0.0) as u32).min(w - 1);
    let clamp_y = |v: f32| (v.round().max(0.0) as u32).min(h - 1);
    let (x1, y1, x2, y2) = (clamp_x(b.x1), clamp_y(b.y1), clamp_x(b.x2), clamp_y(b.y2));
    if x2 < x1 || y2 < y1 {
        return;
    }
    for t in 0..thickness {
        for x in x1..=x2 {
            for y in [y1.saturating_add(t).min(y2), y2.saturating_sub(t).max(y1)] {
                image.put_pixel(x, y, colour);
            }
        }
        for y in y1..=y2 {
            for x in [x1.saturating_add(t).min(x2), x2.saturating_sub(t).max(x1)] {
                image.put_pixel(x, y, colour);
            }
        }
    }
}

pub fn encode_jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = Vec::with_capacity(image.len() / 8);
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality);
    image.write_with_encoder(encoder)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rectangle_outlines_the_box_and_leaves_the_inside() {
        let mut image = RgbImage::new(20, 20);
        draw_rectangle(&mut image, BoundingBox { x1: 2.0, y1: 3.0, x2: 10.0, y2: 12.0 }, EVENT_COLOUR, 1);
        assert_eq!(*image.get_pixel(2, 3), EVENT_COLOUR);
        assert_eq!(*image.get_pixel(10, 12), EVENT_COLOUR);
        assert_eq!(*image.get_pixel(6, 3), EVENT_COLOUR);
        assert_eq!(*image.get_pixel(6, 7), Rgb([0, 0, 0]), "inside untouched");
        assert_eq!(*image.get_pixel(15, 15), Rgb([0, 0, 0]), "outside untouched");
    }

    #[test]
    fn boxes_past_the_edge_are_clipped_not_a_panic() {
        let mut image = RgbImage::new(10, 10);
        draw_rectangle(&mut image, BoundingBox { x1: -5.0, y1: -5.0, x2: 50.0, y2: 50.0 }, EVENT_COLOUR, 3);
        assert_eq!(*image.get_pixel(0, 0), EVENT_COLOUR);
        assert_eq!(*image.get_pixel(9, 9), EVENT_COLOUR);
    }

    #[test]
    fn jpeg_round_trips() {
        let image = RgbImage::from_pixel(32, 16, Rgb([10, 200, 30]));
        let bytes = encode_jpeg(&image, 85).unwrap();
        let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(back.dimensions(), (32, 16));
    }
}
