//! Draws what the models found onto a copy of the frame (boxes, labels, zones), and encodes it as
//! JPEG (SIMD `jpeg-encoder`) for the page and the evidence. Text uses DejaVu Sans Bold, embedded
//! (Bitstream Vera licence, `assets/fonts/LICENSE-DejaVu.txt`), so labels look the same on every box.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::{Rgb, RgbImage};

use crate::infer::{BoundingBox, Findings, ModelResult};
use crate::judge::config::ZoneRole;
use crate::judge::zones::Zone;

static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-Bold.ttf");
const TEXT_COLOUR: Rgb<u8> = Rgb([255, 255, 255]);

pub const EVENT_COLOUR: Rgb<u8> = Rgb([255, 48, 48]);
pub const DETECTION_COLOUR: Rgb<u8> = Rgb([255, 200, 0]);

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
    let size = text_size_for(frame);
    let mut classifier_line = 0.0;
    for result in results {
        match &result.findings {
            Findings::Detect { detections } => {
                for d in detections {
                    let text = format!("{} {:.2}", d.label, d.score);
                    let above = d.bbox.y1 - size * 1.5;
                    let y = if above >= 0.0 { above } else { d.bbox.y1 };
                    draw_label(&mut canvas, d.bbox.x1.max(0.0), y, &text, size, DETECTION_COLOUR);
                }
            }
            Findings::Classify { classes } => {
                if let Some(best) = classes.first() {
                    let text = format!("{}: {} {:.2}", result.model.name, best.label, best.score);
                    draw_label(&mut canvas, 0.0, classifier_line * size * 1.5, &text, size, DETECTION_COLOUR);
                    classifier_line += 1.0;
                }
            }
        }
    }
    canvas
}

/// Colour a zone is outlined in, by role.
pub fn zone_colour(role: ZoneRole) -> Rgb<u8> {
    match role {
        ZoneRole::Bin => Rgb([0, 200, 255]),
        ZoneRole::DropArea => Rgb([0, 220, 120]),
        ZoneRole::Road => Rgb([200, 120, 255]),
        ZoneRole::SiteExit => Rgb([255, 140, 0]),
        ZoneRole::Ignore => Rgb([150, 150, 150]),
        ZoneRole::Privacy => Rgb([60, 60, 60]),
    }
}

/// Zone outlines with their ids; privacy zones are already black, so they are only outlined.
pub fn draw_zones(image: &mut RgbImage, zones: &[Zone]) {
    let (w, h) = image.dimensions();
    let thickness = (w.max(h) / 400).max(1);
    let text_size = text_size_for(image);
    for zone in zones {
        let corners = zone.pixel_corners(w, h);
        let colour = zone_colour(zone.role);
        for i in 0..corners.len() {
            draw_line(image, corners[i], corners[(i + 1) % corners.len()], colour, thickness);
        }
        if let Some(&(x, y)) = corners.iter().min_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1))) {
            let caption = match &zone.category {
                Some(category) => format!("{} ({category})", zone.id),
                None => zone.id.clone(),
            };
            draw_label(image, x + 2.0, y + 2.0, &caption, text_size * 0.8, colour);
        }
    }
}

/// Label text height that reads well on a frame of this size.
pub fn text_size_for(image: &RgbImage) -> f32 {
    (image.height() as f32 / 28.0).clamp(12.0, 40.0)
}

/// A straight line `thickness` pixels wide, clipped to the image.
pub fn draw_line(image: &mut RgbImage, from: (f32, f32), to: (f32, f32), colour: Rgb<u8>, thickness: u32) {
    let (w, h) = (image.width() as i64, image.height() as i64);
    let steps = (to.0 - from.0).abs().max((to.1 - from.1).abs()).ceil().max(1.0) as i64;
    let half = (thickness as i64 - 1) / 2;
    for s in 0..=steps {
        let t = s as f32 / steps as f32;
        let x = (from.0 + (to.0 - from.0) * t).round() as i64;
        let y = (from.1 + (to.1 - from.1) * t).round() as i64;
        for dx in -half..=(thickness as i64 - 1 - half) {
            for dy in -half..=(thickness as i64 - 1 - half) {
                let (px, py) = (x + dx, y + dy);
                if px >= 0 && py >= 0 && px < w && py < h {
                    image.put_pixel(px as u32, py as u32, colour);
                }
            }
        }
    }
}

