//! Motion, Frigate-style: each frame is shrunk to a small grey picture; a cell moved where it
//! changed since the frame before and also differs from a background that adapts slowly (a
//! temporal average: sensor noise and a flicker back to what the scene was are no motion). The
//! cells that moved form a mask, its connected parts the regions where something moved. A frame
//! where nothing moved does not go to inference (a Pi does not spend a model run on an empty, still
//! yard), except now and then so still objects are found; inference looks at the regions
//! (`infer::regions`).

use std::time::{Duration, Instant};

use image::RgbImage;

use super::config::MotionConfig;
use crate::infer::BoundingBox;

/// Width of the grey picture compared; about Frigate's detect size, and cheap to compute.
const GREY_WIDTH: u32 = 80;

/// A small grey picture: block averages of the frame's luma.
#[derive(Debug, Clone, PartialEq)]
pub struct GreyThumbnail {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl GreyThumbnail {
    pub fn of(image: &RgbImage) -> Self {
        let (w, h) = image.dimensions();
        let block = w.div_ceil(GREY_WIDTH).max(1);
        let (width, height) = (w.div_ceil(block), h.div_ceil(block));
        let mut sums = vec![0u32; (width * height) as usize];
        let mut counts = vec![0u32; (width * height) as usize];
        for (y, row) in image.rows().enumerate() {
            let base = (y as u32 / block * width) as usize;
            for (x, pixel) in row.enumerate() {
                let [r, g, b] = pixel.0;
                // BT.601 luma in integer arithmetic.
                let luma = (77 * u32::from(r) + 150 * u32::from(g) + 29 * u32::from(b)) >> 8;
                let cell = base + (x as u32 / block) as usize;
                sums[cell] += luma;
                counts[cell] += 1;
            }
        }
        let pixels = sums.iter().zip(&counts).map(|(s, c)| (s / (*c).max(1)) as u8).collect();
        Self { width, height, pixels }
    }

    /// Share of pixels whose grey level differs by more than `threshold`; 1.0 when sizes differ.
    pub fn changed_share(&self, other: &Self, threshold: u8) -> f64 {
        if (self.width, self.height) != (other.width, other.height) || self.pixels.is_empty() {
            return 1.0;
        }
        let changed = self.pixels.iter().zip(&other.pixels).filter(|(a, b)| a.abs_diff(**b) > threshold).count();
        changed as f64 / self.pixels.len() as f64
    }
}

/// Where something moved in a frame, for inference: the regions in frame pixels, and how often
/// the whole frame must be looked at all the same.
#[derive(Debug, Clone, PartialEq)]
pub struct Motion {
    pub regions: Vec<BoundingBox>,
    /// `max_still_secs`: still objects are found on the whole frame at least this often.
    pub whole_every: Duration,
    /// Infer on the regions (else the whole frame of a frame with motion).
    pub by_region: bool,
}

/// The background follows the scene with this time constant: what stays still this long stops
/// being motion.
const BACKGROUND_SECS: f64 = 5.0;

/// A region of fewer motion cells than this is noise (a flickering leaf, a compression block).
const MIN_REGION_CELLS: usize = 2;

/// What the detector made of one frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Look {
    /// Something moved (or it is the first frame, `regions` then the whole frame).
    Moved(Motion),
    /// Nothing moved, but the whole frame is due (`max_still_secs` since a frame went on).
    Due(Motion),
    /// Nothing moved: the frame need not go to inference.
    Still,
}

/// Per camera: a background, and when a frame last went to inference.
#[derive(Debug)]
pub struct MotionDetector {
    config: MotionConfig,
    background: Option<Background>,
    last_passed: Option<Instant>,
    last_seen: Option<Instant>,
}

#[derive(Debug)]
struct Background {
    width: u32,
    height: u32,
    /// Frame pixels per cell.
    block: u32,
    levels: Vec<f32>,
    /// The frame before, shrunk.
    previous: Vec<u8>,
}

