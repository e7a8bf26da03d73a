//! Privacy by default: people found by the detector are blurred and privacy zones blacked out in
//! every image that is stored or sent (evidence, snapshots, the live page). Blurring can be turned
//! off per camera where the law allows it. With `privacy.blur_plates`, the plates of the vehicles
//! whose plates are not read are blurred too. Nothing here, or anywhere in the agent, recognises
//! faces.

use std::sync::{Arc, OnceLock};

use image::{Rgb, RgbImage};

use crate::base::frame_pool::FramePool;
use crate::infer::BoundingBox;
use crate::judge::zones::Zone;
use crate::judge::PrivacyMask;

/// A blurred person keeps about this many pixels across its narrower side: a shape, not a face.
const BLUR_CELLS_ACROSS: f32 = 6.0;
/// A blurred plate keeps this many across its height: its characters are about as tall as the
/// plate, so no character keeps a shape.
const PLATE_CELLS_ACROSS: f32 = 2.0;
/// Boxes grow by this share on each side, since detector boxes often cut off hair or hands.
const BOX_MARGIN: f32 = 0.1;

/// A frame's picture as it may be stored, shown or sent: the camera's picture with the judge's
/// privacy mask applied. The mask is applied on the first look (an event's pictures, the page's
/// live frame, the installer's scene), not on every frame: most frames no one looks at, and a
/// masked copy with its blurs was about 2 ms of a 1080p camera's frame (bench/RESULTS.md, issue
/// 31). The camera's picture itself cannot be had from it.
#[derive(Clone)]
pub struct PrivatePicture(Arc<Unmasked>);

/// What a `PrivatePicture` holds until it is looked at: private to this module.
struct Unmasked {
    camera_picture: Arc<RgbImage>,
    mask: PrivacyMask,
    masked: OnceLock<Arc<RgbImage>>,
    /// Buffers of masked copies no one holds any more (a fresh one is 2.8 MB of new pages at 720p).
    pool: Arc<FramePool>,
}

impl PrivatePicture {
    /// `camera_picture` as the judge saw it, to be masked with `mask` when first looked at.
    pub fn new(camera_picture: Arc<RgbImage>, mask: PrivacyMask, pool: Arc<FramePool>) -> Self {
        Self(Arc::new(Unmasked { camera_picture, mask, masked: OnceLock::new(), pool }))
    }

    /// A picture with nothing to hide (a test's, a blank one).
    pub fn hiding_nothing(picture: Arc<RgbImage>) -> Self {
        Self::new(picture, PrivacyMask::default(), Arc::default())
    }

    /// The picture, masked (the first call masks it; later ones share that copy). A picture with
    /// nothing to hide is the camera's own, not a copy.
    pub fn image(&self) -> Arc<RgbImage> {
        let unmasked = &self.0;
        if hides_nothing(&unmasked.mask) {
            return unmasked.camera_picture.clone();
        }
        unmasked
            .masked
            .get_or_init(|| {
                let picture = &unmasked.camera_picture;
                let mut masked = match unmasked.pool.idle(picture.width(), picture.height()) {
                    Some(mut buffer) => {
                        buffer.copy_from_slice(picture.as_raw());
                        buffer
                    }
                    None => (**picture).clone(),
                };
                apply(&mut masked, &unmasked.mask);
                let masked = Arc::new(masked);
                unmasked.pool.track(&masked);
                masked
            })
            .clone()
    }

    pub fn dimensions(&self) -> (u32, u32) {
        self.0.camera_picture.dimensions()
    }
}

impl std::fmt::Debug for PrivatePicture {
    /// Its size only: never a pixel of the camera's picture in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (width, height) = self.dimensions();
        write!(f, "PrivatePicture({width}×{height}, masked: {})", self.0.masked.get().is_some())
    }
}

/// Whether applying `mask` would change no pixel: nobody to blur, no plate, no privacy zone.
pub fn hides_nothing(mask: &PrivacyMask) -> bool {
    (!mask.blur_people || mask.people.is_empty()) && mask.zones.is_empty() && mask.plates.is_empty()
}

/// Applies the judge's mask in place: blurs the people (when the camera blurs them) and the plates
/// not read, and blacks out the privacy zones. Every picture that is stored or leaves the box goes
/// through here.
pub fn apply(image: &mut RgbImage, mask: &PrivacyMask) {
    let frame = image.dimensions();
    apply_to_part(image, (0, 0), frame, mask);
}

