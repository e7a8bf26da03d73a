//! Inference where something moved: a camera with motion on sends the regions that moved
//! (`source::motion`); a detector runs on crops around them and around the objects found on the
//! camera lately (so a person who stops stays found, and stays blurred), each crop at least the
//! detector's input size and merged with any it overlaps, and its boxes come back into frame
//! pixels. The whole frame is inferred instead when it is due (`max_still_secs`), when the crops
//! would cover most of it, and when a box touches a crop's edge inside the frame: an object cut
//! by a crop is found whole, once.

use chrono::{DateTime, Utc};

use super::{BoundingBox, Findings, ModelResult};
use crate::source::Frame;

/// Crops covering more than this share of the frame cost more than the whole frame.
const MOST_CROPPED: f64 = 0.6;
/// More crops than this: the whole frame, once, is cheaper.
const MOST_CROPS: usize = 3;
/// Around a region, this share of its size more (at least `MARGIN_PX`): an object that moved a
/// little since the frame the region came from is still inside.
const MARGIN_SHARE: f32 = 0.15;
const MARGIN_PX: f32 = 16.0;
/// An object found on the camera is looked at again on its region frames for this long after it
/// was last found.
const RECENT_SECS: i64 = 10;
/// A box within this many pixels of a crop's edge touches it.
const EDGE_PX: f32 = 2.0;

/// A rectangle of the frame, in whole pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Crop {
    fn right(&self) -> u32 {
        self.x + self.width
    }

    fn bottom(&self) -> u32 {
        self.y + self.height
    }

    fn area(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    fn overlaps(&self, other: &Crop) -> bool {
        self.x < other.right() && other.x < self.right() && self.y < other.bottom() && other.y < self.bottom()
    }

    fn union(&self, other: &Crop) -> Crop {
        let (x, y) = (self.x.min(other.x), self.y.min(other.y));
        Crop { x, y, width: self.right().max(other.right()) - x, height: self.bottom().max(other.bottom()) - y }
    }

    /// Grown to at least `min` (width, height) and to the detector's shape, centred on itself,
    /// kept inside the frame.
    fn fitted(self, min: (u32, u32), frame: (u32, u32)) -> Crop {
        let shape = min.0 as f32 / min.1.max(1) as f32;
        let mut width = self.width.max(min.0) as f32;
        let mut height = self.height.max(min.1) as f32;
        if width / height < shape {
            width = height * shape;
        } else {
            height = width / shape;
        }
        let width = (width.ceil() as u32).min(frame.0);
        let height = (height.ceil() as u32).min(frame.1);
        let centre = |start: u32, size: u32, new: u32, limit: u32| {
            let wanted = (start + size / 2).saturating_sub(new / 2);
            wanted.min(limit - new)
        };
        Crop {
            x: centre(self.x, self.width, width, frame.0),
            y: centre(self.y, self.height, height, frame.1),
            width,
            height,
        }
    }

    /// Whether `b` (frame pixels) touches an edge of this crop that lies inside the frame: what
    /// is beyond that edge was not looked at.
    fn cuts(&self, b: &BoundingBox, frame: (u32, u32)) -> bool {
        (self.x > 0 && b.x1 <= self.x as f32 + EDGE_PX)
            || (self.y > 0 && b.y1 <= self.y as f32 + EDGE_PX)
            || (self.right() < frame.0 && b.x2 >= self.right() as f32 - EDGE_PX)
            || (self.bottom() < frame.1 && b.y2 >= self.bottom() as f32 - EDGE_PX)
    }
}

/// What a detector looks at on one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Whole,
    Crops(Vec<Crop>),
}

/// The crops that cover `wanted` (frame pixels) for a detector of `input` (width, height): each
/// box with a margin, at least the input size, merged until none overlap; the whole frame when
/// they would cover most of it or be many.
pub fn plan(frame: (u32, u32), input: (u32, u32), wanted: &[BoundingBox]) -> Plan {
    if wanted.is_empty() || frame.0 == 0 || frame.1 == 0 {
        return Plan::Whole;
    }
    let mut crops: Vec<Crop> = wanted
        .iter()
        .map(|b| {
            let margin_x = (b.width() * MARGIN_SHARE).max(MARGIN_PX);
            let margin_y = (b.height() * MARGIN_SHARE).max(MARGIN_PX);
            let x1 = (b.x1 - margin_x).clamp(0.0, frame.0 as f32) as u32;
            let y1 = (b.y1 - margin_y).clamp(0.0, frame.1 as f32) as u32;
            let x2 = (b.x2 + margin_x).clamp(0.0, frame.0 as f32).ceil() as u32;
            let y2 = (b.y2 + margin_y).clamp(0.0, frame.1 as f32).ceil() as u32;
            Crop { x: x1, y: y1, width: x2.saturating_sub(x1).max(1), height: y2.saturating_sub(y1).max(1) }
                .fitted(input, frame)
        })
        .collect();
    // Merge until no two overlap: a merged crop may reach a third.
    loop {
        let pair = (0..crops.len())
            .flat_map(|i| (i + 1..crops.len()).map(move |j| (i, j)))
            .find(|&(i, j)| crops[i].overlaps(&crops[j]));
        let Some((i, j)) = pair else { break };
        let merged = crops[i].union(&crops[j]).fitted(input, frame);
        crops.swap_remove(j);
        crops[i] = merged;
    }
    let covered: u64 = crops.iter().map(Crop::area).sum();
    let frame_area = u64::from(frame.0) * u64::from(frame.1);
    if crops.len() > MOST_CROPS || covered as f64 >= frame_area as f64 * MOST_CROPPED {
        return Plan::Whole;
    }
    Plan::Crops(crops)
}

