//! Video file source: plays the H.264 track of an MP4 file as a camera would send it, at the file's
//! own frame rate or a configured one, looping or once. Demuxing and decoding run off the async
//! workers; a damaged sample is a counted decode error, and decoding resumes at the next keyframe.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use image::RgbImage;
use tokio::time::{interval, Interval, MissedTickBehavior};

use super::h264::{length_prefixed_to_annex_b, parameter_sets_annex_b, H264Decoder};
use super::SourceError;

pub struct VideoFileSource {
    camera: String,
    /// Taken out while a blocking task decodes the next picture.
    frames: Option<Mp4Frames>,
    ticker: Interval,
    looping: bool,
    /// The rate actually used: the configured one or the file's.
    pub fps: f64,
}

impl VideoFileSource {
    pub async fn open(camera: &str, path: &Path, fps: Option<f64>, looping: bool) -> Result<Self, SourceError> {
        let (owned_camera, owned_path) = (camera.to_string(), path.to_owned());
        let frames = tokio::task::spawn_blocking(move || Mp4Frames::open(&owned_camera, &owned_path))
            .await
            // The demuxer panics on some malformed boxes; that is a bad file, not a dead agent.
            .map_err(|e| SourceError::Open {
                camera: camera.to_string(),
                message: format!("{} is not a readable MP4 file ({e})", path.display()),
            })??;
        let fps = fps.unwrap_or(frames.file_fps);
        let mut ticker = interval(Duration::from_secs_f64(1.0 / fps));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self { camera: camera.to_string(), frames: Some(frames), ticker, looping, fps })
    }

    pub async fn next_image(&mut self) -> Result<RgbImage, SourceError> {
        self.ticker.tick().await;
        let Some(mut frames) = self.frames.take() else {
            return Err(SourceError::Ended { camera: self.camera.clone() });
        };
        let looping = self.looping;
        let worked = tokio::task::spawn_blocking(move || {
            let picture = frames.next_picture(looping);
            (frames, picture)
        })
        .await;
        match worked {
            Ok((frames, picture)) => {
                self.frames = Some(frames);
                picture
            }
            Err(e) => {
                Err(SourceError::Lost { camera: self.camera.clone(), message: format!("decoder task failed: {e}") })
            }
        }
    }
}

/// The H.264 track of an open MP4 file and its decoder.
struct Mp4Frames {
    camera: String,
    path: PathBuf,
    reader: mp4::Mp4Reader<BufReader<File>>,
    track_id: u32,
    sample_count: u32,
    /// 1-based, as the mp4 crate counts.
    next_sample: u32,
    length_size: usize,
    parameter_sets: Vec<u8>,
    decoder: H264Decoder,
    /// After a damaged sample later ones reference garbage: skip to the next keyframe.
    waiting_for_keyframe: bool,
    file_fps: f64,
}

impl Mp4Frames {
    fn open(camera: &str, path: &Path) -> Result<Self, SourceError> {
        let open_error = |message: String| SourceError::Open { camera: camera.to_string(), message };
        let file =
            File::open(path).map_err(|e| open_error(format!("cannot open video file {}: {e}", path.display())))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let reader = mp4::Mp4Reader::read_header(BufReader::new(file), size)
            .map_err(|e| open_error(format!("{} is not a readable MP4 file: {e}", path.display())))?;
        let track = reader
            .tracks()
            .values()
            .filter(|t| matches!(t.media_type(), Ok(mp4::MediaType::H264)))
            .min_by_key(|t| t.track_id())
            .ok_or_else(|| open_error(format!("{} has no H.264 video track", path.display())))?;
        let Some(avc1) = track.trak.mdia.minf.stbl.stsd.avc1.as_ref() else {
            return Err(open_error(format!("{} has no H.264 video track", path.display())));
        };
        let avcc = &avc1.avcc;
        let parameter_sets = parameter_sets_annex_b(
            avcc.sequence_parameter_sets
                .iter()
                .chain(avcc.picture_parameter_sets.iter())
                .map(|unit| unit.bytes.as_slice()),
        );
        let sample_count = track.sample_count();
        if sample_count == 0 {
            return Err(open_error(format!("{} has an empty video track", path.display())));
        }
        let timescale = f64::from(track.timescale().max(1));
        let duration_secs = track.trak.mdia.mdhd.duration as f64 / timescale;
        let file_fps = if duration_secs > 0.0 { f64::from(sample_count) / duration_secs } else { 0.0 };
        // A file with no usable timing plays at a camera-like default rather than as fast as possible.
        let file_fps = if file_fps.is_finite() && file_fps > 0.0 { file_fps.min(120.0) } else { 10.0 };
        let decoder = H264Decoder::new().map_err(|e| open_error(e.to_string()))?;
        Ok(Self {
            camera: camera.to_string(),
            path: path.to_owned(),
            track_id: track.track_id(),
            sample_count,
            next_sample: 1,
            length_size: usize::from(avcc.length_size_minus_one & 0x3) + 1,
            parameter_sets,
            decoder,
            waiting_for_keyframe: true,
            file_fps,
            reader,
        })
    }