/// Width in pixels `text` takes at `size`.
pub fn text_width(text: &str, size: f32) -> f32 {
    let Ok(font) = FontRef::try_from_slice(FONT_BYTES) else { return 0.0 };
    let scaled = font.as_scaled(PxScale::from(size));
    text.chars().map(|c| scaled.h_advance(scaled.glyph_id(c))).sum()
}

/// White text on a filled box of `background`, top left at (x, y), kept inside the image.
pub fn draw_label(image: &mut RgbImage, x: f32, y: f32, text: &str, size: f32, background: Rgb<u8>) {
    let Ok(font) = FontRef::try_from_slice(FONT_BYTES) else { return };
    let scaled = font.as_scaled(PxScale::from(size));
    let pad = (size / 6.0).ceil();
    let width = text_width(text, size) + 2.0 * pad;
    let height = scaled.height() + 2.0 * pad;
    let (iw, ih) = (image.width() as f32, image.height() as f32);
    let x = x.min(iw - width).max(0.0);
    let y = y.min(ih - height).max(0.0);
    for py in y as u32..((y + height) as u32).min(image.height()) {
        for px in x as u32..((x + width) as u32).min(image.width()) {
            image.put_pixel(px, py, background);
        }
    }
    let mut caret = ab_glyph::point(x + pad, y + pad + scaled.ascent());
    let mut previous = None;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(previous) = previous {
            caret.x += scaled.kern(previous, id);
        }
        previous = Some(id);
        let glyph = id.with_scale_and_position(scaled.scale(), caret);
        caret.x += scaled.h_advance(id);
        let Some(outlined) = font.outline_glyph(glyph) else { continue };
        let bounds = outlined.px_bounds();
        outlined.draw(|gx, gy, coverage| {
            let px = bounds.min.x as i64 + i64::from(gx);
            let py = bounds.min.y as i64 + i64::from(gy);
            if px < 0 || py < 0 || px >= image.width() as i64 || py >= image.height() as i64 {
                return;
            }
            let pixel = image.get_pixel_mut(px as u32, py as u32);
            for (channel, &ink) in pixel.0.iter_mut().zip(TEXT_COLOUR.0.iter()) {
                *channel = (f32::from(*channel) * (1.0 - coverage) + f32::from(ink) * coverage).round() as u8;
            }
        });
    }
}

/// A box with its caption above it (or inside, at the top edge of the frame).
pub fn draw_labelled_box(image: &mut RgbImage, b: BoundingBox, caption: &str, colour: Rgb<u8>, thickness: u32) {
    draw_rectangle(image, b, colour, thickness);
    let size = text_size_for(image);
    let label_height = size * 1.5;
    let y = if b.y1 >= label_height { b.y1 - label_height } else { b.y1 + thickness as f32 };
    draw_label(image, b.x1, y, caption, size, colour);
}

/// Why a picture could not be encoded as JPEG.
#[derive(Debug, thiserror::Error)]
pub enum JpegError {
    #[error("a {width}×{height} picture is too large for JPEG (at most 65535 pixels a side)")]
    TooLarge { width: u32, height: u32 },
    #[error("cannot encode a {width}×{height} picture as JPEG: {source}")]
    Encode { width: u32, height: u32, source: jpeg_encoder::EncodingError },
}

