//! The flow's plate stage, run by the infer worker after the models on each frame: the plates of the
//! vehicles a site wants read (`plates.labels`, where [`PlateAreas`] says: by default the site-exit
//! zones), each read on the vehicle's own crop. Nothing else is read: the plates of other vehicles
//! never become text. The judge votes over a track's reads ([`crate::judge::plate_votes`]).

use std::collections::HashMap;
use std::sync::Arc;

use image::RgbImage;

use super::{PlateColour, PlateError, PlateReader};
use crate::infer::detect::iou;
use crate::infer::{BoundingBox, Findings, InferError, ModelResult};

/// Whether a vehicle's box (frame pixels, in a frame of the given width and height) is where its
/// plate may be read.
pub type PlateArea = Arc<dyn Fn(&BoundingBox, u32, u32) -> bool + Send + Sync>;

/// Per camera, where plates are read; a camera without one has none read.
pub type PlateAreas = HashMap<String, PlateArea>;

/// The crop a vehicle's plate is read on reaches this share of the box beyond it on each side (a
/// plate at the box's edge keeps its corners).
const VEHICLE_MARGIN: f32 = 0.05;
/// A vehicle crop smaller than this on a side holds no readable plate.
const MIN_VEHICLE_PIXELS: u32 = 32;
/// Two boxes of the wanted labels overlapping this much are one vehicle (a car and a truck on one
/// pickup): read once.
const SAME_VEHICLE_IOU: f32 = 0.7;

/// A plate read on one vehicle of one frame: the message from infer to judge.
#[derive(Debug, Clone, PartialEq)]
pub struct VehiclePlate {
    /// The detection the plate was read on, in frame pixels.
    pub vehicle: BoundingBox,
    /// The plate, in frame pixels.
    pub plate: BoundingBox,
    pub text: String,
    pub score: f32,
    /// Whether the text is written as a plate's.
    pub valid: bool,
    pub colour: PlateColour,
    pub rows: u8,
}

pub struct PlateStage {
    reader: PlateReader,
    labels: Vec<String>,
}

impl PlateStage {
    pub fn new(reader: PlateReader, labels: Vec<String>) -> Self {
        Self { reader, labels }
    }