    fn decode_error(&self, sample: u32, message: String) -> SourceError {
        SourceError::Decode {
            camera: self.camera.clone(),
            what: format!("frame {sample} of {}", self.path.display()),
            message,
        }
    }

    /// Reads and decodes samples until one gives a picture.
    fn next_picture(&mut self, looping: bool) -> Result<RgbImage, SourceError> {
        // Bounded so a file of undecodable samples cannot spin here forever.
        for _ in 0..=self.sample_count {
            if self.next_sample > self.sample_count {
                if !looping {
                    return Err(SourceError::Ended { camera: self.camera.clone() });
                }
                self.next_sample = 1;
                self.waiting_for_keyframe = true;
            }
            let number = self.next_sample;
            self.next_sample += 1;
            let sample = match self.reader.read_sample(self.track_id, number) {
                Ok(Some(sample)) => sample,
                Ok(None) => continue,
                Err(e) => return Err(self.decode_error(number, format!("cannot read the sample: {e}"))),
            };
            if self.waiting_for_keyframe && !sample.is_sync {
                continue;
            }
            let mut access_unit = Vec::with_capacity(sample.bytes.len() + self.parameter_sets.len() + 16);
            if sample.is_sync {
                access_unit.extend_from_slice(&self.parameter_sets);
            }
            if let Err(e) = length_prefixed_to_annex_b(&sample.bytes, self.length_size, &mut access_unit) {
                self.waiting_for_keyframe = true;
                return Err(self.decode_error(number, e.to_string()));
            }
            match self.decoder.decode(&access_unit, true) {
                Ok(Some(picture)) => {
                    self.waiting_for_keyframe = false;
                    return Ok(picture);
                }
                Ok(None) => self.waiting_for_keyframe = false,
                Err(e) => {
                    self.waiting_for_keyframe = true;
                    return Err(self.decode_error(number, e.to_string()));
                }
            }
        }
        Err(self.decode_error(self.next_sample, "no sample of the whole file gave a picture".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample_video() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/samples.mp4")
    }

    #[tokio::test]
    async fn plays_the_clip_at_its_own_rate_and_ends_in_once_mode() {
        let mut source = VideoFileSource::open("yard", &sample_video(), None, false).await.unwrap();
        assert!((source.fps - 5.0).abs() < 0.01, "file rate {}", source.fps);
        let mut pictures = 0;
        loop {
            match source.next_image().await {
                Ok(picture) => {
                    assert_eq!(picture.dimensions(), (768, 576));
                    pictures += 1;
                }
                Err(SourceError::Ended { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(pictures, 10, "every frame of the 2 s clip at 5 fps");
    }

    #[tokio::test]
    async fn loops_when_asked_at_the_configured_rate() {
        let mut source = VideoFileSource::open("yard", &sample_video(), Some(100.0), true).await.unwrap();
        assert_eq!(source.fps, 100.0);
        for _ in 0..25 {
            source.next_image().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_file_that_is_not_mp4_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.mp4");
        std::fs::write(&path, b"this is not a video").unwrap();
        let err = VideoFileSource::open("yard", &path, None, true).await.err().unwrap();
        assert!(matches!(err, SourceError::Open { .. }), "{err}");
        assert!(err.to_string().contains("notes.mp4") && err.to_string().contains("yard"), "{err}");
    }

    #[tokio::test]
    async fn damaged_samples_are_counted_errors_and_playback_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = std::fs::read(sample_video()).unwrap();
        // Scribble over the middle of the media data, leaving the headers readable.
        let start = bytes.len() / 3;
        for (i, byte) in bytes[start..start + 20_000].iter_mut().enumerate() {
            *byte = (i.wrapping_mul(2654435761) >> 7) as u8;
        }
        let path = dir.path().join("damaged.mp4");
        std::fs::write(&path, bytes).unwrap();
        let mut source = VideoFileSource::open("yard", &path, Some(200.0), true).await.unwrap();
        let (mut pictures, mut errors) = (0, 0);
        for _ in 0..30 {
            match source.next_image().await {
                Ok(_) => pictures += 1,
                Err(SourceError::Decode { .. }) => errors += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(errors > 0, "the damage was noticed");
        assert!(pictures > 0, "undamaged frames still play");
    }
}
