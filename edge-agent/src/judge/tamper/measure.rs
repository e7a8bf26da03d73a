//! The cheap statistics of one frame that tamper detection compares with the reference and with
//! the frame before: brightness and spread of a small grey grid, the share of fine detail
//! (sharpness), raw grey samples (a frozen picture) and how much the grid's edges line up with
//! another grid (the same view). One pass over the frame builds a grey working picture about
//! 320 px wide; everything else works on that.

use image::RgbImage;

/// The grid the view is compared on: coarse enough that people passing, noise and blur matter
/// little, fine enough that a camera turned by a few degrees no longer lines up.
pub const GRID_WIDTH: usize = 64;
pub const GRID_HEIGHT: usize = 36;

/// The working picture is the frame shrunk by a whole factor to about this width.
const WORKING_WIDTH: u32 = 320;

/// Grid cells a view may have moved (each way) and still count as the same view: a camera
/// shaken by the wind or a truck passing is not turned away.
const SHIFT_TOLERANCE: isize = 2;

/// Below this detail energy (grey levels², from 1 to 8 px) a picture has too little structure to
/// tell sharp from blurred.
const MIN_DETAIL_ENERGY: f32 = 4.0;

/// What tamper detection measures of one frame.
#[derive(Debug, Clone)]
pub struct FrameStats {
    /// Mean grey level, 0-255.
    pub brightness: f32,
    /// Standard deviation of the grid cells' grey levels: near 0 for a uniform picture.
    pub spread: f32,
    /// The share of fine detail (see [`detail_share`]); None when the picture has too little
    /// structure to tell.
    pub sharpness: Option<f32>,
    /// Mean grey level of each grid cell, row by row (`GRID_WIDTH` × `GRID_HEIGHT`).
    pub grid: Vec<f32>,
    /// One raw grey pixel per working pixel (not averaged, so sensor noise stays in): two live
    /// frames differ in them, two copies of a frozen picture do not.
    pub samples: Vec<u8>,
}

/// Grey level of an RGB pixel (BT.601 weights, integer).
fn luma(pixel: &[u8]) -> u32 {
    (77 * u32::from(pixel[0]) + 150 * u32::from(pixel[1]) + 29 * u32::from(pixel[2])) >> 8
}

/// Measures a frame; None when it is too small to judge (under about 64×36 pixels).
pub fn measure(image: &RgbImage) -> Option<FrameStats> {
    let (width, height) = image.dimensions();
    let factor = (width / WORKING_WIDTH).max(1) as usize;
    let (work_width, work_height) = (width as usize / factor, height as usize / factor);
    if work_width < GRID_WIDTH || work_height < GRID_HEIGHT {
        return None;
    }
    let raw = image.as_raw();
    let stride = width as usize * 3;
    let mut work = vec![0f32; work_width * work_height];
    let mut samples = Vec::with_capacity(work_width * work_height);
    let mut sums = vec![0u32; work_width];
    let area = (factor * factor) as f32;
    for wy in 0..work_height {
        sums.fill(0);
        for dy in 0..factor {
            let start = (wy * factor + dy) * stride;
            let row = raw.get(start..start + work_width * factor * 3)?;
            for (sum, block) in sums.iter_mut().zip(row.chunks_exact(factor * 3)) {
                *sum += block.chunks_exact(3).map(luma).sum::<u32>();
            }
            if dy == factor / 2 {
                let middle = factor / 2 * 3;
                samples.extend(row.chunks_exact(factor * 3).map(|block| luma(&block[middle..]) as u8));
            }
        }
        for (cell, sum) in work[wy * work_width..(wy + 1) * work_width].iter_mut().zip(&sums) {
            *cell = *sum as f32 / area;
        }
    }
    let grid = grid_of(&work, work_width, work_height);
    let brightness = work.iter().sum::<f32>() / work.len() as f32;
    let grid_mean = grid.iter().sum::<f32>() / grid.len() as f32;
    let spread = (grid.iter().map(|g| (g - grid_mean).powi(2)).sum::<f32>() / grid.len() as f32).sqrt();
    let sharpness = detail_share(&work, work_width, work_height);
    Some(FrameStats { brightness, spread, sharpness, grid, samples })
}

