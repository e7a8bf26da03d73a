//! Shrinking a decoded picture's planes by two thirds (a 1080p camera to 1280×720, the
//! `max_width` of most boxes) before its conversion to RGB.
//!
//! GStreamer's `videoscale` does the same bilinear mix for any ratio, at about 2 to 3.5 ms a 1080p
//! picture on the benchmark's machine; this one ratio, done here on the decoder's I420 planes,
//! takes about 0.9 ms, and the scaled picture is never handed through the pipeline
//! (bench/RESULTS.md, issue 31). Other ratios are left to `videoscale`. `fast_image_resize` and
//! `pic-scale` were tried first: their single-channel convolutions took 6 to 8 ms here.

/// Whether a `from` plane shrinks to exactly `to` by two thirds across and down, chroma
/// included (both sides of the picture divisible by 6).
pub fn is_two_thirds(from: (u32, u32), to: (u32, u32)) -> bool {
    let (width, height) = from;
    width % 6 == 0 && height % 6 == 0 && width > 0 && height > 0 && to == (width / 3 * 2, height / 3 * 2)
}

/// One plane (`width`×`height` bytes, rows `stride` apart) shrunk to two thirds across and down
/// into `out` (replaced; `width` and `height` divisible by 3), bilinear: each output pixel mixes
/// its two nearest source pixels 3:1 each way, as a bilinear scaler samples them at output
/// pixel centres. `mixed` is a row of working space, reused picture after picture.
pub fn two_thirds(
    plane: &[u8],
    stride: usize,
    (width, height): (usize, usize),
    out: &mut Vec<u8>,
    mixed: &mut Vec<u16>,
) -> Result<(), String> {
    if width % 3 != 0 || height % 3 != 0 || stride < width {
        return Err(format!("a {width}×{height} plane (stride {stride}) cannot be shrunk by two thirds"));
    }
    if height > 0 && plane.len() < stride * (height - 1) + width {
        return Err(format!("a {width}×{height} plane in {} bytes (stride {stride})", plane.len()));
    }
    let (out_width, out_height) = (width / 3 * 2, height / 3 * 2);
    out.resize(out_width * out_height, 0);
    mixed.resize(width, 0);
    let row = |y: usize| &plane[y * stride..y * stride + width];
    for (y, out_row) in out.chunks_exact_mut(out_width.max(1)).enumerate() {
        // Output rows 2m and 2m+1 lie a quarter of a row below 3m and above 3m+2.
        let third = y / 2 * 3;
        let (near, far) = if y % 2 == 0 { (third, third + 1) } else { (third + 2, third + 1) };
        for ((mix, &near), &far) in mixed.iter_mut().zip(row(near)).zip(row(far)) {
            *mix = 3 * u16::from(near) + u16::from(far);
        }
        across(&mixed[..], out_row);
    }
    Ok(())
}

