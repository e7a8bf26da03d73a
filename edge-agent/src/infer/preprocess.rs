//! Frame → input tensor, as the manifest says: resize (stretch or letterbox) with bilinear
//! sampling (half-pixel centres, like OpenCV's INTER_LINEAR), colour order, (pixel − mean) / std and
//! NCHW or NHWC, into a buffer that is reused frame after frame (separable: rows blended across,
//! then down).

use image::RgbImage;

use super::manifest::{ColourOrder, InputSpec, Layout, ResizeMode};

/// How model-input coordinates map back to frame pixels: `frame = (model − pad) / scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameTransform {
    pub scale_x: f32,
    pub scale_y: f32,
    pub pad_x: f32,
    pub pad_y: f32,
    pub frame_width: u32,
    pub frame_height: u32,
}

impl FrameTransform {
    /// Maps a box from model-input pixels to frame pixels, clipped to the frame.
    pub fn to_frame(&self, b: crate::infer::BoundingBox) -> crate::infer::BoundingBox {
        let (w, h) = (self.frame_width as f32, self.frame_height as f32);
        crate::infer::BoundingBox {
            x1: ((b.x1 - self.pad_x) / self.scale_x).clamp(0.0, w),
            y1: ((b.y1 - self.pad_y) / self.scale_y).clamp(0.0, h),
            x2: ((b.x2 - self.pad_x) / self.scale_x).clamp(0.0, w),
            y2: ((b.y2 - self.pad_y) / self.scale_y).clamp(0.0, h),
        }
    }
}

/// Per output column (or row): the two source pixels to blend and the weight of the second.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tap {
    pub(crate) low: u32,
    pub(crate) high: u32,
    pub(crate) weight: f32,
}

pub(crate) fn taps(source_len: u32, content_len: u32) -> Vec<Tap> {
    let ratio = source_len as f32 / content_len as f32;
    let last = source_len.saturating_sub(1);
    (0..content_len)
        .map(|i| {
            let centre = ((i as f32 + 0.5) * ratio - 0.5).max(0.0);
            let low = (centre.floor() as u32).min(last);
            let high = (low + 1).min(last);
            Tap { low, high, weight: centre - low as f32 }
        })
        .collect()
}

pub struct Preprocessor {
    spec: InputSpec,
    height: usize,
    width: usize,
    buffer: Vec<f32>,
    /// Sampling tables for the last frame size; frames from one camera rarely change size.
    cached: Option<(u32, u32, Vec<Tap>, Vec<Tap>, FrameTransform)>,
    /// Two source rows blended across (`run`), reused frame after frame.
    blended_rows: [Vec<f32>; 2],
}

impl Preprocessor {
    pub fn new(spec: InputSpec, (height, width): (usize, usize)) -> Self {
        Self {
            spec,
            height,
            width,
            buffer: vec![0.0; 3 * height * width],
            cached: None,
            blended_rows: Default::default(),
        }
    }

    pub fn input_shape(&self) -> &[usize] {
        &self.spec.shape
    }

