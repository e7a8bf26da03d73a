//! The flow's plate stage, run by the infer worker after the models on each frame:
//! - the plates of the vehicles a site wants read (`plates.labels`, where [`PlateAreas`] says: by
//!   default the site-exit zones), each read on the vehicle's own crop, with a picture of the plate
//!   for the event's evidence. The judge votes over a track's reads ([`crate::judge::plate_votes`]);
//! - with `privacy.blur_plates`, where the plates of every other vehicle are (found, never read),
//!   for the evidence stage to blur. A vehicle whose plate cannot be looked for (no detector, an
//!   error, more vehicles than a frame searches) is blurred whole: privacy fails closed.
//!
//! Nothing else is read: the plates of other vehicles never become text.

use std::collections::HashMap;
use std::sync::Arc;

use image::RgbImage;

use super::{PlateColour, PlateError, PlateFinder, PlateReader};
use crate::infer::detect::iou;
use crate::infer::{crop_rect, BoundingBox, Findings, InferError, ModelResult};

/// Whether a vehicle's box (frame pixels, in a frame of the given width and height) is where its
/// plate may be read.
pub type PlateArea = Arc<dyn Fn(&BoundingBox, u32, u32) -> bool + Send + Sync>;

/// Per camera, where plates are read; a camera without one has none read.
pub type PlateAreas = HashMap<String, PlateArea>;

/// The crop a vehicle's plate is looked for on reaches this share of the box beyond it on each side
/// (a plate at the box's edge keeps its corners).
const VEHICLE_MARGIN: f32 = 0.05;
/// A vehicle crop smaller than this on a side holds no readable plate.
const MIN_VEHICLE_PIXELS: u32 = 32;
/// Two boxes of the wanted labels overlapping this much are one vehicle (a car and a truck on one
/// pickup): read once.
const SAME_VEHICLE_IOU: f32 = 0.7;
/// The plate's picture kept as evidence reaches this share of the plate's box beyond it.
const PLATE_PICTURE_MARGIN: f32 = 0.2;
/// At most this many vehicles a frame have their plates looked for to blur them (each is one run
/// of the plate detector); the others, fewest pixels first, are blurred whole.
pub const MAX_VEHICLES_SEARCHED: usize = 12;

/// A read plate's picture, cut from the frame as the camera sent it: the evidence stage masks it
/// (privacy zones, people) before it is stored, as it masks the frame.
#[derive(Debug, Clone, PartialEq)]
pub struct PlatePicture {
    pub image: Arc<RgbImage>,
    /// Where the picture starts in its frame, in pixels.
    pub origin: (u32, u32),
    /// The size of the frame it was cut from (privacy zones are in shares of it).
    pub frame: (u32, u32),
    /// The people found on that frame (frame pixels): blurred where they reach into the picture.
    pub people: Vec<BoundingBox>,
}

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
    /// The plate as the frame shows it; None when its box is too small to cut.
    pub picture: Option<PlatePicture>,
}

/// What the stage found on one frame.
#[derive(Debug, Default)]
pub struct FramePlates {
    /// The plates read, best vehicle first.
    pub read: Vec<VehiclePlate>,
    /// What to blur for `privacy.blur_plates`, in frame pixels: other vehicles' plates, or whole
    /// vehicles whose plates could not be looked for.
    pub to_blur: Vec<BoundingBox>,
    /// Vehicles whose reading or search failed, with why.
    pub errors: Vec<PlateError>,
}

/// How the stage hides the plates of vehicles it does not read.
pub struct PlateBlurring {
    /// The detector labels whose plates are blurred.
    pub labels: Vec<String>,
    /// The detector that finds them, when the stage has no reader to lend its own; None when it
    /// could not be loaded (then those vehicles are blurred whole).
    pub finder: Option<PlateFinder>,
}

pub struct PlateStage {
    /// None when plates are only blurred, or the reader could not be loaded.
    reader: Option<PlateReader>,
    labels: Vec<String>,
    blurring: Option<PlateBlurring>,
}

impl PlateStage {
    /// Reads the plates of the vehicles of `labels` (where a camera's area says).
    pub fn new(reader: PlateReader, labels: Vec<String>) -> Self {
        Self { reader: Some(reader), labels, blurring: None }
    }

    /// Only finds plates to blur them: nothing is read.
    pub fn blurring_only(blurring: PlateBlurring) -> Self {
        Self { reader: None, labels: Vec::new(), blurring: Some(blurring) }
    }