/// Averages the working picture into the grid (each cell a near-equal block of pixels).
fn grid_of(work: &[f32], width: usize, height: usize) -> Vec<f32> {
    let mut sums = vec![0f32; GRID_WIDTH * GRID_HEIGHT];
    let mut counts = vec![0u32; GRID_WIDTH * GRID_HEIGHT];
    for y in 0..height {
        let row = y * GRID_HEIGHT / height * GRID_WIDTH;
        for x in 0..width {
            let cell = row + x * GRID_WIDTH / width;
            sums[cell] += work[y * width + x];
            counts[cell] += 1;
        }
    }
    sums.iter().zip(&counts).map(|(sum, &count)| if count == 0 { 0.0 } else { sum / count as f32 }).collect()
}

/// Mean squared difference between pixels `distance` apart, across and down.
fn difference_energy(work: &[f32], width: usize, height: usize, distance: usize) -> f32 {
    let mut across = 0f64;
    for row in work.chunks_exact(width) {
        across += row.iter().zip(&row[distance..]).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>();
    }
    let down: f64 = work.iter().zip(&work[distance * width..]).map(|(a, b)| f64::from(a - b).powi(2)).sum();
    let across_count = ((width - distance) * height) as f64;
    let down_count = (width * (height - distance)) as f64;
    (across / across_count + down / down_count) as f32
}

/// The share of fine detail: the energy gained from 1 to 2 px over that gained from 1 to 8 px.
/// Blur takes the finest detail first, so the share falls when a picture goes out of focus; it
/// does not change with brightness or contrast, and sensor noise (the same at every distance)
/// cancels out of both differences, so a noisy night picture is not taken for a sharp one.
fn detail_share(work: &[f32], width: usize, height: usize) -> Option<f32> {
    let e1 = difference_energy(work, width, height, 1);
    let e2 = difference_energy(work, width, height, 2);
    let e8 = difference_energy(work, width, height, 8);
    let structure = e8 - e1;
    (structure >= MIN_DETAIL_ENERGY).then(|| ((e2 - e1) / structure).max(0.0))
}

/// Central-difference gradients of the grid; zero on its border.
fn gradients(grid: &[f32]) -> Vec<(f32, f32)> {
    let mut out = vec![(0.0, 0.0); GRID_WIDTH * GRID_HEIGHT];
    for y in 1..GRID_HEIGHT - 1 {
        for x in 1..GRID_WIDTH - 1 {
            let i = y * GRID_WIDTH + x;
            out[i] = (grid[i + 1] - grid[i - 1], grid[i + GRID_WIDTH] - grid[i - GRID_WIDTH]);
        }
    }
    out
}

/// How well the edges of two grids line up, 0 (not at all) to 1 (the same view): the normalised
/// correlation of their gradient fields, at the best of the small shifts allowed. Gradients do
/// not change with brightness and contrast, so day and night views of one scene match, while a
/// view turned by a tenth of the frame does not.
pub fn similarity(reference: &[f32], current: &[f32]) -> f32 {
    if reference.len() != GRID_WIDTH * GRID_HEIGHT || current.len() != reference.len() {
        return 0.0;
    }
    let (a, b) = (gradients(reference), gradients(current));
    let margin = SHIFT_TOLERANCE as usize + 1;
    let mut best = 0f32;
    for dy in -SHIFT_TOLERANCE..=SHIFT_TOLERANCE {
        for dx in -SHIFT_TOLERANCE..=SHIFT_TOLERANCE {
            let (mut dot, mut energy_a, mut energy_b) = (0f64, 0f64, 0f64);
            for y in margin..GRID_HEIGHT - margin {
                for x in margin..GRID_WIDTH - margin {
                    let (ax, ay) = a[y * GRID_WIDTH + x];
                    let shifted = (y as isize + dy) as usize * GRID_WIDTH + (x as isize + dx) as usize;
                    let (bx, by) = b[shifted];
                    dot += f64::from(ax * bx + ay * by);
                    energy_a += f64::from(ax * ax + ay * ay);
                    energy_b += f64::from(bx * bx + by * by);
                }
            }
            if energy_a > 0.0 && energy_b > 0.0 {
                best = best.max((dot / (energy_a * energy_b).sqrt()) as f32);
            }
        }
    }
    best.clamp(0.0, 1.0)
}