    /// Fills the reused input buffer from `frame`; returns it with the transform back to the frame.
    ///
    /// Separable: each source row a content row needs is blended across once into `blended_rows`
    /// (kept while the next row needs it too), then each output row is blended down from two of
    /// them, normalised and written plane by plane. The same arithmetic, in the same order, as
    /// blending the four neighbours of each output pixel (the test `reference_run`), at about a
    /// third of the cost.
    pub fn run(&mut self, frame: &RgbImage) -> (&[f32], FrameTransform) {
        let (fw, fh) = frame.dimensions();
        if !matches!(&self.cached, Some((w, h, ..)) if *w == fw && *h == fh) {
            self.cached = Some(self.plan(fw, fh));
        }
        let Some((_, _, column_taps, row_taps, transform)) = &self.cached else {
            unreachable!("sampling plan was just built")
        };
        let transform = *transform;
        let (out_h, out_w) = (self.height, self.width);
        let plane = out_h * out_w;
        // Normalisation folded into one multiply-add per channel: (p − mean) / std = p·a + b.
        let order: [usize; 3] = match self.spec.colour_order {
            ColourOrder::Rgb => [0, 1, 2],
            ColourOrder::Bgr => [2, 1, 0],
        };
        let a: [f32; 3] = std::array::from_fn(|c| 1.0 / self.spec.std[c]);
        let b: [f32; 3] = std::array::from_fn(|c| -self.spec.mean[c] / self.spec.std[c]);
        let pad = self.spec.pad_value as f32;
        let pad_value: [f32; 3] = std::array::from_fn(|c| pad * a[c] + b[c]);
        let (pad_x, pad_y) = (transform.pad_x as usize, transform.pad_y as usize);
        let (content_w, content_h) = (column_taps.len(), row_taps.len());
        let stride = fw as usize * 3;
        let source_row = |y: u32| &frame.as_raw()[y as usize * stride..(y as usize + 1) * stride];
        let layout = self.spec.layout;
        let buffer = &mut self.buffer;
        // The source rows blended across, and which row each holds (none yet for this frame).
        let [upper, lower] = &mut self.blended_rows;
        for row in [&mut *upper, &mut *lower] {
            row.resize(content_w * 3, 0.0);
        }
        let mut held: [Option<u32>; 2] = [None, None];

        for y in 0..out_h {
            let Some(tap) = y.checked_sub(pad_y).filter(|&r| r < content_h).map(|r| row_taps[r]) else {
                fill_row(buffer, layout, plane, out_w, y, 0..out_w, pad_value);
                continue;
            };
            // The row above: often the one below of the last output row when enlarging.
            if held[0] != Some(tap.low) {
                if held[1] == Some(tap.low) {
                    std::mem::swap(upper, lower);
                    held.swap(0, 1);
                } else {
                    blend_across(source_row(tap.low), column_taps, upper);
                    held[0] = Some(tap.low);
                }
            }
            if held[1] != Some(tap.high) {
                blend_across(source_row(tap.high), column_taps, lower);
                held[1] = Some(tap.high);
            }
            fill_row(buffer, layout, plane, out_w, y, 0..pad_x, pad_value);
            fill_row(buffer, layout, plane, out_w, y, pad_x + content_w..out_w, pad_value);
            // One content pixel: its two blended rows' values mixed down, normalised, in channel order.
            let down = |top: &[f32], bottom: &[f32], c: usize| {
                let ch = order[c];
                let p = top[ch] + (bottom[ch] - top[ch]) * tap.weight;
                p * a[c] + b[c]
            };
            let pixels = upper.chunks_exact(3).zip(lower.chunks_exact(3));
            match layout {
                Layout::Nchw => {
                    // The three planes' rows written together, each pixel read once.
                    let start = y * out_w + pad_x;
                    let (first, rest) = buffer.split_at_mut(plane);
                    let (second, third) = rest.split_at_mut(plane);
                    let rows = first[start..start + content_w]
                        .iter_mut()
                        .zip(&mut second[start..start + content_w])
                        .zip(&mut third[start..start + content_w]);
                    for ((top, bottom), ((c0, c1), c2)) in pixels.zip(rows) {
                        *c0 = down(top, bottom, 0);
                        *c1 = down(top, bottom, 1);
                        *c2 = down(top, bottom, 2);
                    }
                }
                Layout::Nhwc => {
                    let start = (y * out_w + pad_x) * 3;
                    for ((top, bottom), pixel) in pixels.zip(buffer[start..start + content_w * 3].chunks_exact_mut(3)) {
                        for (c, value) in pixel.iter_mut().enumerate() {
                            *value = down(top, bottom, c);
                        }
                    }
                }
            }
        }
        (&self.buffer, transform)
    }

    fn plan(&self, fw: u32, fh: u32) -> (u32, u32, Vec<Tap>, Vec<Tap>, FrameTransform) {
        let (out_w, out_h) = (self.width as u32, self.height as u32);
        let (content_w, content_h, pad_x, pad_y) = match self.spec.resize {
            ResizeMode::Stretch => (out_w, out_h, 0, 0),
            ResizeMode::Letterbox => {
                let scale = (out_w as f32 / fw as f32).min(out_h as f32 / fh as f32);
                let cw = ((fw as f32 * scale).round() as u32).clamp(1, out_w);
                let ch = ((fh as f32 * scale).round() as u32).clamp(1, out_h);
                (cw, ch, (out_w - cw) / 2, (out_h - ch) / 2)
            }
        };
        let transform = FrameTransform {
            scale_x: content_w as f32 / fw as f32,
            scale_y: content_h as f32 / fh as f32,
            pad_x: pad_x as f32,
            pad_y: pad_y as f32,
            frame_width: fw,
            frame_height: fh,
        };
        (fw, fh, taps(fw, content_w), taps(fh, content_h), transform)
    }
}