    /// The plate of each vehicle of the wanted labels inside `area`, best detection first; a
    /// vehicle whose reading fails is left out, with the error.
    pub fn read_vehicles(
        &mut self,
        image: &RgbImage,
        results: &[ModelResult],
        area: Option<&PlateArea>,
    ) -> (Vec<VehiclePlate>, Vec<PlateError>) {
        let Some(area) = area else { return (Vec::new(), Vec::new()) };
        let (width, height) = image.dimensions();
        let mut vehicles: Vec<(f32, BoundingBox)> = results
            .iter()
            .filter_map(|r| match &r.findings {
                Findings::Detect { detections } => Some(detections),
                Findings::Classify { .. } => None,
            })
            .flatten()
            .filter(|d| self.labels.contains(&d.label) && area(&d.bbox, width, height))
            .map(|d| (d.score, d.bbox))
            .collect();
        vehicles.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut read_on: Vec<BoundingBox> = Vec::new();
        let (mut plates, mut errors) = (Vec::new(), Vec::new());
        for (_, vehicle) in vehicles {
            if read_on.iter().any(|done| iou(done, &vehicle) >= SAME_VEHICLE_IOU) {
                continue;
            }
            read_on.push(vehicle);
            let Some((crop, x0, y0)) = crop_of(image, &vehicle) else { continue };
            // A backend that panics on one crop must not take the infer stage down with it.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.reader.read(&crop)))
                .unwrap_or_else(|payload| {
                    let message = crate::infer::panic_message(&*payload);
                    Err(PlateError::Infer(InferError::Panicked { backend: self.reader.backend(), message }))
                });
            match outcome {
                Ok(reads) => {
                    // The best detection on the vehicle is its plate.
                    if let Some(read) = reads.into_iter().next() {
                        let b = read.bbox;
                        plates.push(VehiclePlate {
                            vehicle,
                            plate: BoundingBox { x1: b.x1 + x0, y1: b.y1 + y0, x2: b.x2 + x0, y2: b.y2 + y0 },
                            text: read.text,
                            score: read.score,
                            valid: read.valid,
                            colour: read.colour,
                            rows: read.rows,
                        });
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        (plates, errors)
    }
}

/// The vehicle's crop with a margin, and where it starts in the frame; None when too small.
fn crop_of(image: &RgbImage, vehicle: &BoundingBox) -> Option<(RgbImage, f32, f32)> {
    let (w, h) = (image.width() as f32, image.height() as f32);
    let (mx, my) = (vehicle.width() * VEHICLE_MARGIN, vehicle.height() * VEHICLE_MARGIN);
    let x1 = (vehicle.x1 - mx).clamp(0.0, w) as u32;
    let y1 = (vehicle.y1 - my).clamp(0.0, h) as u32;
    let x2 = (vehicle.x2 + mx).clamp(0.0, w) as u32;
    let y2 = (vehicle.y2 + my).clamp(0.0, h) as u32;
    if x2 < x1 + MIN_VEHICLE_PIXELS || y2 < y1 + MIN_VEHICLE_PIXELS {
        return None;
    }
    let crop = image::imageops::crop_imm(image, x1, y1, x2 - x1, y2 - y1).to_image();
    Some((crop, x1 as f32, y1 as f32))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::infer::config::{BackendKind, InferenceConfig};
    use crate::infer::plates::tests::lpr_dir;
    use crate::infer::plates::PlateSettings;
    use crate::infer::{Detection, ModelId};

    fn detector_result(detections: &[(&str, f32, BoundingBox)]) -> ModelResult {
        ModelResult {
            model: ModelId { name: "detector".into(), sha256: "0".repeat(64) },
            findings: Findings::Detect {
                detections: detections
                    .iter()
                    .map(|(label, score, bbox)| Detection {
                        class_id: 0,
                        label: label.to_string(),
                        score: *score,
                        bbox: *bbox,
                    })
                    .collect(),
            },
            latency: Duration::ZERO,
            people: Vec::new(),
        }
    }

    #[test]
    fn only_the_wanted_vehicles_inside_the_area_have_their_plate_read() {
        let Some(dir) = lpr_dir() else { return };
        let settings = PlateSettings { models: dir.join("models"), ..PlateSettings::default() };
        let inference = InferenceConfig { backend: BackendKind::Tract, ..InferenceConfig::default() };
        let mut stage = PlateStage::new(PlateReader::load(&settings, &inference).unwrap(), vec!["truck".into()]);
        // A toll gate: the yellow plate of a truck, in the lower half of the picture.
        let picture = image::open(dir.join("images/scene_hlprbad2_003.png")).unwrap().to_rgb8();
        let (w, h) = (picture.width() as f32, picture.height() as f32);
        let whole = BoundingBox { x1: 0.0, y1: 0.0, x2: w, y2: h };
        let everywhere: PlateArea = Arc::new(|_: &BoundingBox, _: u32, _: u32| true);
        // The truck, and a car on (nearly) the same box: one vehicle, read once.
        let results = [detector_result(&[("truck", 0.8, whole), ("car", 0.5, whole), ("truck", 0.7, whole)])];
        let (plates, errors) = stage.read_vehicles(&picture, &results, Some(&everywhere));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(plates.len(), 1, "{plates:?}");
        assert_eq!(
            (plates[0].text.as_str(), plates[0].colour, plates[0].valid),
            ("沪B14292", PlateColour::Yellow, true)
        );
        assert!(plates[0].plate.x1 > 0.0 && plates[0].plate.x2 < w && plates[0].plate.y1 > h / 3.0, "{plates:?}");
        // A label not wanted, a camera without an area, a vehicle outside it, one too small: nothing is read.
        let car = [detector_result(&[("car", 0.9, whole)])];
        assert!(stage.read_vehicles(&picture, &car, Some(&everywhere)).0.is_empty());
        assert!(stage.read_vehicles(&picture, &results, None).0.is_empty());
        let left_half: PlateArea = Arc::new(|b: &BoundingBox, width: u32, _: u32| b.x2 <= width as f32 / 2.0);
        assert!(stage.read_vehicles(&picture, &results, Some(&left_half)).0.is_empty());
        let tiny = [detector_result(&[("truck", 0.9, BoundingBox { x1: 10.0, y1: 10.0, x2: 20.0, y2: 20.0 })])];
        assert!(stage.read_vehicles(&picture, &tiny, Some(&everywhere)).0.is_empty());
    }
}