/// Mean absolute difference of two frames' raw samples, in grey levels; None when the frames
/// differ in size.
pub fn change(earlier: &[u8], later: &[u8]) -> Option<f32> {
    if earlier.len() != later.len() || earlier.is_empty() {
        return None;
    }
    let total: u64 = earlier.iter().zip(later).map(|(a, b)| u64::from(a.abs_diff(*b))).sum();
    Some(total as f32 / earlier.len() as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::fixtures::sample;
    use crate::judge::tamper::test_pictures::*;

    fn stats(picture: &RgbImage) -> FrameStats {
        measure(picture).expect("big enough to measure")
    }

    #[test]
    fn the_same_view_matches_through_noise_and_dusk_and_other_views_do_not() {
        let dog = sample("dog.jpg");
        let reference = stats(&with_sensor_noise(&dog, 2.0, 1)).grid;
        let score = |picture: &RgbImage| similarity(&reference, &stats(picture).grid);
        for (what, view) in [
            ("noise", with_sensor_noise(&dog, 4.0, 2)),
            ("dusk", with_sensor_noise(&at_dusk(&dog), 3.0, 3)),
            ("nudged by 2 %", panned(&dog, 0.02)),
            ("slightly soft", blurred(&dog, 2.0)),
        ] {
            assert!(score(&view) > 0.8, "{what}: {}", score(&view));
        }
        for (what, view) in [
            ("person.jpg", other_scene("person.jpg", &dog)),
            ("coffee.png", other_scene("coffee.png", &dog)),
            ("panned by a tenth", panned(&dog, 0.1)),
            ("panned by a sixth", panned(&dog, 1.0 / 6.0)),
        ] {
            assert!(score(&view) < 0.3, "{what}: {}", score(&view));
        }
        assert_eq!(score(&uniform(768, 576, 128)), 0.0, "no edges, no match");
    }

    #[test]
    fn fine_detail_falls_with_blur_but_not_with_noise_or_dusk() {
        for name in ["dog.jpg", "person.jpg", "coffee.png"] {
            let picture = sample(name);
            let sharp = stats(&with_sensor_noise(&picture, 2.0, 1)).sharpness.expect("a textured view");
            let share = |view: &RgbImage| stats(view).sharpness.unwrap_or(0.0) / sharp;
            let noisy = share(&with_sensor_noise(&picture, 6.0, 2));
            let dusk = share(&with_sensor_noise(&at_dusk(&picture), 3.0, 3));
            let defocused = share(&with_sensor_noise(&blurred(&picture, 5.0), 2.0, 4));
            assert!((0.8..1.25).contains(&noisy), "{name}: noise {noisy}");
            assert!((0.7..1.5).contains(&dusk), "{name}: dusk {dusk}");
            assert!(defocused < 0.4, "{name}: blurred {defocused}");
        }
        assert_eq!(stats(&with_sensor_noise(&uniform(640, 480, 90), 3.0, 5)).sharpness, None, "nothing to focus on");
    }

    #[test]
    fn covered_pictures_are_dark_or_uniform_and_a_dusk_view_is_neither() {
        let dog = sample("dog.jpg");
        let black = stats(&with_sensor_noise(&blacked_out(&dog), 2.0, 1));
        assert!(black.brightness < 10.0, "{}", black.brightness);
        let pale = stats(&with_sensor_noise(&uniform(768, 576, 200), 3.0, 2));
        assert!(pale.spread < 1.0 && pale.brightness > 190.0, "{} {}", pale.spread, pale.brightness);
        let dusk = stats(&with_sensor_noise(&at_dusk(&dog), 3.0, 3));
        assert!(dusk.brightness > 20.0 && dusk.spread > 8.0, "{} {}", dusk.brightness, dusk.spread);
    }

    #[test]
    fn two_live_frames_differ_by_their_noise_and_a_repeated_frame_not_at_all() {
        let dog = sample("dog.jpg");
        let (a, b) = (stats(&with_sensor_noise(&dog, 2.0, 1)), stats(&with_sensor_noise(&dog, 2.0, 2)));
        let live = change(&a.samples, &b.samples).unwrap();
        assert!((1.0..4.0).contains(&live), "{live}");
        assert_eq!(change(&a.samples, &a.samples), Some(0.0));
        let smaller = stats(&image::imageops::resize(&dog, 640, 480, image::imageops::FilterType::Triangle));
        assert_eq!(change(&a.samples, &smaller.samples), None, "another frame size");
    }

    #[test]
    fn frames_too_small_to_judge_are_not_measured() {
        assert!(measure(&uniform(60, 40, 10)).is_none());
        assert!(measure(&uniform(1920, 30, 10)).is_none());
        assert!(measure(&uniform(64, 36, 10)).is_some());
        let hd = stats(&uniform(1920, 1080, 10));
        assert_eq!(hd.samples.len(), 320 * 180);
    }
}
