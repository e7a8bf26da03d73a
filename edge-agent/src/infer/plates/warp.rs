//! Straightening a plate: the perspective transform that takes its four corners (top left, top
//! right, bottom right, bottom left) to a rectangle, sampled bicubically with the border repeated,
//! as HyperLPR's `get_rotate_crop_image` does with OpenCV.

use image::RgbImage;
use nalgebra::{SMatrix, SVector};

/// A straightened plate never needs more pixels than this per side; corners far outside a picture
/// (a broken detection) must not make a huge allocation.
const MAX_SIDE: f32 = 1024.0;

/// Corners in picture pixels: top left, top right, bottom right, bottom left.
pub type Corners = [[f32; 2]; 4];

fn distance(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// The size of the straightened plate: its longer top/bottom edge by its longer left/right edge.
pub fn straightened_size(corners: &Corners) -> (u32, u32) {
    let [tl, tr, br, bl] = *corners;
    let side = |v: f32| if v.is_finite() { v.clamp(1.0, MAX_SIDE) as u32 } else { 1 };
    (side(distance(tl, tr).max(distance(br, bl))), side(distance(tl, bl).max(distance(tr, br))))
}

/// The homography taking the rectangle (0,0)–(w,h) to the corners: for each output pixel, where to
/// sample the picture. None when the corners are degenerate (three in a line, or not finite).
fn rectangle_to_corners(width: f32, height: f32, corners: &Corners) -> Option<SMatrix<f64, 3, 3>> {
    let from = [[0.0, 0.0], [width, 0.0], [width, height], [0.0, height]];
    let mut a = SMatrix::<f64, 8, 8>::zeros();
    let mut b = SVector::<f64, 8>::zeros();
    for i in 0..4 {
        let (x, y) = (from[i][0] as f64, from[i][1] as f64);
        let (u, v) = (corners[i][0] as f64, corners[i][1] as f64);
        a.set_row(2 * i, &SMatrix::<f64, 1, 8>::from_row_slice(&[x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y]));
        a.set_row(2 * i + 1, &SMatrix::<f64, 1, 8>::from_row_slice(&[0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y]));
        b[2 * i] = u;
        b[2 * i + 1] = v;
    }
    let h = a.lu().solve(&b)?;
    if h.iter().any(|v| !v.is_finite()) {
        return None;
    }
    Some(SMatrix::<f64, 3, 3>::new(h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], 1.0))
}

/// OpenCV's bicubic weights (a = −0.75) for a sample at fraction `x` past the second of four pixels.
fn cubic_weights(x: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let w0 = ((A * (x + 1.0) - 5.0 * A) * (x + 1.0) + 8.0 * A) * (x + 1.0) - 4.0 * A;
    let w1 = ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let w2 = ((A + 2.0) * (1.0 - x) - (A + 3.0)) * (1.0 - x) * (1.0 - x) + 1.0;
    [w0, w1, w2, 1.0 - w0 - w1 - w2]
}

