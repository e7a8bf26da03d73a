//! Finds static foreground without a trained model: a long-term background (the empty scene, learnt
//! over minutes) and a short-term one (learnt over seconds). A cell that differs from the long-term
//! background but matches the short-term one is something new that has stopped moving: dropped
//! garbage, spilled muck, an overflowing bin. People and vehicles found by the detector are left
//! out. The model works on a small grid (the frame scaled down), so it costs little per frame.

use chrono::{DateTime, Utc};
use image::RgbImage;

use crate::infer::BoundingBox;
use crate::judge::config::BackgroundConfig;
use crate::judge::tracker::seconds_between;
use crate::judge::zones::Homography;

/// While a cell shows foreground, the long-term background learns it this many times slower, so
/// an overflowing bin stays overflowing for hours but a permanent change is eventually accepted.
const FOREGROUND_LEARNING_SLOWDOWN: f32 = 50.0;
/// Boxes of people and vehicles grow by this share on each side before their cells are cleared.
const EXCLUDE_MARGIN: f32 = 0.15;
/// More of the frame than this changed at once: the light changed or the camera moved, not garbage.
const SCENE_CHANGE_SHARE: f32 = 0.6;

pub struct BackgroundModel {
    settings: BackgroundConfig,
    cols: usize,
    rows: usize,
    frame_size: (u32, u32),
    short_term: Vec<f32>,
    long_term: Vec<f32>,
    last_update: Option<DateTime<Utc>>,
}

/// Cells of static foreground in one frame.
#[derive(Debug, Clone)]
pub struct StaticForeground {
    pub cols: usize,
    pub rows: usize,
    /// Frame pixels per cell.
    pub cell_width: f32,
    pub cell_height: f32,
    pub mask: Vec<bool>,
    /// Per cell, how far it is from the long-term background (0-255).
    pub contrast: Vec<f32>,
}

/// A connected patch of static foreground.
#[derive(Debug, Clone, PartialEq)]
pub struct Blob {
    pub bbox: BoundingBox,
    pub cells: Vec<usize>,
    pub area_px: f64,
    /// Mean difference from the empty scene, scaled to 0..1: how sure the model is.
    pub score: f32,
}

impl BackgroundModel {
    pub fn new(settings: BackgroundConfig) -> Self {
        Self {
            settings,
            cols: 0,
            rows: 0,
            frame_size: (0, 0),
            short_term: Vec::new(),
            long_term: Vec::new(),
            last_update: None,
        }
    }

    /// Learns from one frame and returns its static foreground; cells inside `exclude` (people,
    /// vehicles) never count.
    pub fn update(&mut self, frame: &RgbImage, now: DateTime<Utc>, exclude: &[BoundingBox]) -> StaticForeground {
        let (width, height) = frame.dimensions();
        let cols = (self.settings.grid_width.min(width.max(1))) as usize;
        let rows = ((height as f32 * cols as f32 / width.max(1) as f32).round() as usize).max(1);
        let pixels = cell_means(frame, cols, rows);
        let mut foreground = StaticForeground {
            cols,
            rows,
            cell_width: width as f32 / cols as f32,
            cell_height: height as f32 / rows as f32,
            mask: vec![false; cols * rows],
            contrast: vec![0.0; cols * rows],
        };
        let elapsed = self.last_update.map(|last| seconds_between(last, now));
        // A new camera size, the first frame, or time going backwards: start learning afresh.
        let Some(elapsed) = elapsed.filter(|&e| e >= 0.0 && (width, height) == self.frame_size) else {
            self.cols = cols;
            self.rows = rows;
            self.frame_size = (width, height);
            self.short_term = pixels.clone();
            self.long_term = pixels;
            self.last_update = Some(now);
            return foreground;
        };
        self.last_update = Some(now);
        let short_rate = 1.0 - (-elapsed / self.settings.short_term_secs).exp() as f32;
        let long_rate = 1.0 - (-elapsed / self.settings.long_term_secs).exp() as f32;
        let threshold = self.settings.threshold;
        let mut changed = 0usize;
        for cell in 0..cols * rows {
            let i = cell * 3;
            let mut from_long = 0.0f32;
            let mut from_short = 0.0f32;
            for c in 0..3 {
                from_long = from_long.max((pixels[i + c] - self.long_term[i + c]).abs());
                from_short = from_short.max((pixels[i + c] - self.short_term[i + c]).abs());
            }
            let differs = from_long > threshold;
            changed += usize::from(differs);
            foreground.mask[cell] = differs && from_short <= threshold;
            foreground.contrast[cell] = from_long;
            let long_cell_rate = if differs { long_rate / FOREGROUND_LEARNING_SLOWDOWN } else { long_rate };
            for c in 0..3 {
                self.short_term[i + c] += short_rate * (pixels[i + c] - self.short_term[i + c]);
                self.long_term[i + c] += long_cell_rate * (pixels[i + c] - self.long_term[i + c]);
            }
        }
        if changed as f32 > SCENE_CHANGE_SHARE * (cols * rows) as f32 {
            tracing::debug!("most of the frame changed at once; relearning the background");
            self.long_term.clone_from(&pixels);
            self.short_term = pixels;
            foreground.mask.fill(false);
            return foreground;
        }
        for b in exclude {
            // Detector boxes are often a little tight; a sliver of a parked truck is not debris.
            let (mx, my) = (b.width() * EXCLUDE_MARGIN, b.height() * EXCLUDE_MARGIN);
            foreground.clear_box(&BoundingBox { x1: b.x1 - mx, y1: b.y1 - my, x2: b.x2 + mx, y2: b.y2 + my });
        }
        foreground
    }
}