    /// Also blurs the plates of the vehicles it does not read.
    pub fn with_blurring(mut self, blurring: PlateBlurring) -> Self {
        self.blurring = Some(blurring);
        self
    }

    /// Whether it reads plates (its reader loaded), beside any blurring.
    pub fn reads(&self) -> bool {
        self.reader.is_some()
    }

    /// "tract" or "ort": the backend reading (or, without a reader, finding) plates.
    pub fn backend(&self) -> &'static str {
        match (&self.reader, self.blurring.as_ref().and_then(|b| b.finder.as_ref())) {
            (Some(reader), _) => reader.backend(),
            (None, Some(finder)) => finder.backend(),
            (None, None) => "none",
        }
    }

    /// Reads the plate of each vehicle of the wanted labels inside `area` (a camera without one
    /// has none read), and finds the plates of the others to blur when blurring is on.
    pub fn run(&mut self, image: &RgbImage, results: &[ModelResult], area: Option<&PlateArea>) -> FramePlates {
        let (width, height) = image.dimensions();
        let detections = || {
            results
                .iter()
                .filter_map(|r| match &r.findings {
                    Findings::Detect { detections } => Some(detections),
                    Findings::Classify { .. } => None,
                })
                .flatten()
        };
        let mut out = FramePlates::default();
        let mut read_on: Vec<BoundingBox> = Vec::new();
        if let (Some(reader), Some(area)) = (self.reader.as_mut(), area) {
            let wanted = detections().filter(|d| self.labels.contains(&d.label) && area(&d.bbox, width, height));
            for vehicle in one_box_per_vehicle(wanted.map(|d| (d.score, d.bbox)), &[]) {
                read_on.push(vehicle);
                match read_vehicle(reader, image, &vehicle, results) {
                    Ok(Some(plate)) => out.read.push(plate),
                    Ok(None) => {}
                    Err(e) => out.errors.push(e),
                }
            }
        }
        let Some(blurring) = self.blurring.as_mut() else { return out };
        let others = detections().filter(|d| blurring.labels.contains(&d.label)).map(|d| (d.score, d.bbox));
        let mut others = one_box_per_vehicle(others, &read_on);
        // The largest vehicles first: their plates are the readable ones.
        others.sort_by(|a, b| b.area().total_cmp(&a.area()));
        for (searched, vehicle) in others.into_iter().enumerate() {
            let finder = self.reader.as_mut().map(Finder::Reader).or(blurring.finder.as_mut().map(Finder::Own));
            match finder {
                Some(finder) if searched < MAX_VEHICLES_SEARCHED => match find_on_vehicle(finder, image, &vehicle) {
                    Ok(plates) => out.to_blur.extend(plates),
                    Err(e) => {
                        out.to_blur.push(vehicle);
                        out.errors.push(e);
                    }
                },
                _ => out.to_blur.push(vehicle),
            }
        }
        out
    }
}

/// The detector that finds plates to blur: the reader's, or one of its own.
enum Finder<'a> {
    Reader(&'a mut PlateReader),
    Own(&'a mut PlateFinder),
}

/// The boxes of the vehicles, best score first, a box overlapping a kept one (or one of `taken`)
/// by [`SAME_VEHICLE_IOU`] left out: one box per vehicle.
fn one_box_per_vehicle(vehicles: impl Iterator<Item = (f32, BoundingBox)>, taken: &[BoundingBox]) -> Vec<BoundingBox> {
    let mut vehicles: Vec<(f32, BoundingBox)> = vehicles.collect();
    vehicles.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut kept: Vec<BoundingBox> = Vec::new();
    for (_, vehicle) in vehicles {
        let seen = kept.iter().chain(taken).any(|done| iou(done, &vehicle) >= SAME_VEHICLE_IOU);
        if !seen {
            kept.push(vehicle);
        }
    }
    kept
}

/// Runs `work` on the crop, catching a backend's panic: one crop must not take the infer stage down.
fn on_crop<T>(backend: &'static str, work: impl FnOnce() -> Result<T, PlateError>) -> Result<T, PlateError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|payload| {
        let message = crate::infer::panic_message(&*payload);
        Err(PlateError::Infer(InferError::Panicked { backend, message }))
    })
}