/// The plate between `corners`, straightened; turned a quarter left when it comes out at least 1.5
/// times taller than wide (a plate standing on its side). None for degenerate corners.
pub fn straighten(picture: &RgbImage, corners: &Corners) -> Option<RgbImage> {
    let (width, height) = straightened_size(corners);
    let h = rectangle_to_corners(width as f32, height as f32, corners)?;
    let (pw, ph) = (picture.width() as i64, picture.height() as i64);
    if pw == 0 || ph == 0 {
        return None;
    }
    let pixels = picture.as_raw();
    let at = |x: i64, y: i64, c: usize| -> f32 {
        // The border repeats the nearest edge pixel.
        let (x, y) = (x.clamp(0, pw - 1) as usize, y.clamp(0, ph - 1) as usize);
        pixels[(y * pw as usize + x) * 3 + c] as f32
    };
    let mut out = RgbImage::new(width, height);
    for y in 0..height {
        for x in 0..width {
            let (xf, yf) = (x as f64, y as f64);
            let w = h[(2, 0)] * xf + h[(2, 1)] * yf + h[(2, 2)];
            let w = if w.abs() < 1e-12 { 1e-12 } else { w };
            let sx = ((h[(0, 0)] * xf + h[(0, 1)] * yf + h[(0, 2)]) / w) as f32;
            let sy = ((h[(1, 0)] * xf + h[(1, 1)] * yf + h[(1, 2)]) / w) as f32;
            if !sx.is_finite() || !sy.is_finite() {
                continue;
            }
            // Far outside the picture every tap is the same border pixel anyway.
            let (sx, sy) = (sx.clamp(-4.0, pw as f32 + 4.0), sy.clamp(-4.0, ph as f32 + 4.0));
            let (x0, y0) = (sx.floor(), sy.floor());
            let (wx, wy) = (cubic_weights(sx - x0), cubic_weights(sy - y0));
            let (x0, y0) = (x0 as i64, y0 as i64);
            let mut value = [0.0f32; 3];
            for (j, wyj) in wy.iter().enumerate() {
                for (i, wxi) in wx.iter().enumerate() {
                    let weight = wyj * wxi;
                    for (c, v) in value.iter_mut().enumerate() {
                        *v += weight * at(x0 - 1 + i as i64, y0 - 1 + j as i64, c);
                    }
                }
            }
            out.put_pixel(x, y, image::Rgb(value.map(|v| v.round().clamp(0.0, 255.0) as u8)));
        }
    }
    if height as f32 / width as f32 >= 1.5 {
        out = image::imageops::rotate270(&out);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkerboard(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, 100]))
    }

    #[test]
    fn an_axis_aligned_rectangle_is_cut_out_as_it_is() {
        let picture = checkerboard(40, 30);
        let corners = [[10.0, 5.0], [30.0, 5.0], [30.0, 15.0], [10.0, 15.0]];
        let plate = straighten(&picture, &corners).unwrap();
        assert_eq!(plate.dimensions(), (20, 10));
        for (x, y, p) in plate.enumerate_pixels() {
            assert_eq!(p, picture.get_pixel(x + 10, y + 5), "at {x},{y}");
        }
    }

    #[test]
    fn a_tilted_plate_comes_out_upright() {
        // A white bar on black, drawn as a parallelogram sheared by 10 px over its height.
        let picture = RgbImage::from_fn(100, 60, |x, y| {
            let shift = (y as f32 - 20.0) / 20.0 * 10.0;
            let inside = (20..40).contains(&y) && (x as f32) >= 20.0 + shift && (x as f32) < 80.0 + shift;
            image::Rgb(if inside { [255; 3] } else { [0; 3] })
        });
        let corners = [[20.0, 20.0], [80.0, 20.0], [90.0, 40.0], [30.0, 40.0]];
        let plate = straighten(&picture, &corners).unwrap();
        let (w, h) = plate.dimensions();
        assert!(w >= 60 && h >= 20, "{w}x{h}");
        // Inside the straightened plate (away from its edges) everything is white.
        for y in 3..h - 3 {
            for x in 3..w - 3 {
                assert!(plate.get_pixel(x, y)[0] > 200, "at {x},{y}: {:?}", plate.get_pixel(x, y));
            }
        }
    }

    #[test]
    fn a_plate_standing_on_its_side_is_turned_to_lie_flat() {
        let picture = checkerboard(40, 80);
        let corners = [[10.0, 10.0], [20.0, 10.0], [20.0, 50.0], [10.0, 50.0]];
        let plate = straighten(&picture, &corners).unwrap();
        assert_eq!(plate.dimensions(), (40, 10));
        // A quarter turn left: the straightened plate's top right pixel is now its top left.
        assert_eq!(plate.get_pixel(0, 0), picture.get_pixel(19, 10));
    }

    #[test]
    fn corners_outside_the_picture_repeat_its_border_and_degenerate_ones_give_nothing() {
        let picture = RgbImage::from_pixel(4, 4, image::Rgb([9, 8, 7]));
        let far = [[-1.0e6, -1.0e6], [1.0e6, -1.0e6], [1.0e6, 1.0e6], [-1.0e6, 1.0e6]];
        let plate = straighten(&picture, &far).unwrap();
        assert_eq!(plate.dimensions(), (1024, 1024), "capped");
        assert_eq!(plate.get_pixel(5, 5), &image::Rgb([9, 8, 7]));
        let line = [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]];
        assert!(straighten(&picture, &line).is_none());
        let nan = [[f32::NAN, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]];
        assert!(straighten(&picture, &nan).is_none());
    }
}