/// JPEG of an RGB picture at `quality` (1–100), with `jpeg-encoder`: AVX2 colour conversion and DCT
/// where the CPU has them (detected at run time), plain Rust elsewhere; 4:2:0 chroma at every
/// quality. The one encoder of the agent (evidence, the page, `check`, `infer`).
pub fn encode_jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>, JpegError> {
    let (width, height) = image.dimensions();
    let too_large = || JpegError::TooLarge { width, height };
    let (w, h) = (u16::try_from(width).map_err(|_| too_large())?, u16::try_from(height).map_err(|_| too_large())?);
    let mut bytes = Vec::with_capacity(image.len() / 8);
    let mut encoder = jpeg_encoder::Encoder::new(&mut bytes, quality.clamp(1, 100));
    // 4:2:0 at every quality (the encoder's default keeps full colour from quality 90): a camera's
    // picture has no more colour than that (H.264 and H.265 Main, MJPEG), so full colour stores
    // interpolated chroma at about twice the encoding time of each event's picture.
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
    encoder.encode(image.as_raw(), w, h, jpeg_encoder::ColorType::Rgb).map_err(|source| JpegError::Encode {
        width,
        height,
        source,
    })?;
    // The guess above is several times what a camera picture takes; pictures are kept (the page's
    // events, queued snapshots), so they keep only their bytes.
    bytes.shrink_to_fit();
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A kept picture holds its bytes, not the encoder's first guess (an eighth of the raw frame).
    #[test]
    fn an_encoded_picture_keeps_only_its_bytes() {
        let image = RgbImage::from_fn(1280, 720, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 90]));
        let jpeg = encode_jpeg(&image, 75).unwrap();
        assert!(jpeg.len() < image.len() / 8, "a smooth picture compresses well: {} bytes", jpeg.len());
        assert_eq!(jpeg.capacity(), jpeg.len());
    }

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
    fn labels_put_white_ink_on_their_background() {
        let mut image = RgbImage::from_pixel(200, 60, Rgb([0, 0, 0]));
        draw_label(&mut image, 5.0, 5.0, "truck 0.37", 20.0, EVENT_COLOUR);
        let inked = image.pixels().filter(|p| p.0[1] > 200 && p.0[2] > 200).count();
        let boxed = image.pixels().filter(|p| **p == EVENT_COLOUR).count();
        assert!(inked > 50, "text drawn: {inked} white pixels");
        assert!(boxed > 500, "background drawn: {boxed}");
        assert!(text_width("truck", 20.0) > text_width("a", 20.0));
        // Near the right edge the label moves inside instead of being cut off.
        draw_label(&mut image, 190.0, 50.0, "wide label", 20.0, DETECTION_COLOUR);
        assert_eq!(*image.get_pixel(199, 59), DETECTION_COLOUR);
    }

    #[test]
    fn zones_are_outlined_in_their_role_colour() {
        let mut image = RgbImage::new(100, 100);
        let zone = Zone {
            id: "b".into(),
            role: ZoneRole::Bin,
            category: Some("residual".into()),
            polygon: crate::judge::zones::Polygon::new(&[[0.5, 0.5], [0.9, 0.5], [0.9, 0.9], [0.5, 0.9]]).unwrap(),
        };
        draw_zones(&mut image, &[zone]);
        assert_eq!(*image.get_pixel(90, 70), zone_colour(ZoneRole::Bin));
        assert_eq!(*image.get_pixel(20, 20), Rgb([0, 0, 0]));
    }

    #[test]
    fn jpeg_round_trips() {
        let image = RgbImage::from_pixel(32, 16, Rgb([10, 200, 30]));
        let bytes = encode_jpeg(&image, 85).unwrap();
        let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(back.dimensions(), (32, 16));
    }

    /// Mean absolute difference per channel between two pictures of the same size.
    fn mean_difference(a: &RgbImage, b: &RgbImage) -> f64 {
        let total: u64 = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| u64::from(x.abs_diff(*y))).sum();
        total as f64 / a.as_raw().len() as f64
    }

    #[test]
    fn a_photo_with_boxes_decodes_to_the_same_size_and_nearly_the_same_pixels() {
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/samples/dog.jpg");
        let photo = image::open(&sample).unwrap().to_rgb8();
        // An odd size, so the encoder's edge blocks (partial MCUs) are exercised too.
        let mut picture = image::imageops::resize(&photo, 1001, 749, image::imageops::FilterType::Triangle);
        draw_labelled_box(
            &mut picture,
            BoundingBox { x1: 100.0, y1: 120.0, x2: 600.0, y2: 400.0 },
            "truck 0.37",
            EVENT_COLOUR,
            6,
        );
        for quality in [70, 90] {
            let bytes = encode_jpeg(&picture, quality).unwrap();
            assert_eq!(&bytes[..2], [0xff, 0xd8], "a JPEG starts with SOI");
            let back = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).unwrap().to_rgb8();
            assert_eq!(back.dimensions(), picture.dimensions());
            let difference = mean_difference(&picture, &back);
            assert!(difference < 4.0, "quality {quality}: mean difference {difference:.2} per channel");
            // The red event box is still red after chroma subsampling.
            let edge = back.get_pixel(300, 398);
            assert!(edge.0[0] > 180 && edge.0[1] < 110 && edge.0[2] < 110, "box edge {edge:?}");
        }
    }

    #[test]
    fn a_picture_too_large_for_jpeg_is_refused_by_size() {
        let wide = RgbImage::new(70_000, 1);
        let err = encode_jpeg(&wide, 90).unwrap_err();
        assert!(err.to_string().contains("70000×1"), "{err}");
    }
}