impl ModelResult {
    /// Moves every box of the result by (`dx`, `dy`): from a crop's pixels into the frame's.
    fn moved_by(mut self, dx: f32, dy: f32) -> Self {
        if let Findings::Detect { detections } = &mut self.findings {
            for d in detections {
                d.bbox = BoundingBox { x1: d.bbox.x1 + dx, y1: d.bbox.y1 + dy, x2: d.bbox.x2 + dx, y2: d.bbox.y2 + dy };
            }
        }
        self
    }

    /// Every box of the result, in frame pixels.
    fn boxes(&self) -> Vec<BoundingBox> {
        match &self.findings {
            Findings::Detect { detections } => detections.iter().map(|d| d.bbox).collect(),
            Findings::Classify { .. } => Vec::new(),
        }
    }
}

/// The results of a detector on each crop as one result in frame pixels; None when a box
/// touches a crop's edge inside the frame (the object may go on beyond it: the caller infers the
/// whole frame instead).
pub fn merge(parts: Vec<(Crop, ModelResult)>, frame: (u32, u32)) -> Option<ModelResult> {
    let mut merged: Option<ModelResult> = None;
    for (crop, part) in parts {
        let part = part.moved_by(crop.x as f32, crop.y as f32);
        if part.boxes().iter().any(|b| crop.cuts(b, frame)) {
            return None;
        }
        merged = Some(match merged {
            None => part,
            Some(mut all) => {
                all.latency += part.latency;
                if let (Findings::Detect { detections }, Findings::Detect { detections: more }) =
                    (&mut all.findings, part.findings)
                {
                    detections.extend(more);
                }
                all
            }
        });
    }
    merged
}

/// Per camera: when its whole frame was last inferred, and the objects found on it lately.
#[derive(Debug, Default)]
pub struct CameraRegions {
    last_whole: Option<DateTime<Utc>>,
    recent: Vec<(BoundingBox, DateTime<Utc>)>,
}

impl CameraRegions {
    /// The boxes to look at on this frame, or None for the whole frame: motion off, whole frame
    /// due, nothing moved (a frame sent because the whole is due).
    pub fn wanted(&self, frame: &Frame) -> Option<Vec<BoundingBox>> {
        let motion = frame.motion.as_ref().filter(|m| m.by_region && !m.regions.is_empty())?;
        let whole_every = chrono::Duration::from_std(motion.whole_every).unwrap_or(chrono::Duration::zero());
        let last_whole = self.last_whole?;
        if frame.captured_at - last_whole >= whole_every {
            return None;
        }
        let mut wanted = motion.regions.clone();
        wanted.extend(self.recent.iter().map(|(b, _)| *b));
        Some(wanted)
    }

    /// Remembers what was found on a frame (and when the whole of it was inferred).
    pub fn found(&mut self, frame: &Frame, results: &[ModelResult], whole: bool) {
        let at = frame.captured_at;
        if whole {
            self.last_whole = Some(at);
        }
        self.recent.retain(|(_, seen)| at - *seen <= chrono::Duration::seconds(RECENT_SECS));
        for b in results.iter().flat_map(ModelResult::boxes) {
            // The newest box of an object replaces its older ones.
            self.recent.retain(|(old, _)| iou(old, &b) < 0.3);
            self.recent.push((b, at));
        }
    }
}

