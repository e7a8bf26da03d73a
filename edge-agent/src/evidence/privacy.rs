//! Privacy by default: people found by the detector are blurred and privacy zones blacked out in
//! every image that is stored or sent (evidence, snapshots, the live page). Blurring can be turned
//! off per camera where the law allows it. Nothing here, or anywhere in the agent, recognises faces.

use image::{Rgb, RgbImage};

use crate::infer::BoundingBox;
use crate::judge::zones::Zone;
use crate::judge::PrivacyMask;

/// A blurred person keeps about this many pixels across its narrower side: a shape, not a face.
const BLUR_CELLS_ACROSS: f32 = 6.0;
/// Boxes grow by this share on each side, since detector boxes often cut off hair or hands.
const BOX_MARGIN: f32 = 0.1;

/// Whether applying `mask` would change no pixel: nobody to blur and no privacy zone.
pub fn hides_nothing(mask: &PrivacyMask) -> bool {
    (!mask.blur_people || mask.people.is_empty()) && mask.zones.is_empty()
}

/// Applies the judge's mask in place: blurs the people (when the camera blurs them) and blacks
/// out the privacy zones. Every picture that is stored or leaves the box goes through here.
pub fn apply(image: &mut RgbImage, mask: &PrivacyMask) {
    if mask.blur_people {
        for person in &mask.people {
            blur_box(image, person);
        }
    }
    for zone in &mask.zones {
        black_out(image, zone);
    }
}

/// Smooths a box away: scaled down to a few pixels, then back up.
pub fn blur_box(image: &mut RgbImage, b: &BoundingBox) {
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
    let cell = (bw.min(bh) as f32 / BLUR_CELLS_ACROSS).max(1.0);
    let small_w = ((bw as f32 / cell).round() as u32).max(1);
    let small_h = ((bh as f32 / cell).round() as u32).max(1);
    let region = image::imageops::crop_imm(image, x1, y1, bw, bh).to_image();
    let small = image::imageops::resize(&region, small_w, small_h, image::imageops::FilterType::Triangle);
    let blurred = image::imageops::resize(&small, bw, bh, image::imageops::FilterType::Triangle);
    image::imageops::replace(image, &blurred, i64::from(x1), i64::from(y1));
}

/// Paints every pixel inside the zone black.
pub fn black_out(image: &mut RgbImage, zone: &Zone) {
    let (w, h) = image.dimensions();
    let corners = zone.pixel_corners(w, h);
    let min_x = corners.iter().map(|c| c.0).fold(f32::MAX, f32::min).floor().max(0.0) as u32;
    let max_x = corners.iter().map(|c| c.0).fold(0.0, f32::max).ceil().min(w as f32) as u32;
    let min_y = corners.iter().map(|c| c.1).fold(f32::MAX, f32::min).floor().max(0.0) as u32;
    let max_y = corners.iter().map(|c| c.1).fold(0.0, f32::max).ceil().min(h as f32) as u32;
    for y in min_y..max_y {
        for x in min_x..max_x {
            if zone.contains_pixel(x as f32 + 0.5, y as f32 + 0.5, w, h) {
                image.put_pixel(x, y, Rgb([0, 0, 0]));
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

    #[test]
    fn the_person_found_in_person_jpg_is_blurred_and_the_rest_untouched() {
        let original = sample("person.jpg");
        let people: Vec<BoundingBox> =
            detect(&original).into_iter().filter(|d| d.label == "person").map(|d| d.bbox).collect();
        assert_eq!(people.len(), 1, "the detector finds the girl");
        let mut private = original.clone();
        apply(&mut private, &PrivacyMask { people: people.clone(), blur_people: true, zones: vec![] });
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
        let empty = PrivacyMask { people: vec![], blur_people: true, zones: vec![] };
        assert!(hides_nothing(&empty));
        assert!(hides_nothing(&PrivacyMask { people: vec![person], blur_people: false, ..empty.clone() }));
        assert!(!hides_nothing(&PrivacyMask { people: vec![person], ..empty.clone() }));
        let window = Zone {
            id: "w".into(),
            role: ZoneRole::Privacy,
            category: None,
            polygon: Polygon::new(&[[0.7, 0.0], [1.0, 0.0], [1.0, 0.3], [0.7, 0.3]]).unwrap(),
        };
        assert!(!hides_nothing(&PrivacyMask { zones: vec![window], ..empty }));
    }

    #[test]
    fn blurring_switched_off_leaves_people_but_privacy_zones_stay_black() {
        let original = sample("person.jpg");
        let person = BoundingBox { x1: 175.0, y1: 92.0, x2: 267.0, y2: 368.0 };
        let window = Zone {
            id: "neighbour-window".into(),
            role: ZoneRole::Privacy,
            category: None,
            polygon: Polygon::new(&[[0.7, 0.0], [1.0, 0.0], [1.0, 0.3], [0.7, 0.3]]).unwrap(),
        };
        let mut image = original.clone();
        apply(&mut image, &PrivacyMask { people: vec![person], blur_people: false, zones: vec![window] });
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
