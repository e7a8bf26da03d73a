//! The plate of a vehicle track, by vote: single frames misread a character now and then (a blurred
//! frame, a glare, a plate half out of view), so a track's plate is the text its reads agree on.
//! A text is confirmed after `min_reads` reads when at least `min_agreement` of the track's valid
//! reads say it (Frigate 0.17 confirms its classifiers' labels after 3 attempts with 60 % agreement);
//! until then the track has no plate. Reads whose text is not written as a plate's do not vote.
//! The picture of the surest read of each text is kept, for the event's evidence.
//! Pure: reads in, the confirmed plate out.

use crate::infer::plates::stage::{PlatePicture, VehiclePlate};
use crate::infer::plates::{PlateColour, PlateSettings};
pub use crate::wire::EventPlate as ConfirmedPlate;

/// When a track's reads make a plate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VoteSettings {
    /// Reads of the same text needed at least.
    pub min_reads: u32,
    /// The share of the track's valid reads that must say it.
    pub min_agreement: f32,
}

impl Default for VoteSettings {
    fn default() -> Self {
        Self::from(&PlateSettings::default())
    }
}

impl From<&PlateSettings> for VoteSettings {
    fn from(settings: &PlateSettings) -> Self {
        Self { min_reads: settings.min_reads, min_agreement: settings.min_agreement }
    }
}

#[derive(Debug, Clone, Default)]
struct Tally {
    reads: u32,
    score_sum: f32,
    /// (colour, rows) → reads.
    looks: Vec<((PlateColour, u8), u32)>,
    /// The picture of the read with the highest score, and that score.
    best_picture: Option<(f32, PlatePicture)>,
}

/// The votes of one track.
#[derive(Debug, Clone, Default)]
pub struct PlateVotes {
    /// Text → its reads, in the order first read (ties go to the earlier).
    texts: Vec<(String, Tally)>,
    valid_reads: u32,
}

impl PlateVotes {
    pub fn add(&mut self, sighting: &VehiclePlate) {
        if !sighting.valid {
            return;
        }
        self.valid_reads += 1;
        let tally = match self.texts.iter_mut().position(|(text, _)| *text == sighting.text) {
            Some(at) => &mut self.texts[at].1,
            None => {
                self.texts.push((sighting.text.clone(), Tally::default()));
                let last = self.texts.len() - 1;
                &mut self.texts[last].1
            }
        };
        tally.reads += 1;
        tally.score_sum += sighting.score;
        if let Some(picture) = &sighting.picture {
            if tally.best_picture.as_ref().is_none_or(|(best, _)| sighting.score > *best) {
                tally.best_picture = Some((sighting.score, picture.clone()));
            }
        }
        let look = (sighting.colour, sighting.rows);
        match tally.looks.iter_mut().find(|(l, _)| *l == look) {
            Some((_, n)) => *n += 1,
            None => tally.looks.push((look, 1)),
        }
    }

    /// The picture of the surest read of `text`.
    pub fn best_picture(&self, text: &str) -> Option<&PlatePicture> {
        let (_, tally) = self.texts.iter().find(|(t, _)| t == text)?;
        tally.best_picture.as_ref().map(|(_, picture)| picture)
    }

    /// The plate the reads agree on, once they do.
    pub fn confirmed(&self, settings: &VoteSettings) -> Option<ConfirmedPlate> {
        let (text, tally) =
            self.texts.iter().max_by(|a, b| a.1.reads.cmp(&b.1.reads).then(b.0.len().cmp(&a.0.len())))?;
        let agreement = tally.reads as f32 / self.valid_reads.max(1) as f32;
        if tally.reads < settings.min_reads || agreement < settings.min_agreement {
            return None;
        }
        let ((colour, rows), _) = tally.looks.iter().max_by_key(|(_, n)| *n)?;
        Some(ConfirmedPlate {
            text: text.clone(),
            colour: colour.name().to_string(),
            rows: *rows,
            score: tally.score_sum / tally.reads as f32,
            reads: tally.reads,
            of_reads: self.valid_reads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::infer::BoundingBox;

    fn read(text: &str, score: f32) -> VehiclePlate {
        let somewhere = BoundingBox { x1: 0.0, y1: 0.0, x2: 10.0, y2: 10.0 };
        VehiclePlate {
            vehicle: somewhere,
            plate: somewhere,
            text: text.into(),
            score,
            valid: true,
            colour: PlateColour::Yellow,
            rows: 1,
            picture: None,
        }
    }

    fn pictured(text: &str, score: f32, shade: u8) -> VehiclePlate {
        let image = image::RgbImage::from_pixel(40, 12, image::Rgb([shade; 3]));
        let picture =
            PlatePicture { image: std::sync::Arc::new(image), origin: (0, 0), frame: (640, 480), people: vec![] };
        VehiclePlate { picture: Some(picture), ..read(text, score) }
    }

    #[test]
    fn the_plate_keeps_the_picture_of_its_surest_read() {
        let mut votes = PlateVotes::default();
        votes.add(&pictured("京A12345", 0.7, 10));
        votes.add(&pictured("京A12346", 0.99, 20));
        votes.add(&pictured("京A12345", 0.9, 30));
        votes.add(&read("京A12345", 0.95));
        votes.add(&pictured("京A12345", 0.8, 40));
        let shade = |text: &str| votes.best_picture(text).map(|p| p.image.get_pixel(0, 0).0[0]);
        assert_eq!(shade("京A12345"), Some(30), "the 0.9 read's; a read without a picture keeps none");
        assert_eq!(shade("京A12346"), Some(20));
        assert_eq!(shade("京B00000"), None);
    }

    #[test]
    fn a_plate_is_confirmed_after_enough_agreeing_reads_and_misreads_only_delay_it() {
        let settings = VoteSettings::default();
        let mut votes = PlateVotes::default();
        votes.add(&read("京A12345", 0.9));
        votes.add(&read("京A12346", 0.7));
        assert_eq!(votes.confirmed(&settings), None, "two reads, two texts");
        votes.add(&read("京A12345", 0.8));
        assert_eq!(votes.confirmed(&settings), None, "two agree: fewer than 3");
        votes.add(&read("京A12345", 0.7));
        let plate = votes.confirmed(&settings).expect("3 of 4 agree");
        assert_eq!((plate.text.as_str(), plate.reads, plate.of_reads, plate.rows), ("京A12345", 3, 4, 1));
        assert!((plate.score - 0.8).abs() < 1e-6);
        assert_eq!(plate.colour, "yellow");
        // Reads that are not a plate's text do not vote; disagreement below 60 % withdraws it.
        votes.add(&VehiclePlate { valid: false, ..read("A1", 0.9) });
        assert_eq!(votes.confirmed(&settings).map(|p| p.of_reads), Some(4));
        for _ in 0..2 {
            votes.add(&read("京A12346", 0.9));
        }
        assert_eq!(votes.confirmed(&settings), None, "3 of 6 is not 60 %");
    }
}