fn iou(a: &BoundingBox, b: &BoundingBox) -> f32 {
    let w = (a.x2.min(b.x2) - a.x1.max(b.x1)).max(0.0);
    let h = (a.y2.min(b.y2) - a.y1.max(b.y1)).max(0.0);
    let inter = w * h;
    let union = a.area() + b.area() - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x1: f32, y1: f32, x2: f32, y2: f32) -> BoundingBox {
        BoundingBox { x1, y1, x2, y2 }
    }

    const HD: (u32, u32) = (1280, 720);
    const INPUT: (u32, u32) = (416, 416);

    #[test]
    fn a_small_region_gets_one_crop_of_the_input_size_around_it() {
        let Plan::Crops(crops) = plan(HD, INPUT, &[b(100.0, 100.0, 160.0, 220.0)]) else { panic!("whole") };
        assert_eq!(crops.len(), 1);
        let crop = crops[0];
        assert_eq!((crop.width, crop.height), INPUT);
        assert!(crop.x <= 100 && crop.right() >= 160 && crop.y <= 100 && crop.bottom() >= 220, "{crop:?}");
    }

    #[test]
    fn a_region_at_the_frame_edge_gets_a_crop_inside_the_frame() {
        let Plan::Crops(crops) = plan(HD, INPUT, &[b(1250.0, 690.0, 1280.0, 720.0)]) else { panic!("whole") };
        assert_eq!(crops[0], Crop { x: 1280 - 416, y: 720 - 416, width: 416, height: 416 });
    }

    #[test]
    fn overlapping_crops_merge_into_one_and_far_ones_stay_apart() {
        let near = [b(100.0, 100.0, 160.0, 220.0), b(300.0, 150.0, 350.0, 250.0)];
        let Plan::Crops(crops) = plan(HD, INPUT, &near) else { panic!("whole") };
        assert_eq!(crops.len(), 1, "{crops:?}");
        assert!(crops[0].x <= 100 && crops[0].right() >= 350, "{crops:?}");
        let far = [b(40.0, 40.0, 100.0, 100.0), b(1100.0, 600.0, 1160.0, 660.0)];
        let Plan::Crops(crops) = plan(HD, INPUT, &far) else { panic!("whole") };
        assert_eq!(crops.len(), 2);
        assert!(!crops[0].overlaps(&crops[1]));
    }

    #[test]
    fn many_crops_most_of_the_frame_or_a_small_frame_mean_the_whole_frame() {
        const FULL_HD: (u32, u32) = (1920, 1080);
        let corners = [b(20.0, 20.0, 60.0, 60.0), b(1860.0, 20.0, 1900.0, 60.0), b(20.0, 1020.0, 60.0, 1060.0)];
        let Plan::Crops(crops) = plan(FULL_HD, INPUT, &corners) else { panic!("three crops are a quarter") };
        assert_eq!(crops.len(), 3);
        let four = [corners.as_slice(), &[b(1860.0, 1020.0, 1900.0, 1060.0)]].concat();
        assert_eq!(plan(FULL_HD, INPUT, &four), Plan::Whole, "four crops");
        // Two crops on a 1280×720 frame: 37 %; a third merges with one into most of the frame.
        assert!(matches!(plan(HD, INPUT, &corners[..2]), Plan::Crops(c) if c.len() == 2));
        // A 640×360 substream: one 416-pixel crop is most of it.
        assert_eq!(plan((640, 360), INPUT, &[b(10.0, 10.0, 40.0, 40.0)]), Plan::Whole);
        assert_eq!(plan(HD, INPUT, &[]), Plan::Whole);
    }

    #[test]
    fn a_box_touching_a_crop_edge_inside_the_frame_cuts_but_one_at_the_frame_edge_does_not() {
        let crop = Crop { x: 100, y: 100, width: 416, height: 416 };
        assert!(crop.cuts(&b(100.0, 200.0, 150.0, 300.0), HD), "the left edge is inside the frame");
        assert!(!crop.cuts(&b(120.0, 200.0, 150.0, 300.0), HD));
        let corner = Crop { x: 0, y: 0, width: 416, height: 416 };
        assert!(!corner.cuts(&b(0.0, 0.0, 50.0, 50.0), HD), "the frame's own edge cuts nothing");
        assert!(corner.cuts(&b(380.0, 0.0, 416.0, 50.0), HD));
    }

    /// The real detector on dog.jpg scaled up 2.5 times (a 1920×1440 frame, the truck 570 pixels
    /// long): motion at the truck's two ends gives two crops, each cutting it; the truck is found
    /// once, whole, where the whole frame has it. Motion around all of it: found in its crop.
    #[test]
    fn an_object_across_two_regions_is_found_once_and_whole() {
        let mut models = vec![nanodet()];
        let dog = crate::judge::fixtures::sample("dog.jpg");
        let big = image::imageops::resize(&dog, 1920, 1440, image::imageops::FilterType::Triangle);
        let (whole, _, _) = super::super::infer_frame_where(&mut models, frame(&big), None);
        let reference = trucks(&whole.results);
        assert_eq!(reference.len(), 1, "{reference:?}");
        let truck = reference[0];
        assert!(truck.width() > 500.0, "{truck:?}");

        let ends = [
            b(truck.x1, truck.y1 + 20.0, truck.x1 + 40.0, truck.y2 - 20.0),
            b(truck.x2 - 40.0, truck.y1 + 20.0, truck.x2, truck.y2 - 20.0),
        ];
        let Plan::Crops(crops) = plan((1920, 1440), INPUT, &ends) else { panic!("the ends give crops") };
        assert_eq!(crops.len(), 2, "two crops, apart: {crops:?}");
        let (split, _, by_region) = super::super::infer_frame_where(&mut models, frame(&big), Some(&ends));
        let found = trucks(&split.results);
        assert_eq!(found.len(), 1, "the truck once: {found:?}");
        assert!(iou(&found[0], &truck) >= 0.9, "{:?} vs {truck:?}", found[0]);
        assert!(!by_region, "a cut object takes the frame whole");

        let (around, _, by_region) = super::super::infer_frame_where(&mut models, frame(&big), Some(&[truck]));
        let found = trucks(&around.results);
        assert!(by_region, "the truck fits its crop");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(iou(&found[0], &truck) >= 0.8, "{:?} vs {truck:?}", found[0]);
    }

    /// A camera with motion on whose scene changes too slowly to be motion (the truck fades in
    /// over 40 s, the background following it): nothing goes to the detector until the whole
    /// frame is due, and then the truck is found.
    #[test]
    fn a_still_object_appearing_while_nothing_moves_is_found_by_the_periodic_whole_frame() {
        use crate::source::config::MotionConfig;
        use crate::source::motion::{Look, MotionDetector};
        let mut models = vec![nanodet()];
        let dog = crate::judge::fixtures::sample("dog.jpg");
        let grey = image::RgbImage::from_pixel(dog.width(), dog.height(), image::Rgb([128, 128, 128]));
        let mut motion = MotionDetector::new(MotionConfig { max_still_secs: 50.0, ..MotionConfig::default() });
        let mut camera = CameraRegions::default();
        let start = std::time::Instant::now();
        let mut inferred_at = Vec::new();
        let mut truck_at = None;
        for tenth in 0..600u32 {
            // 5 frames a second: grey, then the picture fading in from 5 s to 45 s.
            if tenth % 2 == 1 {
                continue;
            }
            let seconds = f64::from(tenth) / 10.0;
            let share = ((seconds - 5.0) / 40.0).clamp(0.0, 1.0) as f32;
            let picture = blend(&grey, &dog, share);
            let motion = match motion.look(&picture, start + std::time::Duration::from_secs_f64(seconds)) {
                Look::Still => continue,
                Look::Moved(motion) | Look::Due(motion) => motion,
            };
            let mut frame = frame(&picture);
            frame.captured_at += chrono::Duration::milliseconds(i64::from(tenth) * 100);
            frame.motion = Some(std::sync::Arc::new(motion));
            let wanted = camera.wanted(&frame);
            let (inferred, _, by_region) = super::super::infer_frame_where(&mut models, frame, wanted.as_deref());
            camera.found(&inferred.frame, &inferred.results, !by_region);
            inferred_at.push(seconds);
            if truck_at.is_none() && !trucks(&inferred.results).is_empty() {
                truck_at = Some(seconds);
            }
        }
        assert_eq!(inferred_at, [0.0, 50.0], "only the first frame and the whole frame when due");
        assert_eq!(truck_at, Some(50.0), "found by the whole frame");
    }

    fn blend(from: &image::RgbImage, to: &image::RgbImage, share: f32) -> image::RgbImage {
        let mut out = from.clone();
        for (o, t) in out.pixels_mut().zip(to.pixels()) {
            for c in 0..3 {
                o.0[c] = (f32::from(o.0[c]) * (1.0 - share) + f32::from(t.0[c]) * share).round() as u8;
            }
        }
        out
    }

    fn nanodet() -> super::super::Model {
        let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/nanodet.toml");
        super::super::Model::load(
            &super::super::config::ModelConfig {
                manifest,
                score_threshold: None,
                class_thresholds: Default::default(),
            },
            super::super::config::BackendKind::Tract,
        )
        .unwrap()
    }

    fn frame(image: &image::RgbImage) -> Frame {
        Frame {
            camera: "gate".into(),
            sequence: 1,
            captured_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            image: std::sync::Arc::new(image.clone()),
            video: None,
            motion: None,
        }
    }

    fn trucks(results: &[ModelResult]) -> Vec<BoundingBox> {
        results
            .iter()
            .flat_map(|r| match &r.findings {
                Findings::Detect { detections } => {
                    detections.iter().filter(|d| d.label == "truck").map(|d| d.bbox).collect()
                }
                Findings::Classify { .. } => Vec::new(),
            })
            .collect()
    }
}