impl MotionDetector {
    pub fn new(config: MotionConfig) -> Self {
        Self { config, background: None, last_passed: None, last_seen: None }
    }

    /// Compares the frame with the background (and lets the background follow it).
    pub fn look(&mut self, image: &RgbImage, now: Instant) -> Look {
        let (frame_width, frame_height) = image.dimensions();
        let whole_frame = BoundingBox { x1: 0.0, y1: 0.0, x2: frame_width as f32, y2: frame_height as f32 };
        let motion = |regions| Motion {
            regions,
            whole_every: Duration::from_secs_f64(self.config.max_still_secs),
            by_region: self.config.regions,
        };
        if !self.config.enabled {
            return Look::Moved(motion(vec![whole_frame]));
        }
        let thumbnail = GreyThumbnail::of(image);
        let since_last = self.last_seen.map(|at| now.saturating_duration_since(at).as_secs_f64());
        self.last_seen = Some(now);
        let fits = self.background.as_ref().is_some_and(|b| (b.width, b.height) == (thumbnail.width, thumbnail.height));
        if !fits {
            let block = frame_width.div_ceil(GREY_WIDTH).max(1);
            let levels = thumbnail.pixels.iter().map(|&p| f32::from(p)).collect();
            let previous = thumbnail.pixels.clone();
            self.background =
                Some(Background { width: thumbnail.width, height: thumbnail.height, block, levels, previous });
            self.last_passed = Some(now);
            return Look::Moved(motion(vec![whole_frame]));
        }
        let Some(background) = self.background.as_mut() else { return Look::Moved(motion(vec![whole_frame])) };
        let threshold = f32::from(self.config.pixel_threshold);
        let moving: Vec<bool> = thumbnail
            .pixels
            .iter()
            .zip(&background.levels)
            .zip(&background.previous)
            .map(|((&p, &b), &before)| {
                (f32::from(p) - b).abs() > threshold && p.abs_diff(before) > self.config.pixel_threshold
            })
            .collect();
        background.previous.clone_from(&thumbnail.pixels);
        // The background follows the frame, by how much time passed since the last one.
        let weight = 1.0 - (-since_last.unwrap_or(0.0) / BACKGROUND_SECS).exp() as f32;
        for (level, &pixel) in background.levels.iter_mut().zip(&thumbnail.pixels) {
            *level += (f32::from(pixel) - *level) * weight;
        }
        let share = moving.iter().filter(|&&m| m).count() as f64 / moving.len().max(1) as f64;
        let due = self
            .last_passed
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs_f64(self.config.max_still_secs));
        if share >= self.config.min_changed_area {
            self.last_passed = Some(now);
            let regions = background.regions(&moving, (frame_width, frame_height));
            return Look::Moved(motion(regions));
        }
        if due {
            self.last_passed = Some(now);
            return Look::Due(motion(Vec::new()));
        }
        Look::Still
    }
}