/// Mean colour of each cell of a `cols`×`rows` grid over the frame (RGB, 3 values per cell).
fn cell_means(frame: &RgbImage, cols: usize, rows: usize) -> Vec<f32> {
    let (width, height) = (frame.width() as usize, frame.height() as usize);
    let mut sums = vec![0u32; cols * rows * 3];
    let mut counts = vec![0u32; cols * rows];
    let column_of: Vec<usize> = (0..width).map(|x| x * cols / width.max(1)).collect();
    for (y, row) in frame.as_raw().chunks_exact(width * 3).enumerate() {
        let r = y * rows / height.max(1);
        for (x, pixel) in row.chunks_exact(3).enumerate() {
            let cell = r * cols + column_of[x];
            counts[cell] += 1;
            for c in 0..3 {
                sums[cell * 3 + c] += u32::from(pixel[c]);
            }
        }
    }
    sums.iter().enumerate().map(|(i, &sum)| sum as f32 / counts[i / 3].max(1) as f32).collect()
}

impl StaticForeground {
    fn clear_box(&mut self, b: &BoundingBox) {
        for r in 0..self.rows {
            for c in 0..self.cols {
                let (x, y) = self.cell_centre(r * self.cols + c);
                if x >= b.x1 && x <= b.x2 && y >= b.y1 && y <= b.y2 {
                    self.mask[r * self.cols + c] = false;
                }
            }
        }
    }

    /// Centre of a cell in frame pixels.
    pub fn cell_centre(&self, cell: usize) -> (f32, f32) {
        let (r, c) = (cell / self.cols, cell % self.cols);
        ((c as f32 + 0.5) * self.cell_width, (r as f32 + 0.5) * self.cell_height)
    }

    /// Share of the cells in `zone` (a mask of the same grid) that are static foreground.
    pub fn coverage(&self, zone: &[bool]) -> f32 {
        let (mut inside, mut covered) = (0usize, 0usize);
        for (cell, &in_zone) in zone.iter().enumerate() {
            if in_zone {
                inside += 1;
                covered += usize::from(self.mask.get(cell).copied().unwrap_or(false));
            }
        }
        if inside == 0 {
            0.0
        } else {
            covered as f32 / inside as f32
        }
    }

    /// Connected patches of static foreground inside `zone`, at least `min_area_px`. Cells up to one
    /// cell apart belong together: a heap with a few cells that happen to match the ground is one
    /// heap, not several.
    pub fn blobs(&self, zone: &[bool], min_area_px: f64) -> Vec<Blob> {
        let cell_area = f64::from(self.cell_width) * f64::from(self.cell_height);
        let in_zone = |cell: usize| zone.get(cell).copied().unwrap_or(false);
        let wanted: Vec<bool> = (0..self.mask.len()).map(|cell| self.mask[cell] && in_zone(cell)).collect();
        let mut seen = vec![false; self.mask.len()];
        let mut blobs = Vec::new();
        for start in 0..self.mask.len() {
            if seen[start] || !wanted[start] {
                continue;
            }
            let mut cells = Vec::new();
            let mut stack = vec![start];
            seen[start] = true;
            while let Some(cell) = stack.pop() {
                cells.push(cell);
                let (r, c) = ((cell / self.cols) as i64, (cell % self.cols) as i64);
                for dr in -2..=2i64 {
                    for dc in -2..=2i64 {
                        let (nr, nc) = (r + dr, c + dc);
                        if nr < 0 || nc < 0 || nr >= self.rows as i64 || nc >= self.cols as i64 {
                            continue;
                        }
                        let next = nr as usize * self.cols + nc as usize;
                        if !seen[next] && wanted[next] {
                            seen[next] = true;
                            stack.push(next);
                        }
                    }
                }
            }
            let area_px = cells.len() as f64 * cell_area;
            if area_px < min_area_px {
                continue;
            }
            let (mut r1, mut c1, mut r2, mut c2) = (usize::MAX, usize::MAX, 0, 0);
            for &cell in &cells {
                let (r, c) = (cell / self.cols, cell % self.cols);
                (r1, c1, r2, c2) = (r1.min(r), c1.min(c), r2.max(r), c2.max(c));
            }
            let contrast = cells.iter().map(|&c| self.contrast[c]).sum::<f32>() / cells.len() as f32;
            blobs.push(Blob {
                bbox: BoundingBox {
                    x1: c1 as f32 * self.cell_width,
                    y1: r1 as f32 * self.cell_height,
                    x2: (c2 + 1) as f32 * self.cell_width,
                    y2: (r2 + 1) as f32 * self.cell_height,
                },
                cells,
                area_px,
                score: (contrast / 100.0).min(1.0),
            });
        }
        blobs
    }