/// One row mixed down (weights summing to 4) mixed across 3:1 (to 16), rounded: output pixels
/// 2k and 2k+1 from source pixels 3k, 3k+1 and 3k+2. In blocks of 16 pairs, so that the
/// compiler can use SIMD shuffles (a third less time than pair by pair).
fn across(mixed: &[u16], out_row: &mut [u8]) {
    const PAIRS: usize = 16;
    let pair = |three: &[u16], two: &mut [u8]| {
        two[0] = ((3 * three[0] + three[1] + 8) >> 4) as u8;
        two[1] = ((three[1] + 3 * three[2] + 8) >> 4) as u8;
    };
    let blocks = out_row.len() / (2 * PAIRS);
    for (two, three) in out_row.chunks_exact_mut(2 * PAIRS).zip(mixed.chunks_exact(3 * PAIRS)) {
        if let (Ok(two), Ok(three)) = (<&mut [u8; 2 * PAIRS]>::try_from(two), <&[u16; 3 * PAIRS]>::try_from(three)) {
            for k in 0..PAIRS {
                pair(&three[3 * k..3 * k + 3], &mut two[2 * k..2 * k + 2]);
            }
        }
    }
    let (rest_out, rest_in) = (&mut out_row[blocks * 2 * PAIRS..], &mixed[blocks * 3 * PAIRS..]);
    for (two, three) in rest_out.chunks_exact_mut(2).zip(rest_in.chunks_exact(3)) {
        pair(three, two);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bilinear sampling at output pixel centres, in floating point: what `two_thirds` must give
    /// within rounding.
    fn bilinear_reference(plane: &[u8], width: usize, height: usize) -> Vec<f64> {
        let (out_width, out_height) = (width * 2 / 3, height * 2 / 3);
        let source = |x: f64, y: f64| {
            let (x0, y0) = (x.floor() as usize, y.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(width - 1), (y0 + 1).min(height - 1));
            let (fx, fy) = (x - x0 as f64, y - y0 as f64);
            let at = |x: usize, y: usize| f64::from(plane[y * width + x]);
            (at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx) * (1.0 - fy) + (at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx) * fy
        };
        let mut out = Vec::new();
        for y in 0..out_height {
            for x in 0..out_width {
                out.push(source((x as f64 + 0.5) * 1.5 - 0.5, (y as f64 + 0.5) * 1.5 - 0.5));
            }
        }
        out
    }

    fn noise(len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 7919 + i / 13 * 31) % 256) as u8).collect()
    }

    #[test]
    fn a_plane_shrunk_by_two_thirds_is_its_bilinear_sampling_within_rounding() {
        // A 1080p picture's chroma plane, a width with a remainder past the blocks, and a tiny one.
        for (width, height) in [(960, 540), (123, 9), (3, 3)] {
            let plane = noise(width * height);
            let (mut out, mut mixed) = (Vec::new(), Vec::new());
            two_thirds(&plane, width, (width, height), &mut out, &mut mixed).unwrap();
            let reference = bilinear_reference(&plane, width, height);
            assert_eq!(out.len(), reference.len(), "{width}×{height}");
            for (i, (ours, exact)) in out.iter().zip(&reference).enumerate() {
                assert!(
                    (f64::from(*ours) - exact).abs() <= 0.5 + 1e-9,
                    "{width}×{height}, pixel {i}: {ours} for {exact}"
                );
            }
        }
    }

    #[test]
    fn rows_padded_past_the_picture_are_read_by_their_stride() {
        let (width, height, stride) = (6, 6, 8);
        let tight = noise(width * height);
        let mut padded = vec![255u8; stride * height];
        for (y, row) in tight.chunks_exact(width).enumerate() {
            padded[y * stride..y * stride + width].copy_from_slice(row);
        }
        let (mut from_tight, mut from_padded, mut mixed) = (Vec::new(), Vec::new(), Vec::new());
        two_thirds(&tight, width, (width, height), &mut from_tight, &mut mixed).unwrap();
        two_thirds(&padded, stride, (width, height), &mut from_padded, &mut mixed).unwrap();
        assert_eq!(from_tight, from_padded);
        assert_eq!(from_tight.len(), 16);
    }

    #[test]
    fn a_plane_too_short_or_of_the_wrong_size_is_an_error_not_a_panic() {
        let (mut out, mut mixed) = (Vec::new(), Vec::new());
        let short = two_thirds(&[0; 10], 6, (6, 6), &mut out, &mut mixed).unwrap_err();
        assert!(short.contains("6×6 plane in 10 bytes"), "{short}");
        assert!(two_thirds(&[0; 64], 8, (8, 6), &mut out, &mut mixed).is_err(), "8 is not divisible by 3");
        assert!(two_thirds(&[0; 64], 4, (6, 6), &mut out, &mut mixed).is_err(), "a stride under the width");
    }

    #[test]
    fn only_a_picture_whose_planes_all_shrink_exactly_by_two_thirds_takes_this_way() {
        assert!(is_two_thirds((1920, 1080), (1280, 720)));
        assert!(is_two_thirds((960, 540), (640, 360)));
        assert!(!is_two_thirds((1920, 1080), (1280, 722)));
        assert!(!is_two_thirds((2560, 1440), (1280, 720)), "half, not two thirds");
        assert!(!is_two_thirds((1926, 1083), (1284, 722)), "an odd height: its chroma plane has 542 rows");
        assert!(!is_two_thirds((0, 0), (0, 0)));
    }
}