impl Background {
    /// The bounding boxes (frame pixels) of the connected parts of the motion mask, each grown by
    /// a cell so that the parts of one moving object join up.
    fn regions(&self, moving: &[bool], (frame_width, frame_height): (u32, u32)) -> Vec<BoundingBox> {
        let (width, height) = (self.width as usize, self.height as usize);
        let at = |x: usize, y: usize| moving[y * width + x];
        let grown: Vec<bool> = (0..width * height)
            .map(|i| {
                let (x, y) = (i % width, i / width);
                let near = |d: usize, n: usize| d.saturating_sub(1)..=(d + 1).min(n - 1);
                near(y, height).any(|ny| near(x, width).any(|nx| at(nx, ny)))
            })
            .collect();
        let mut seen = vec![false; grown.len()];
        let mut regions = Vec::new();
        for start in 0..grown.len() {
            if !grown[start] || seen[start] {
                continue;
            }
            let (mut x1, mut y1, mut x2, mut y2) = (usize::MAX, usize::MAX, 0, 0);
            let mut cells = 0;
            let mut stack = vec![start];
            seen[start] = true;
            while let Some(cell) = stack.pop() {
                let (x, y) = (cell % width, cell / width);
                (x1, y1, x2, y2) = (x1.min(x), y1.min(y), x2.max(x), y2.max(y));
                cells += usize::from(moving[cell]);
                for ny in y.saturating_sub(1)..=(y + 1).min(height - 1) {
                    for nx in x.saturating_sub(1)..=(x + 1).min(width - 1) {
                        let next = ny * width + nx;
                        if grown[next] && !seen[next] {
                            seen[next] = true;
                            stack.push(next);
                        }
                    }
                }
            }
            if cells < MIN_REGION_CELLS {
                continue;
            }
            let block = self.block as f32;
            regions.push(BoundingBox {
                x1: x1 as f32 * block,
                y1: y1 as f32 * block,
                x2: ((x2 + 1) as f32 * block).min(frame_width as f32),
                y2: ((y2 + 1) as f32 * block).min(frame_height as f32),
            });
        }
        regions
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn sample(name: &str) -> RgbImage {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/samples").join(name);
        image::open(path).unwrap().to_rgb8()
    }

    fn moved(look: &Look) -> bool {
        matches!(look, Look::Moved(_))
    }

    fn regions(look: &Look) -> Vec<BoundingBox> {
        match look {
            Look::Moved(motion) | Look::Due(motion) => motion.regions.clone(),
            Look::Still => Vec::new(),
        }
    }

    /// A bright `w`×`h` object at (`x`, `y`) on the picture.
    fn with_object(picture: &RgbImage, x: u32, y: u32, w: u32, h: u32) -> RgbImage {
        let mut out = picture.clone();
        for py in y..y + h {
            for px in x..x + w {
                out.put_pixel(px, py, image::Rgb([250, 250, 250]));
            }
        }
        out
    }

    #[test]
    fn the_same_scene_again_is_still_and_a_new_one_moves() {
        let dog = sample("dog.jpg");
        let mut motion = MotionDetector::new(MotionConfig::default());
        let start = Instant::now();
        assert!(moved(&motion.look(&dog, start)), "the first frame always goes to inference");
        assert_eq!(motion.look(&dog.clone(), start + Duration::from_secs(1)), Look::Still, "nothing moved");
        let mut person = sample("person.jpg");
        person = image::imageops::resize(&person, 768, 576, image::imageops::FilterType::Triangle);
        assert!(moved(&motion.look(&person, start + Duration::from_secs(2))), "a different scene moved");
    }

    #[test]
    fn sensor_noise_below_the_threshold_is_not_motion_but_a_moving_object_is() {
        let dog = sample("dog.jpg");
        let mut motion = MotionDetector::new(MotionConfig::default());
        let start = Instant::now();
        motion.look(&dog, start);
        let mut noisy = dog.clone();
        for (i, pixel) in noisy.pixels_mut().enumerate() {
            let noise = ((i.wrapping_mul(2654435761) >> 11) % 13) as i16 - 6;
            for c in &mut pixel.0 {
                *c = (i16::from(*c) + noise).clamp(0, 255) as u8;
            }
        }
        assert_eq!(motion.look(&noisy, start + Duration::from_millis(100)), Look::Still, "±6 grey levels of noise");
        // A bright 120×90 object (2.4 % of the frame) enters the picture.
        let object = with_object(&dog, 40, 300, 120, 90);
        assert!(moved(&motion.look(&object, start + Duration::from_millis(200))));
    }

    /// Two things move in different corners: two regions, each around its mover (within a cell
    /// of the grey picture, 10 pixels here), none around the still rest of the scene.
    #[test]
    fn each_moving_thing_gets_its_own_region_around_it() {
        let dog = sample("dog.jpg"); // 768×576: cells of 10 pixels
        let mut motion = MotionDetector::new(MotionConfig::default());
        let start = Instant::now();
        motion.look(&dog, start);
        let two = with_object(&with_object(&dog, 40, 300, 120, 90), 600, 40, 80, 60);
        let found = regions(&motion.look(&two, start + Duration::from_millis(200)));
        assert_eq!(found.len(), 2, "{found:?}");
        let around = |r: &BoundingBox, (x, y, w, h): (f32, f32, f32, f32)| {
            r.x1 <= x && r.y1 <= y && r.x2 >= x + w && r.y2 >= y + h && r.x1 >= x - 25.0 && r.x2 <= x + w + 25.0
        };
        assert!(found.iter().any(|r| around(r, (40.0, 300.0, 120.0, 90.0))), "{found:?}");
        assert!(found.iter().any(|r| around(r, (600.0, 40.0, 80.0, 60.0))), "{found:?}");
    }

    /// Something that came and stopped is no motion from the next frame on (the whole frame, due
    /// now and then, and the crops around what was found look at it); a flicker back to what
    /// the background holds is none either; while it moves on, it is.
    #[test]
    fn what_stopped_or_flickered_back_is_not_motion_but_what_moves_on_is() {
        let dog = sample("dog.jpg");
        let mut motion = MotionDetector::new(MotionConfig { max_still_secs: 600.0, ..MotionConfig::default() });
        let start = Instant::now();
        motion.look(&dog, start);
        let at = |tenths: u64| start + Duration::from_millis(100 * tenths);
        assert_eq!(motion.look(&dog, at(1)), Look::Still);
        let parked = with_object(&dog, 40, 300, 120, 90);
        assert!(moved(&motion.look(&parked, at(2))), "it came");
        assert_eq!(motion.look(&parked, at(3)), Look::Still, "it stopped");
        let flicker = with_object(&parked, 400, 400, 60, 60);
        assert!(moved(&motion.look(&flicker, at(4))));
        assert_eq!(motion.look(&parked, at(5)), Look::Still, "back to the background: no motion");
        let further = with_object(&dog, 200, 300, 120, 90);
        let found = regions(&motion.look(&further, at(6)));
        assert!(found.iter().any(|r| r.x1 <= 200.0 && r.x2 >= 320.0), "it moves on: {found:?}");
    }

    /// A scene that changes slowly (a fade, the light) is never motion: the whole frame is due
    /// after `max_still_secs` all the same.
    #[test]
    fn a_still_scene_gets_the_whole_frame_after_max_still_secs() {
        let dog = sample("dog.jpg");
        let mut motion = MotionDetector::new(MotionConfig { max_still_secs: 30.0, ..MotionConfig::default() });
        let start = Instant::now();
        assert!(moved(&motion.look(&dog, start)));
        assert_eq!(motion.look(&dog, start + Duration::from_secs(29)), Look::Still);
        let due = motion.look(&dog, start + Duration::from_secs(31));
        assert!(matches!(&due, Look::Due(m) if m.regions.is_empty() && m.whole_every == Duration::from_secs(30)));
        assert_eq!(motion.look(&dog, start + Duration::from_secs(32)), Look::Still, "due again 30 s later");
    }

    #[test]
    fn with_motion_off_every_frame_goes_on_whole() {
        let dog = sample("dog.jpg");
        let mut motion = MotionDetector::new(MotionConfig { enabled: false, ..MotionConfig::default() });
        assert!((0..3).all(|_| regions(&motion.look(&dog, Instant::now()))
            == vec![BoundingBox { x1: 0.0, y1: 0.0, x2: 768.0, y2: 576.0 }]));
    }

    #[test]
    fn the_thumbnail_keeps_the_aspect_ratio_at_about_80_pixels_wide() {
        let thumbnail = GreyThumbnail::of(&RgbImage::new(1920, 1080));
        assert_eq!((thumbnail.width, thumbnail.height), (80, 45));
        let thumbnail = GreyThumbnail::of(&RgbImage::new(768, 576));
        assert_eq!((thumbnail.width, thumbnail.height), (77, 58));
    }
}
