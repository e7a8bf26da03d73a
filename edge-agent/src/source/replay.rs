//! Replay source: loops over the pictures of a folder (JPEG/PNG, sorted by name) at a fixed rate,
//! as a camera would send them. The demo camera and the tests use it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use image::RgbImage;
use tokio::time::{interval, Interval, MissedTickBehavior};

use super::SourceError;

pub struct ReplaySource {
    camera: String,
    files: Vec<PathBuf>,
    next: usize,
    looping: bool,
    ticker: Interval,
}

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

impl ReplaySource {
    pub fn open(camera: &str, folder: &Path, fps: f64, looping: bool) -> Result<Self, SourceError> {
        let open_error = |message: String| SourceError::Open { camera: camera.to_string(), message };
        let entries = std::fs::read_dir(folder)
            .map_err(|e| open_error(format!("cannot read replay folder {}: {e}", folder.display())))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                path.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(open_error(format!(
                "replay folder {} holds no .jpg, .jpeg or .png pictures",
                folder.display()
            )));
        }
        let mut ticker = interval(Duration::from_secs_f64(1.0 / fps));
        // A slow decode must not be followed by a burst of catch-up frames.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self { camera: camera.to_string(), files, next: 0, looping, ticker })
    }

    pub async fn next_image(&mut self) -> Result<RgbImage, SourceError> {
        if self.next >= self.files.len() {
            if !self.looping {
                return Err(SourceError::Ended { camera: self.camera.clone() });
            }
            self.next = 0;
        }
        self.ticker.tick().await;
        let path = self.files[self.next].clone();
        self.next += 1;
        let camera = self.camera.clone();
        // Decoding a large JPEG takes milliseconds of CPU: keep it off the async workers.
        tokio::task::spawn_blocking(move || decode_picture(&camera, &path)).await.map_err(|e| SourceError::Open {
            camera: self.camera.clone(),
            message: format!("decoder task failed: {e}"),
        })?
    }
}

pub fn decode_picture(camera: &str, path: &Path) -> Result<RgbImage, SourceError> {
    let bytes = std::fs::read(path).map_err(|e| SourceError::Decode {
        camera: camera.to_string(),
        what: path.display().to_string(),
        message: e.to_string(),
    })?;
    decode_picture_bytes(camera, &path.display().to_string(), &bytes)
}

/// Decodes a picture (JPEG or PNG, told by its bytes) within the image crate's memory limits: a
/// hostile header that claims a huge picture is an error, not an allocation.
pub fn decode_picture_bytes(camera: &str, what: &str, bytes: &[u8]) -> Result<RgbImage, SourceError> {
    let decode_error =
        |message: String| SourceError::Decode { camera: camera.to_string(), what: what.to_string(), message };
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_error(e.to_string()))?;
    Ok(reader.decode().map_err(|e| decode_error(e.to_string()))?.to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/samples")
    }

    #[tokio::test]
    async fn loops_over_the_pictures_in_name_order() {
        let mut source = ReplaySource::open("demo", &samples(), 100.0, true).unwrap();
        let sizes: Vec<(u32, u32)> = {
            let mut v = Vec::new();
            for _ in 0..4 {
                v.push(source.next_image().await.unwrap().dimensions());
            }
            v
        };
        // coffee.png, dog.jpg, person.jpg, then coffee.png again.
        assert_eq!(sizes[0], (600, 400));
        assert_eq!(sizes[1], (768, 576));
        assert_eq!(sizes[3], sizes[0]);
    }

    #[tokio::test]
    async fn once_mode_ends_after_the_last_picture() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(samples().join("dog.jpg"), dir.path().join("dog.jpg")).unwrap();
        let mut source = ReplaySource::open("gate", dir.path(), 100.0, false).unwrap();
        assert!(source.next_image().await.is_ok());
        assert!(matches!(source.next_image().await, Err(SourceError::Ended { .. })));
    }

    #[test]
    fn an_empty_folder_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = ReplaySource::open("gate", dir.path(), 2.0, true).err().unwrap();
        let text = err.to_string();
        assert!(text.contains("gate") && text.contains(&dir.path().display().to_string()), "{text}");
    }

    #[tokio::test]
    async fn a_truncated_picture_is_a_decode_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(samples().join("dog.jpg")).unwrap();
        // Cut inside the headers: the decoder fills a short scan with grey, but cannot guess headers.
        std::fs::write(dir.path().join("broken.jpg"), &bytes[..300]).unwrap();
        let mut source = ReplaySource::open("gate", dir.path(), 100.0, true).unwrap();
        let err = source.next_image().await.unwrap_err();
        assert!(matches!(err, SourceError::Decode { .. }), "{err}");
        assert!(err.to_string().contains("broken.jpg"), "{err}");
    }
}
