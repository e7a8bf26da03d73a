//! Fitting a box to its site: per-class thresholds from labelled pictures, and the ground-plane
//! homography that turns pixels into metres. Site files live in `calibration/<site>.toml`.

pub mod homography;
pub mod labelling;
pub mod report;
pub mod samples;
pub mod site_file;
pub mod thresholds;