/// The plate of one vehicle (the best detection on its crop), in frame pixels, with its picture.
fn read_vehicle(
    reader: &mut PlateReader,
    image: &RgbImage,
    vehicle: &BoundingBox,
    results: &[ModelResult],
) -> Result<Option<VehiclePlate>, PlateError> {
    let Some((crop, x0, y0)) = crop_of(image, vehicle) else { return Ok(None) };
    let backend = reader.backend();
    let reads = on_crop(backend, || reader.read(&crop))?;
    let Some(read) = reads.into_iter().next() else { return Ok(None) };
    let b = read.bbox;
    let plate = BoundingBox { x1: b.x1 + x0, y1: b.y1 + y0, x2: b.x2 + x0, y2: b.y2 + y0 };
    Ok(Some(VehiclePlate {
        vehicle: *vehicle,
        plate,
        text: read.text,
        score: read.score,
        valid: read.valid,
        colour: read.colour,
        rows: read.rows,
        picture: plate_picture(image, &plate, results),
    }))
}

/// The plates found on one vehicle's crop, in frame pixels.
fn find_on_vehicle(finder: Finder, image: &RgbImage, vehicle: &BoundingBox) -> Result<Vec<BoundingBox>, PlateError> {
    // Too small to hold a plate anyone could read: nothing to blur.
    let Some((crop, x0, y0)) = crop_of(image, vehicle) else { return Ok(Vec::new()) };
    let found = match finder {
        Finder::Reader(reader) => on_crop(reader.backend(), || reader.find(&crop))?,
        Finder::Own(finder) => on_crop(finder.backend(), || finder.find(&crop))?,
    };
    Ok(found.into_iter().map(|b| BoundingBox { x1: b.x1 + x0, y1: b.y1 + y0, x2: b.x2 + x0, y2: b.y2 + y0 }).collect())
}

/// The plate's picture for the evidence, with the people of the frame that reach into it.
fn plate_picture(image: &RgbImage, plate: &BoundingBox, results: &[ModelResult]) -> Option<PlatePicture> {
    let (x1, y1, x2, y2) = crop_rect(image.width(), image.height(), plate, PLATE_PICTURE_MARGIN)?;
    let picture = image::imageops::crop_imm(image, x1, y1, x2 - x1, y2 - y1).to_image();
    let area = BoundingBox { x1: x1 as f32, y1: y1 as f32, x2: x2 as f32, y2: y2 as f32 };
    let people = results.iter().flat_map(|r| r.people.iter()).filter(|p| iou(p, &area) > 0.0).copied().collect();
    Some(PlatePicture { image: Arc::new(picture), origin: (x1, y1), frame: image.dimensions(), people })
}

