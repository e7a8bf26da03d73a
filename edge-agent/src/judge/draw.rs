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

/// Every model's findings with their labels, for `edge-agent infer --annotate`: each detection's
/// box with "label score" above it, and each classifier's best class in the top left corner.
pub fn annotate_with_labels(frame: &RgbImage, results: &[ModelResult]) -> RgbImage {
    let mut canvas = annotate(frame, results, &[]);
    let scale = (frame.width().max(frame.height()) / 400).max(1);
    let mut classifier_line = 0;
    for result in results {
        match &result.findings {
            Findings::Detect { detections } => {
                for d in detections {
                    let text = format!("{} {:.2}", d.label, d.score);
                    let above = d.bbox.y1 - (LABEL_HEIGHT * scale) as f32;
                    let y = if above >= 0.0 { above } else { d.bbox.y1 };
                    draw_label(&mut canvas, d.bbox.x1.max(0.0) as u32, y as u32, &text, DETECTION_COLOUR, scale);
                }
            }
            Findings::Classify { classes } => {
                if let Some(best) = classes.first() {
                    let text = format!("{}: {} {:.2}", result.model.name, best.label, best.score);
                    draw_label(&mut canvas, 0, classifier_line * LABEL_HEIGHT * scale, &text, DETECTION_COLOUR, scale);
                    classifier_line += 1;
                }
            }
        }
    }
    canvas
}

/// Height of one label line in unscaled pixels: an 8-pixel glyph and a 1-pixel margin each side.
const LABEL_HEIGHT: u32 = 10;

/// Writes `text` (ASCII; other characters show as '?') in black 8×8 glyphs, magnified `scale`
/// times, on a filled `background` box whose top left is (x, y); clipped to the image.
pub fn draw_label(image: &mut RgbImage, x: u32, y: u32, text: &str, background: Rgb<u8>, scale: u32) {
    let (w, h) = image.dimensions();
    let scale = scale.max(1);
    let glyph_count = text.chars().count() as u32;
    let box_w = (glyph_count * 8 + 2) * scale;
    let box_h = LABEL_HEIGHT * scale;
    for py in y..(y + box_h).min(h) {
        for px in x..(x + box_w).min(w) {
            image.put_pixel(px, py, background);
        }
    }
    for (i, c) in text.chars().enumerate() {
        let glyph = font8x8::legacy::BASIC_LEGACY[if c.is_ascii() { c as usize } else { '?' as usize }];
        let left = x + (1 + i as u32 * 8) * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for column in 0..8u32 {
                // Bit k of a row byte is the k-th pixel from the left.
                if bits & (1 << column) == 0 {
                    continue;
                }
                let top = y + (1 + row as u32) * scale;
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (left + column * scale + dx, top + dy);
                        if px < w && py < h {
                            image.put_pixel(px, py, Rgb([0, 0, 0]));
                        }
                    }
                }
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
    fn a_label_is_dark_glyphs_on_its_background_and_clipped_at_the_edge() {
        let white = Rgb([255, 255, 255]);
        let mut image = RgbImage::from_pixel(40, 20, white);
        draw_label(&mut image, 2, 2, "I", DETECTION_COLOUR, 1);
        // The box spans 1 + 8 + 1 pixels each way from (2, 2); 'I' has ink in its middle columns.
        assert_eq!(*image.get_pixel(2, 2), DETECTION_COLOUR, "background corner");
        let ink = (3..11)
            .flat_map(|x| (3..11).map(move |y| (x, y)))
            .filter(|&(x, y)| *image.get_pixel(x, y) == Rgb([0, 0, 0]));
        assert!(ink.count() > 5, "the glyph left dark pixels");
        assert_eq!(*image.get_pixel(20, 15), white, "below the label untouched");
        assert_eq!(*image.get_pixel(12, 2), white, "right of the label untouched");
        draw_label(&mut image, 35, 15, "long text past the edge", DETECTION_COLOUR, 2);
    }

    #[test]
    fn jpeg_round_trips() {
        let image = RgbImage::from_pixel(32, 16, Rgb([10, 200, 30]));
        let bytes = encode_jpeg(&image, 85).unwrap();
        let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(back.dimensions(), (32, 16));
    }
}