    /// Ground area of a blob in m², summing each cell's footprint through the homography.
    pub fn area_m2(&self, blob: &Blob, ground: &Homography) -> f64 {
        let cell_area = f64::from(self.cell_width) * f64::from(self.cell_height);
        blob.cells
            .iter()
            .map(|&cell| {
                let (x, y) = self.cell_centre(cell);
                ground.pixel_area_m2(f64::from(x), f64::from(y)) * cell_area
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::fixtures::{at, muck, paste, sample};

    fn settings() -> BackgroundConfig {
        BackgroundConfig { grid_width: 96, ..BackgroundConfig::default() }
    }

    /// dog.jpg with a brown patch (muck) dropped on the pavement at (560, 430).
    fn with_dropped_patch() -> RgbImage {
        paste(&sample("dog.jpg"), &muck(), 560, 430)
    }

    #[test]
    fn something_dropped_and_left_becomes_static_foreground_after_a_few_seconds() {
        let empty = sample("dog.jpg");
        let dropped = with_dropped_patch();
        let mut model = BackgroundModel::new(settings());
        for i in 0..20 {
            let fg = model.update(&empty, at(i as f64), &[]);
            assert!(fg.mask.iter().all(|&m| !m), "an unchanged scene has no foreground");
        }
        // Just dropped: it differs from both backgrounds, so it is moving, not static.
        let fg = model.update(&dropped, at(20.0), &[]);
        let everywhere = vec![true; fg.mask.len()];
        assert!(fg.blobs(&everywhere, 100.0).is_empty());
        let mut fg = fg;
        for i in 1..=10 {
            fg = model.update(&dropped, at(20.0 + i as f64), &[]);
        }
        let blobs = fg.blobs(&everywhere, 100.0);
        assert_eq!(blobs.len(), 1, "{blobs:?}");
        let blob = &blobs[0];
        let patch = BoundingBox { x1: 560.0, y1: 430.0, x2: 680.0, y2: 490.0 };
        assert!(crate::infer::detect::iou(&blob.bbox, &patch) > 0.6, "{:?}", blob.bbox);
        assert!((blob.area_px - 7200.0).abs() < 2500.0, "{}", blob.area_px);
        // 100 px per metre: 120×60 px is 0.72 m².
        let ground = Homography::new([[0.01, 0.0, 0.0], [0.0, 0.01, 0.0], [0.0, 0.0, 1.0]]).unwrap();
        let m2 = fg.area_m2(blob, &ground);
        assert!((m2 - 0.72).abs() < 0.25, "{m2}");
    }

    #[test]
    fn a_detected_vehicle_or_person_is_never_static_foreground() {
        let empty = sample("dog.jpg");
        let dropped = with_dropped_patch();
        let mut model = BackgroundModel::new(settings());
        for i in 0..5 {
            model.update(&empty, at(i as f64), &[]);
        }
        let parked = BoundingBox { x1: 540.0, y1: 410.0, x2: 700.0, y2: 500.0 };
        let mut fg = model.update(&dropped, at(5.0), &[parked]);
        for i in 6..20 {
            fg = model.update(&dropped, at(i as f64), &[parked]);
        }
        assert!(fg.blobs(&vec![true; fg.mask.len()], 100.0).is_empty());
    }

    #[test]
    fn a_whole_frame_change_is_relearnt_not_reported() {
        let mut model = BackgroundModel::new(settings());
        let day = sample("dog.jpg");
        let mut dusk = day.clone();
        for p in dusk.pixels_mut() {
            p.0 = p.0.map(|v| v / 3);
        }
        for i in 0..5 {
            model.update(&day, at(i as f64), &[]);
        }
        for i in 5..20 {
            let fg = model.update(&dusk, at(i as f64), &[]);
            assert!(fg.mask.iter().all(|&m| !m), "frame {i}");
        }
    }

    #[test]
    fn coverage_counts_only_cells_of_the_zone() {
        let fg = StaticForeground {
            cols: 4,
            rows: 1,
            cell_width: 10.0,
            cell_height: 10.0,
            mask: vec![true, true, false, false],
            contrast: vec![90.0; 4],
        };
        assert_eq!(fg.coverage(&[true, true, true, true]), 0.5);
        assert_eq!(fg.coverage(&[true, false, false, false]), 1.0);
        assert_eq!(fg.coverage(&[false; 4]), 0.0);
    }
}