/// The vehicle's crop with a margin, and where it starts in the frame; None when too small.
fn crop_of(image: &RgbImage, vehicle: &BoundingBox) -> Option<(RgbImage, f32, f32)> {
    let (x1, y1, x2, y2) = crop_rect(image.width(), image.height(), vehicle, VEHICLE_MARGIN)?;
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
        let FramePlates { read: plates, to_blur, errors } = stage.run(&picture, &results, Some(&everywhere));
        assert!(errors.is_empty() && to_blur.is_empty(), "{errors:?} {to_blur:?}");
        assert_eq!(plates.len(), 1, "{plates:?}");
        assert_eq!(
            (plates[0].text.as_str(), plates[0].colour, plates[0].valid),
            ("沪B14292", PlateColour::Yellow, true)
        );
        let plate = plates[0].plate;
        assert!(plate.x1 > 0.0 && plate.x2 < w && plate.y1 > h / 3.0, "{plates:?}");
        // Its picture for the evidence holds the plate and a little around it, no more.
        let kept = plates[0].picture.as_ref().expect("a picture of the plate");
        let (pw, ph) = kept.image.dimensions();
        assert!(pw as f32 >= plate.width() && (pw as f32) < plate.width() * 1.6, "{pw} for {plate:?}");
        assert!(ph as f32 >= plate.height() && (ph as f32) < plate.height() * 1.6 + 2.0, "{ph} for {plate:?}");
        assert!(kept.origin.0 as f32 <= plate.x1 && kept.origin.1 as f32 <= plate.y1);
        assert_eq!(kept.frame, picture.dimensions());
        // A label not wanted, a camera without an area, a vehicle outside it, one too small: nothing is read.
        let car = [detector_result(&[("car", 0.9, whole)])];
        assert!(stage.run(&picture, &car, Some(&everywhere)).read.is_empty());
        assert!(stage.run(&picture, &results, None).read.is_empty());
        let left_half: PlateArea = Arc::new(|b: &BoundingBox, width: u32, _: u32| b.x2 <= width as f32 / 2.0);
        assert!(stage.run(&picture, &results, Some(&left_half)).read.is_empty());
        let tiny = [detector_result(&[("truck", 0.9, BoundingBox { x1: 10.0, y1: 10.0, x2: 20.0, y2: 20.0 })])];
        assert!(stage.run(&picture, &tiny, Some(&everywhere)).read.is_empty());
    }

    fn picture_of_set() -> RgbImage {
        let dir = lpr_dir().expect("the set");
        image::open(dir.join("images/scene_hlprbad2_003.png")).unwrap().to_rgb8()
    }

    #[test]
    fn with_blur_plates_the_plates_of_vehicles_not_read_are_found_to_blur_and_never_read() {
        let Some(dir) = lpr_dir() else { return };
        let settings = PlateSettings { models: dir.join("models"), ..PlateSettings::default() };
        let inference = InferenceConfig { backend: BackendKind::Tract, ..InferenceConfig::default() };
        let finder = PlateFinder::load(&settings, &inference).unwrap();
        let mut stage = PlateStage::blurring_only(PlateBlurring { labels: vec!["truck".into()], finder: Some(finder) });
        let picture = picture_of_set();
        let (w, h) = picture.dimensions();
        let whole = BoundingBox { x1: 0.0, y1: 0.0, x2: w as f32, y2: h as f32 };
        let everywhere: PlateArea = Arc::new(|_: &BoundingBox, _: u32, _: u32| true);
        let results = [detector_result(&[("truck", 0.8, whole)])];
        let found = stage.run(&picture, &results, Some(&everywhere));
        assert!(found.read.is_empty() && found.errors.is_empty(), "{found:?}");
        assert_eq!(found.to_blur.len(), 1, "{found:?}");
        // The plate the reader reads at the same place (the test above): in the lower part, small.
        let plate = found.to_blur[0];
        assert!(plate.y1 > h as f32 / 3.0 && plate.width() < w as f32 / 3.0, "{plate:?}");
        // A vehicle of a label not blurred is left alone; a reader's own vehicles are not blurred.
        assert!(stage.run(&picture, &[detector_result(&[("bus", 0.8, whole)])], None).to_blur.is_empty());
        let reader = PlateReader::load(&settings, &inference).unwrap();
        let mut both = PlateStage::new(reader, vec!["truck".into()])
            .with_blurring(PlateBlurring { labels: vec!["truck".into(), "car".into()], finder: None });
        let two =
            [detector_result(&[("truck", 0.8, whole), ("car", 0.6, BoundingBox { x2: w as f32 / 2.0, ..whole })])];
        let found = both.run(&picture, &two, Some(&everywhere));
        assert_eq!(found.read.len(), 1, "{found:?}");
        assert!(found.to_blur.iter().all(|b| b.x2 <= w as f32 / 2.0 + 1.0), "only the car's half: {found:?}");
    }

    #[test]
    fn without_a_plate_detector_vehicles_are_blurred_whole_and_beyond_the_frames_search_too() {
        // No model at all: privacy fails closed.
        let mut stage = PlateStage::blurring_only(PlateBlurring { labels: vec!["car".into()], finder: None });
        let picture = RgbImage::new(640, 480);
        let car = BoundingBox { x1: 100.0, y1: 100.0, x2: 300.0, y2: 250.0 };
        let found = stage.run(&picture, &[detector_result(&[("car", 0.9, car)])], None);
        assert_eq!(found.to_blur, vec![car]);
        let Some(dir) = lpr_dir() else { return };
        let settings = PlateSettings { models: dir.join("models"), ..PlateSettings::default() };
        let inference = InferenceConfig { backend: BackendKind::Tract, ..InferenceConfig::default() };
        let finder = PlateFinder::load(&settings, &inference).unwrap();
        let mut stage = PlateStage::blurring_only(PlateBlurring { labels: vec!["car".into()], finder: Some(finder) });
        // A car park: more cars than a frame searches; the smallest are blurred whole, the
        // searched ones (a black picture: no plate) leave nothing to blur.
        let cars: Vec<(&str, f32, BoundingBox)> = (0..MAX_VEHICLES_SEARCHED + 3)
            .map(|i| {
                let x = (i % 6) as f32 * 100.0;
                let y = (i / 6) as f32 * 150.0;
                let side = 90.0 - i as f32;
                ("car", 0.9, BoundingBox { x1: x, y1: y, x2: x + side, y2: y + side })
            })
            .collect();
        let found = stage.run(&picture, &[detector_result(&cars)], None);
        assert_eq!(found.to_blur.len(), 3, "{found:?}");
        assert!(found.to_blur.iter().all(|b| b.width() < 90.0 - MAX_VEHICLES_SEARCHED as f32 + 0.5), "{found:?}");
    }
}
