//! Evidence JPEG benchmark (not a test): the agent's encoder (`jpeg-encoder`, SIMD picked at run
//! time) against `image`'s JpegEncoder it replaced, on a real photo scaled to 1920×1080 with an
//! event box drawn on it, at the evidence quality (90) and the live frame's (75).
//!
//! Run: `cargo bench --bench jpeg` (release build). Prints ms per picture, the speed-up, the size
//! and the mean pixel error of each encoder's picture decoded again.

use std::path::Path;
use std::time::{Duration, Instant};

use edge_agent::evidence::draw;
use edge_agent::infer::BoundingBox;
use image::{imageops, RgbImage};

/// Each encoder runs for at least this long (after one warm-up picture) per quality.
const MEASURE_FOR: Duration = Duration::from_secs(3);

fn picture() -> RgbImage {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/samples/dog.jpg");
    let photo = match image::open(&path) {
        Ok(photo) => photo.to_rgb8(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    };
    let mut frame = imageops::resize(&photo, 1920, 1080, imageops::FilterType::Triangle);
    let truck = BoundingBox { x1: 1143.0, y1: 148.0, x2: 1713.0, y2: 298.0 };
    draw::draw_labelled_box(&mut frame, truck, "truck 0.37", draw::EVENT_COLOUR, 12);
    frame
}

fn image_crate(frame: &RgbImage, quality: u8) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(frame.len() / 8);
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality);
    if let Err(e) = frame.write_with_encoder(encoder) {
        panic!("image's encoder failed: {e}");
    }
    bytes
}

fn agent(frame: &RgbImage, quality: u8) -> Vec<u8> {
    match draw::encode_jpeg(frame, quality) {
        Ok(bytes) => bytes,
        Err(e) => panic!("the agent's encoder failed: {e}"),
    }
}

/// Median milliseconds per picture, and the last picture.
fn measure(frame: &RgbImage, quality: u8, encode: fn(&RgbImage, u8) -> Vec<u8>) -> (f64, Vec<u8>) {
    let mut bytes = encode(frame, quality);
    let mut samples = Vec::new();
    let started = Instant::now();
    while started.elapsed() < MEASURE_FOR || samples.len() < 5 {
        let t0 = Instant::now();
        bytes = encode(frame, quality);
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], bytes)
}

fn mean_error(frame: &RgbImage, jpeg: &[u8]) -> f64 {
    let back = match image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg) {
        Ok(back) => back.to_rgb8(),
        Err(e) => panic!("the JPEG does not decode: {e}"),
    };
    assert_eq!(back.dimensions(), frame.dimensions(), "decoded size");
    let total: u64 = frame.as_raw().iter().zip(back.as_raw()).map(|(a, b)| u64::from(a.abs_diff(*b))).sum();
    total as f64 / frame.as_raw().len() as f64
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

#[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
fn has_avx2() -> bool {
    false
}

fn main() {
    let frame = picture();
    let avx2 = has_avx2();
    println!(
        "JPEG of models/samples/dog.jpg scaled to {}×{} with an event box; AVX2 {}",
        frame.width(),
        frame.height(),
        if avx2 { "available (jpeg-encoder uses it)" } else { "not available (plain Rust)" }
    );
    for quality in [90, 75] {
        let (old_ms, old) = measure(&frame, quality, image_crate);
        let (new_ms, new) = measure(&frame, quality, agent);
        println!(
            "quality {quality}: image JpegEncoder {old_ms:>6.2} ms ({:>4} KB, mean error {:.2}) | \
             agent jpeg-encoder {new_ms:>6.2} ms ({:>4} KB, mean error {:.2}) | speed-up {:.2}×",
            old.len() / 1024,
            mean_error(&frame, &old),
            new.len() / 1024,
            mean_error(&frame, &new),
            old_ms / new_ms
        );
    }
}