/// One source row blended across to the content's width: per content column, its two taps'
/// values mixed by the tap's weight, in the frame's channel order.
fn blend_across(source_row: &[u8], column_taps: &[Tap], out: &mut [f32]) {
    for (blended, tap) in out.chunks_exact_mut(3).zip(column_taps) {
        let (low, high) = (tap.low as usize * 3, tap.high as usize * 3);
        // Whole pixels: one bounds check each instead of one a channel.
        let (Some(left), Some(right)) = (source_row[low..].first_chunk::<3>(), source_row[high..].first_chunk::<3>())
        else {
            continue;
        };
        for ch in 0..3 {
            let from = f32::from(left[ch]);
            blended[ch] = from + (f32::from(right[ch]) - from) * tap.weight;
        }
    }
}

/// Sets the output pixels `columns` of row `y` to `value` (the padding).
fn fill_row(
    buffer: &mut [f32],
    layout: Layout,
    plane: usize,
    out_w: usize,
    y: usize,
    columns: std::ops::Range<usize>,
    value: [f32; 3],
) {
    if columns.is_empty() {
        return;
    }
    let row = y * out_w;
    match layout {
        Layout::Nchw => {
            for (c, channel_value) in value.into_iter().enumerate() {
                buffer[c * plane + row + columns.start..c * plane + row + columns.end].fill(channel_value);
            }
        }
        Layout::Nhwc => {
            for pixel in buffer[(row + columns.start) * 3..(row + columns.end) * 3].chunks_exact_mut(3) {
                pixel.copy_from_slice(&value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::BoundingBox;

    fn spec(resize: ResizeMode, layout: Layout, colour_order: ColourOrder) -> InputSpec {
        InputSpec {
            name: "input".into(),
            shape: vec![1, 3, 4, 4],
            layout,
            colour_order,
            resize,
            mean: [0.0; 3],
            std: [1.0; 3],
            pad_value: 0,
        }
    }

    #[test]
    fn same_size_stretch_copies_pixels_into_planes_in_model_colour_order() {
        let frame = RgbImage::from_fn(4, 4, |x, y| image::Rgb([x as u8, y as u8, 200]));
        let mut pre = Preprocessor::new(spec(ResizeMode::Stretch, Layout::Nchw, ColourOrder::Bgr), (4, 4));
        let (tensor, transform) = pre.run(&frame);
        assert_eq!(&tensor[0..4], &[200.0; 4]); // blue plane first for BGR
        assert_eq!(&tensor[16..20], &[0.0; 4]); // green = row index, row 0
        assert_eq!(&tensor[32..36], &[0.0, 1.0, 2.0, 3.0]); // red = column index
        assert_eq!(transform.scale_x, 1.0);
    }

    #[test]
    fn nhwc_interleaves_channels() {
        let frame = RgbImage::from_pixel(4, 4, image::Rgb([10, 20, 30]));
        let mut pre = Preprocessor::new(spec(ResizeMode::Stretch, Layout::Nhwc, ColourOrder::Rgb), (4, 4));
        let (tensor, _) = pre.run(&frame);
        assert_eq!(&tensor[0..6], &[10.0, 20.0, 30.0, 10.0, 20.0, 30.0]);
    }

    #[test]
    fn letterbox_pads_and_maps_boxes_back_to_the_frame() {
        // 8×4 frame into 4×4: scale 0.5, content 4×2, one padded row above and below.
        let frame = RgbImage::from_pixel(8, 4, image::Rgb([255, 255, 255]));
        let mut pre = Preprocessor::new(spec(ResizeMode::Letterbox, Layout::Nchw, ColourOrder::Rgb), (4, 4));
        let (tensor, transform) = pre.run(&frame);
        assert_eq!(&tensor[0..4], &[0.0; 4], "top padding row");
        assert_eq!(&tensor[4..8], &[255.0; 4], "content row");
        assert_eq!(&tensor[12..16], &[0.0; 4], "bottom padding row");
        assert_eq!((transform.pad_x, transform.pad_y), (0.0, 1.0));
        let back = transform.to_frame(BoundingBox { x1: 1.0, y1: 1.0, x2: 3.0, y2: 3.0 });
        assert_eq!(back, BoundingBox { x1: 2.0, y1: 0.0, x2: 6.0, y2: 4.0 });
    }

    #[test]
    fn stretch_maps_boxes_back_per_axis() {
        let frame = RgbImage::new(768, 576);
        let mut pre = Preprocessor::new(
            InputSpec { shape: vec![1, 3, 416, 416], ..spec(ResizeMode::Stretch, Layout::Nchw, ColourOrder::Rgb) },
            (416, 416),
        );
        let (_, transform) = pre.run(&frame);
        let back = transform.to_frame(BoundingBox { x1: 208.0, y1: 208.0, x2: 416.0, y2: 500.0 });
        assert!((back.x1 - 384.0).abs() < 1e-3 && (back.y1 - 288.0).abs() < 1e-3);
        assert_eq!((back.x2, back.y2), (768.0, 576.0), "clipped to the frame");
    }

    /// The definition `run` must keep: each output pixel blended from its four neighbours, across
    /// then down, normalised (the implementation before it was made separable).
    fn reference_run(spec: &InputSpec, (out_h, out_w): (usize, usize), frame: &RgbImage) -> Vec<f32> {
        let pre = Preprocessor::new(spec.clone(), (out_h, out_w));
        let (fw, fh) = frame.dimensions();
        let (_, _, column_taps, row_taps, transform) = pre.plan(fw, fh);
        let order: [usize; 3] = match spec.colour_order {
            ColourOrder::Rgb => [0, 1, 2],
            ColourOrder::Bgr => [2, 1, 0],
        };
        let a: [f32; 3] = std::array::from_fn(|c| 1.0 / spec.std[c]);
        let b: [f32; 3] = std::array::from_fn(|c| -spec.mean[c] / spec.std[c]);
        let pad_value: [f32; 3] = std::array::from_fn(|c| spec.pad_value as f32 * a[c] + b[c]);
        let (pad_x, pad_y) = (transform.pad_x as usize, transform.pad_y as usize);
        let at = |y: u32, x: u32, ch: usize| frame.get_pixel(x, y)[ch] as f32;
        let mut out = vec![0.0; 3 * out_h * out_w];
        for y in 0..out_h {
            for x in 0..out_w {
                let row = y.checked_sub(pad_y).and_then(|r| row_taps.get(r));
                let column = x.checked_sub(pad_x).and_then(|c| column_taps.get(c));
                let value: [f32; 3] = match (row, column) {
                    (Some(ry), Some(cx)) => std::array::from_fn(|c| {
                        let ch = order[c];
                        let top =
                            at(ry.low, cx.low, ch) + (at(ry.low, cx.high, ch) - at(ry.low, cx.low, ch)) * cx.weight;
                        let bottom =
                            at(ry.high, cx.low, ch) + (at(ry.high, cx.high, ch) - at(ry.high, cx.low, ch)) * cx.weight;
                        (top + (bottom - top) * ry.weight) * a[c] + b[c]
                    }),
                    _ => pad_value,
                };
                for c in 0..3 {
                    match spec.layout {
                        Layout::Nchw => out[c * out_h * out_w + y * out_w + x] = value[c],
                        Layout::Nhwc => out[(y * out_w + x) * 3 + c] = value[c],
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_separable_pass_gives_exactly_the_four_neighbour_blend() {
        // A noisy frame (a fixed linear congruential sequence): every pixel differs from its
        // neighbours, so a wrong tap or row shows.
        let mut state = 12345u32;
        let mut noise = || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (state >> 16) as u8
        };
        let frames: Vec<RgbImage> = [(37, 23), (64, 48), (13, 29), (416, 416)]
            .into_iter()
            .map(|(w, h)| RgbImage::from_fn(w, h, |_, _| image::Rgb([noise(), noise(), noise()])))
            .collect();
        for resize in [ResizeMode::Stretch, ResizeMode::Letterbox] {
            for layout in [Layout::Nchw, Layout::Nhwc] {
                for colour_order in [ColourOrder::Rgb, ColourOrder::Bgr] {
                    let spec = InputSpec {
                        mean: [123.7, 116.3, 103.5],
                        std: [58.4, 57.1, 57.4],
                        pad_value: 114,
                        ..spec(resize, layout, colour_order)
                    };
                    for out in [(20, 16), (32, 32), (50, 70)] {
                        let mut pre = Preprocessor::new(spec.clone(), out);
                        // Twice per frame: the reused rows and buffer must not leak into the next.
                        for frame in frames.iter().chain(&frames) {
                            let expected = reference_run(&spec, out, frame);
                            let (tensor, _) = pre.run(frame);
                            assert!(
                                tensor == expected.as_slice(),
                                "{resize:?} {layout:?} {colour_order:?} {out:?} from {:?}",
                                frame.dimensions()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn downscaling_blends_neighbouring_pixels() {
        // Columns alternate 0 and 100; halving samples between them.
        let frame = RgbImage::from_fn(8, 8, |x, _| image::Rgb([if x % 2 == 0 { 0 } else { 100 }; 3]));
        let mut pre = Preprocessor::new(spec(ResizeMode::Stretch, Layout::Nchw, ColourOrder::Rgb), (4, 4));
        let (tensor, _) = pre.run(&frame);
        assert!(tensor[..4].iter().all(|&v| (v - 50.0).abs() < 1e-4), "{:?}", &tensor[..4]);
    }
}