/// Applies the mask of a `frame`-sized picture to `part` of it, cut from it at `origin` (a read
/// plate's picture): what the mask hides there is hidden in the part too.
pub fn apply_to_part(part: &mut RgbImage, origin: (u32, u32), frame: (u32, u32), mask: &PrivacyMask) {
    let (ox, oy) = (origin.0 as f32, origin.1 as f32);
    let shifted = |b: &BoundingBox| BoundingBox { x1: b.x1 - ox, y1: b.y1 - oy, x2: b.x2 - ox, y2: b.y2 - oy };
    if mask.blur_people {
        for person in &mask.people {
            blur_box(part, &shifted(person));
        }
    }
    for plate in &mask.plates {
        blur_plate(part, &shifted(plate));
    }
    for zone in &mask.zones {
        black_out_part(part, origin, frame, zone);
    }
}

/// Smooths a person's box away: scaled down to a few pixels, then back up.
pub fn blur_box(image: &mut RgbImage, b: &BoundingBox) {
    blur_into_cells(image, b, BLUR_CELLS_ACROSS);
}

/// Boxes of one thing seen on several frames overlap at least this much (intersection over union).
const SAME_THING_IOU: f32 = 0.5;

/// The boxes of several frames, each set of overlapping ones (the same person standing or moving
/// a little between frames) merged into the box holding them all, so that a picture masked with
/// the boxes of the frames around it blurs each place once, not once a frame: a still person judged
/// on twenty frames near a clip's picture was blurred twenty times. Every input box lies inside
/// an output box, so nothing blurred before is left sharp.
pub fn merged_boxes(boxes: impl IntoIterator<Item = BoundingBox>) -> Vec<BoundingBox> {
    let mut merged: Vec<BoundingBox> = Vec::new();
    for b in boxes {
        match merged.iter_mut().find(|m| crate::infer::detect::iou(m, &b) >= SAME_THING_IOU) {
            Some(m) => *m = crate::judge::rules::union([*m, b]).unwrap_or(b),
            None => merged.push(b),
        }
    }
    merged
}

/// Smooths a plate away, harder than a person: no character keeps a shape.
pub fn blur_plate(image: &mut RgbImage, b: &BoundingBox) {
    blur_into_cells(image, b, PLATE_CELLS_ACROSS);
}

/// Smooths the box (grown by its margin) away: the mean of each of about `cells_across` cells across
/// its narrower side, spread back over the box bilinearly between the cells' centres, so what is
/// left is that coarse picture and no more (as scaling it down and up again would leave). In place,
/// in two passes over the box's rows: a 1080p frame's person in a fraction of the time two `image`
/// resizes took (bench/RESULTS.md, issue 31).
fn blur_into_cells(image: &mut RgbImage, b: &BoundingBox, cells_across: f32) {
    let (w, h) = image.dimensions();
    let (mx, my) = (b.width() * BOX_MARGIN, b.height() * BOX_MARGIN);
    let x1 = (b.x1 - mx).floor().clamp(0.0, w as f32) as u32;
    let y1 = (b.y1 - my).floor().clamp(0.0, h as f32) as u32;
    let x2 = (b.x2 + mx).ceil().clamp(0.0, w as f32) as u32;
    let y2 = (b.y2 + my).ceil().clamp(0.0, h as f32) as u32;
    if x2 <= x1 || y2 <= y1 {
        return;
    }
    let (bw, bh) = (x2 - x1, y2 - y1);
    let cell = (bw.min(bh) as f32 / cells_across).max(1.0);
    let columns = ((bw as f32 / cell).round() as u32).clamp(1, bw) as usize;
    let rows = ((bh as f32 / cell).round() as u32).clamp(1, bh) as usize;
    let (across, down) = (Cells::new(columns, bw), Cells::new(rows, bh));
    let stride = w as usize * 3;
    let pixels: &mut [u8] = image;
    let line_at = |y: u32| y as usize * stride + x1 as usize * 3..y as usize * stride + x2 as usize * 3;
    // Pass 1: each cell's mean.
    let mut sums = vec![[0u64; 3]; rows * columns];
    for y in 0..bh {
        let row = down.cell_of[y as usize] * columns;
        for (pixel, &column) in pixels[line_at(y1 + y)].chunks_exact(3).zip(&across.cell_of) {
            let sum = &mut sums[row + column];
            sum[0] += u64::from(pixel[0]);
            sum[1] += u64::from(pixel[1]);
            sum[2] += u64::from(pixel[2]);
        }
    }
    let means: Vec<[f32; 3]> = sums
        .iter()
        .enumerate()
        .map(|(i, sum)| {
            let count = (across.size(i % columns) * down.size(i / columns)).max(1) as f32;
            sum.map(|channel| channel as f32 / count)
        })
        .collect();
    // Pass 2: every pixel from the four cell centres around it, separably: the row's cell means
    // blended down once (one value per cell column), then each pixel blended across from two.
    let mut blended = vec![[0f32; 3]; columns];
    for y in 0..bh {
        let (r0, r1, wy) = down.taps[y as usize];
        let (above, below) = (&means[r0 * columns..(r0 + 1) * columns], &means[r1 * columns..(r1 + 1) * columns]);
        for ((value, a), b) in blended.iter_mut().zip(above).zip(below) {
            *value = std::array::from_fn(|ch| a[ch] + (b[ch] - a[ch]) * wy);
        }
        for (pixel, &(c0, c1, wx)) in pixels[line_at(y1 + y)].chunks_exact_mut(3).zip(&across.taps) {
            let (left, right) = (&blended[c0], &blended[c1]);
            for ch in 0..3 {
                pixel[ch] = (left[ch] + (right[ch] - left[ch]) * wx + 0.5) as u8;
            }
        }
    }
}

