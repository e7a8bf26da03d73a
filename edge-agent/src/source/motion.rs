//! Motion gating, Frigate-style: each frame is shrunk to a small grey picture and compared with the
//! last frame that went to inference; only when enough of it changed does the new frame go on, so
//! a Pi does not spend a model run on an empty, still yard. A still scene is re-checked now and then.

use std::time::{Duration, Instant};

use image::RgbImage;

use super::config::MotionConfig;

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

/// Per camera: decides which frames go to inference.
#[derive(Debug)]
pub struct MotionGate {
    config: MotionConfig,
    reference: Option<GreyThumbnail>,
    last_admitted: Option<Instant>,
}

impl MotionGate {
    pub fn new(config: MotionConfig) -> Self {
        Self { config, reference: None, last_admitted: None }
    }

    /// True when the frame should go to inference; it then becomes the new reference.
    pub fn admit(&mut self, image: &RgbImage, now: Instant) -> bool {
        if !self.config.enabled {
            return true;
        }
        let thumbnail = GreyThumbnail::of(image);
        let moved = match &self.reference {
            None => true,
            Some(reference) => {
                thumbnail.changed_share(reference, self.config.pixel_threshold) >= self.config.min_changed_area
            }
        };
        let stale = self
            .last_admitted
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs_f64(self.config.max_still_secs));
        if moved || stale {
            self.reference = Some(thumbnail);
            self.last_admitted = Some(now);
            true
        } else {
            false
        }
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

    #[test]
    fn the_same_scene_again_is_skipped_and_a_new_one_admitted() {
        let dog = sample("dog.jpg");
        let mut gate = MotionGate::new(MotionConfig::default());
        let start = Instant::now();
        assert!(gate.admit(&dog, start), "the first frame always goes to inference");
        assert!(!gate.admit(&dog.clone(), start + Duration::from_secs(1)), "nothing moved");
        let mut person = sample("person.jpg");
        person = image::imageops::resize(&person, 768, 576, image::imageops::FilterType::Triangle);
        assert!(gate.admit(&person, start + Duration::from_secs(2)), "a different scene moved");
    }

    #[test]
    fn sensor_noise_below_the_threshold_is_not_motion_but_a_moving_object_is() {
        let dog = sample("dog.jpg");
        let mut gate = MotionGate::new(MotionConfig::default());
        let start = Instant::now();
        gate.admit(&dog, start);
        let mut noisy = dog.clone();
        for (i, pixel) in noisy.pixels_mut().enumerate() {
            let noise = ((i.wrapping_mul(2654435761) >> 11) % 13) as i16 - 6;
            for c in &mut pixel.0 {
                *c = (i16::from(*c) + noise).clamp(0, 255) as u8;
            }
        }
        assert!(!gate.admit(&noisy, start + Duration::from_millis(100)), "±6 grey levels of noise");
        // A bright 120×90 object (2.4 % of the frame) enters the picture.
        let mut object = dog.clone();
        for y in 300..390 {
            for x in 40..160 {
                object.put_pixel(x, y, image::Rgb([250, 250, 250]));
            }
        }
        assert!(gate.admit(&object, start + Duration::from_millis(200)));
    }

    #[test]
    fn a_still_scene_is_rechecked_after_max_still_secs() {
        let dog = sample("dog.jpg");
        let mut gate = MotionGate::new(MotionConfig { max_still_secs: 30.0, ..MotionConfig::default() });
        let start = Instant::now();
        assert!(gate.admit(&dog, start));
        assert!(!gate.admit(&dog, start + Duration::from_secs(29)));
        assert!(gate.admit(&dog, start + Duration::from_secs(31)));
    }

    #[test]
    fn a_disabled_gate_admits_everything() {
        let dog = sample("dog.jpg");
        let mut gate = MotionGate::new(MotionConfig { enabled: false, ..MotionConfig::default() });
        assert!((0..3).all(|_| gate.admit(&dog, Instant::now())));
    }

    #[test]
    fn the_thumbnail_keeps_the_aspect_ratio_at_about_80_pixels_wide() {
        let thumbnail = GreyThumbnail::of(&RgbImage::new(1920, 1080));
        assert_eq!((thumbnail.width, thumbnail.height), (80, 45));
        let thumbnail = GreyThumbnail::of(&RgbImage::new(768, 576));
        assert_eq!((thumbnail.width, thumbnail.height), (77, 58));
    }
}