/// A box's side cut into cells: which cell each pixel is in, and for each pixel the two cell
/// centres it lies between with the weight of the second.
struct Cells {
    edges: Vec<u32>,
    cell_of: Vec<usize>,
    taps: Vec<(usize, usize, f32)>,
}

impl Cells {
    fn new(cells: usize, length: u32) -> Self {
        let edges: Vec<u32> = (0..=cells).map(|i| (i as u64 * u64::from(length) / cells as u64) as u32).collect();
        let cell_of = (0..cells).flat_map(|i| std::iter::repeat_n(i, (edges[i + 1] - edges[i]) as usize)).collect();
        let centre = |i: usize| (edges[i] + edges[i + 1]) as f32 / 2.0;
        let taps = (0..length)
            .map(|p| {
                let at = p as f32 + 0.5;
                // The last centre at or before the pixel, and the next one.
                let first = (0..cells).rev().find(|&i| centre(i) <= at).unwrap_or(0);
                let second = (first + 1).min(cells - 1);
                let span = centre(second) - centre(first);
                let weight = if span > 0.0 { ((at - centre(first)) / span).clamp(0.0, 1.0) } else { 0.0 };
                (first, second, weight)
            })
            .collect();
        Self { edges, cell_of, taps }
    }

    fn size(&self, cell: usize) -> u32 {
        self.edges[cell + 1] - self.edges[cell]
    }
}

/// Paints every pixel inside the zone black.
pub fn black_out(image: &mut RgbImage, zone: &Zone) {
    let frame = image.dimensions();
    black_out_part(image, (0, 0), frame, zone);
}

/// Paints black every pixel of `part` (cut at `origin` from a `frame`-sized picture) that lies in
/// the zone.
fn black_out_part(part: &mut RgbImage, origin: (u32, u32), frame: (u32, u32), zone: &Zone) {
    let (w, h) = frame;
    let corners = zone.pixel_corners(w, h);
    // The zone's bounds in the part's pixels, kept inside the part.
    let (ox, oy) = (origin.0 as f32, origin.1 as f32);
    let (pw, ph) = (part.width() as f32, part.height() as f32);
    let min_x = (corners.iter().map(|c| c.0).fold(f32::MAX, f32::min).floor() - ox).clamp(0.0, pw) as u32;
    let max_x = (corners.iter().map(|c| c.0).fold(0.0, f32::max).ceil() - ox).clamp(0.0, pw) as u32;
    let min_y = (corners.iter().map(|c| c.1).fold(f32::MAX, f32::min).floor() - oy).clamp(0.0, ph) as u32;
    let max_y = (corners.iter().map(|c| c.1).fold(0.0, f32::max).ceil() - oy).clamp(0.0, ph) as u32;
    for y in min_y..max_y {
        for x in min_x..max_x {
            if zone.contains_pixel(x as f32 + ox + 0.5, y as f32 + oy + 0.5, w, h) {
                part.put_pixel(x, y, Rgb([0, 0, 0]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::config::ZoneRole;
    use crate::judge::fixtures::{detail, detect, pixels, sample};
    use crate::judge::zones::Polygon;

    /// A privacy zone over the top right of the picture: x from 0.7, y to 0.3.
    fn top_right_window(id: &str) -> Zone {
        Zone {
            id: id.into(),
            role: ZoneRole::Privacy,
            category: None,
            polygon: Polygon::new(&[[0.7, 0.0], [1.0, 0.0], [1.0, 0.3], [0.7, 0.3]]).unwrap(),
        }
    }

    #[test]
    fn boxes_of_one_thing_merge_and_boxes_of_two_things_do_not() {
        let b = |x1: f32, y1: f32, x2: f32, y2: f32| BoundingBox { x1, y1, x2, y2 };
        let boxes = [b(10.0, 10.0, 50.0, 90.0), b(300.0, 10.0, 340.0, 90.0), b(12.0, 8.0, 52.0, 91.0)];
        let merged = merged_boxes(boxes);
        assert_eq!(merged.len(), 2, "{merged:?}");
        assert_eq!(merged[0], b(10.0, 8.0, 52.0, 91.0), "the first and third, one thing");
        assert_eq!(merged[1], boxes[1], "the other apart");
        for input in boxes {
            assert!(
                merged.iter().any(|m| m.x1 <= input.x1 && m.y1 <= input.y1 && m.x2 >= input.x2 && m.y2 >= input.y2),
                "{input:?} lies inside a merged box"
            );
        }
        // Two people side by side, touching, are two boxes: neither's blur grows over the space
        // beside them.
        assert_eq!(merged_boxes([b(0.0, 0.0, 40.0, 80.0), b(35.0, 0.0, 75.0, 80.0)]).len(), 2);
    }

    #[test]
    fn a_private_picture_is_masked_once_when_first_looked_at_and_never_shows_the_camera_picture() {
        let original = Arc::new(sample("person.jpg")); // 640×424
        let girl = BoundingBox { x1: 175.0, y1: 92.0, x2: 267.0, y2: 368.0 };
        let mask = PrivacyMask {
            people: vec![girl],
            blur_people: true,
            zones: vec![top_right_window("window")],
            ..PrivacyMask::default()
        };
        let pool = Arc::new(FramePool::default());
        let picture = PrivatePicture::new(original.clone(), mask.clone(), pool.clone());
        assert_eq!(format!("{picture:?}"), "PrivatePicture(640×424, masked: false)", "no pixel in a log");

        let first = picture.image();
        let mut expected = (*original).clone();
        apply(&mut expected, &mask);
        assert!(*first == expected, "masked as `apply` masks");
        assert!(*first != *original, "not the camera's picture");
        assert!(Arc::ptr_eq(&first, &picture.image()), "masked once, then shared");
        assert!(Arc::ptr_eq(&first, &picture.clone().image()), "by its clones too");
        assert_eq!(format!("{picture:?}"), "PrivatePicture(640×424, masked: true)");

        // Once no one holds it, the next frame's masked copy reuses its memory.
        let pixels = first.as_raw().as_ptr();
        drop((first, picture));
        let next = PrivatePicture::new(original.clone(), mask, pool);
        assert_eq!(next.image().as_raw().as_ptr(), pixels, "the pool's buffer, not fresh pages");
        assert!(*next.image() == expected);

        // With nothing to hide it is the camera's picture itself: no copy.
        assert!(Arc::ptr_eq(&PrivatePicture::hiding_nothing(original.clone()).image(), &original));
    }

    #[test]
    fn the_person_found_in_person_jpg_is_blurred_and_the_rest_untouched() {
        let original = sample("person.jpg");
        let people: Vec<BoundingBox> =
            detect(&original).into_iter().filter(|d| d.label == "person").map(|d| d.bbox).collect();
        assert_eq!(people.len(), 1, "the detector finds the girl");
        let mut private = original.clone();
        apply(
            &mut private,
            &PrivacyMask { people: people.clone(), blur_people: true, zones: vec![], ..PrivacyMask::default() },
        );
        let person = people[0];
        let before = detail(&original, pixels(&person));
        let after = detail(&private, pixels(&person));
        assert!(after * 4 < before, "detail inside the person's box {before} → {after}");
        // The horse on the right is not a person and stays sharp, pixel for pixel.
        let horse = BoundingBox { x1: 400.0, y1: 140.0, x2: 590.0, y2: 330.0 };
        assert_eq!(detail(&private, pixels(&horse)), detail(&original, pixels(&horse)));
        assert_eq!(private.get_pixel(600, 50), original.get_pixel(600, 50));
    }

    #[test]
    fn only_a_mask_with_someone_to_blur_or_a_zone_to_black_out_changes_pixels() {
        let person = BoundingBox { x1: 175.0, y1: 92.0, x2: 267.0, y2: 368.0 };
        let empty = PrivacyMask { people: vec![], blur_people: true, zones: vec![], ..PrivacyMask::default() };
        assert!(hides_nothing(&empty));
        assert!(hides_nothing(&PrivacyMask { people: vec![person], blur_people: false, ..empty.clone() }));
        assert!(!hides_nothing(&PrivacyMask { people: vec![person], ..empty.clone() }));
        let window = top_right_window("w");
        assert!(!hides_nothing(&PrivacyMask { zones: vec![window], ..empty }));
    }

    #[test]
    fn a_part_of_a_frame_is_masked_as_the_frame_is_at_its_place() {
        let original = sample("person.jpg");
        let person = BoundingBox { x1: 175.0, y1: 92.0, x2: 267.0, y2: 368.0 };
        let window = top_right_window("w");
        let plate = BoundingBox { x1: 420.0, y1: 250.0, x2: 500.0, y2: 280.0 };
        let mask = PrivacyMask {
            people: vec![person],
            blur_people: true,
            zones: vec![window],
            plates: vec![plate],
            blur_plates: true,
        };
        let mut whole = original.clone();
        apply(&mut whole, &mask);
        // Parts across the person, the zone's corner and the plate, masked on their own, are the
        // masked frame's pixels there (blurring inside a part's edge differs: compare the zone's
        // black exactly, and the blur by detail).
        let (x, y, w, h) = (380, 20, 200, 120);
        let mut part = image::imageops::crop_imm(&original, x, y, w, h).to_image();
        apply_to_part(&mut part, (x, y), original.dimensions(), &mask);
        let expected = image::imageops::crop_imm(&whole, x, y, w, h).to_image();
        for (px, py, pixel) in part.enumerate_pixels() {
            if *expected.get_pixel(px, py) == Rgb([0, 0, 0]) {
                assert_eq!(*pixel, Rgb([0, 0, 0]), "({px}, {py}) is in the zone");
            }
        }
        assert!(part.pixels().any(|p| *p == Rgb([0, 0, 0])) && part.pixels().any(|p| *p != Rgb([0, 0, 0])));
        let (x, y) = (400, 240);
        let mut at_plate = image::imageops::crop_imm(&original, x, y, 120, 50).to_image();
        let before = detail(&at_plate, [20, 10, 100, 40]);
        apply_to_part(&mut at_plate, (x, y), original.dimensions(), &mask);
        assert!(detail(&at_plate, [20, 10, 100, 40]) * 4 < before, "the plate is blurred in the part");
        let (x, y) = (150, 80);
        let mut at_person = image::imageops::crop_imm(&original, x, y, 140, 300).to_image();
        let before = detail(&at_person, [25, 12, 117, 288]);
        apply_to_part(&mut at_person, (x, y), original.dimensions(), &mask);
        assert!(detail(&at_person, [25, 12, 117, 288]) * 4 < before, "the person is blurred in the part");
        assert!(!hides_nothing(&PrivacyMask { plates: vec![plate], ..PrivacyMask::default() }));
    }

    #[test]
    fn blurring_switched_off_leaves_people_but_privacy_zones_stay_black() {
        let original = sample("person.jpg");
        let person = BoundingBox { x1: 175.0, y1: 92.0, x2: 267.0, y2: 368.0 };
        let window = top_right_window("neighbour-window");
        let mut image = original.clone();
        apply(
            &mut image,
            &PrivacyMask { people: vec![person], blur_people: false, zones: vec![window], ..PrivacyMask::default() },
        );
        assert_eq!(detail(&image, pixels(&person)), detail(&original, pixels(&person)));
        let (w, h) = image.dimensions();
        for y in 0..(h as f32 * 0.3) as u32 - 1 {
            for x in (w as f32 * 0.7) as u32 + 1..w {
                assert_eq!(*image.get_pixel(x, y), Rgb([0, 0, 0]), "({x}, {y})");
            }
        }
        assert_eq!(image.get_pixel(10, 10), original.get_pixel(10, 10));
    }
}
