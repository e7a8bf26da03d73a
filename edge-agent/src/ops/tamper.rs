//! The installer's tamper reference (`edge-agent tamper reference`): the camera is opened the way
//! the agent opens it, watched for a few seconds by the same tamper watch the judge runs, and the
//! view it settles on is saved as the camera's reference in `state_dir/tamper`, with its picture
//! (people blurred by the configured detectors, privacy zones black, as every stored picture).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use image::RgbImage;

use crate::config::Config;
use crate::evidence::{draw, privacy};
use crate::infer::{Findings, Model};
use crate::judge::config::TamperConfig;
use crate::judge::tamper::reference::{self, Reference, ReferenceOrigin, TAMPER_DIR};
use crate::judge::tamper::TamperWatch;
use crate::judge::PrivacyMask;
use crate::source::{Frame, OpenSource, SourceError};

/// Undecodable frames in a row before the camera counts as broken.
const MAX_DECODE_ERRORS: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum TamperToolError {
    #[error("no camera {camera:?} in the config; cameras: {known}")]
    UnknownCamera { camera: String, known: String },
    #[error("`tamper.cameras.{camera}`: {problem}")]
    Settings { camera: String, problem: String },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(
        "camera {camera}: the view did not stay the same, uncovered, for {secs} s within {waited} s; \
         aim and focus it, uncover it, and try again"
    )]
    NotStable { camera: String, secs: f64, waited: u64 },
    #[error("camera {camera}: cannot find the people to blur in the reference picture: {message}")]
    Privacy { camera: String, message: String },
    #[error("cannot encode the reference picture: {0}")]
    Encode(String),
    #[error(transparent)]
    Save(#[from] reference::ReferenceError),
}

/// A reference saved for a camera, and where.
#[derive(Debug)]
pub struct SavedReference {
    pub reference: Reference,
    pub file: PathBuf,
    pub picture: PathBuf,
    pub people_blurred: usize,
}

/// The tamper folder of a config.
pub fn tamper_dir(config: &Config) -> PathBuf {
    config.state_dir.join(TAMPER_DIR)
}

/// Watches the camera until its view has held still for `secs` (at most `secs` + `patience`),
/// then saves that view as its reference.
pub async fn set_reference(
    config: &Config,
    camera_id: &str,
    secs: f64,
    patience: Duration,
) -> Result<SavedReference, TamperToolError> {
    let Some(camera) = config.cameras.iter().find(|c| c.id == camera_id) else {
        let known: Vec<&str> = config.cameras.iter().map(|c| c.id.as_str()).collect();
        return Err(TamperToolError::UnknownCamera { camera: camera_id.to_string(), known: known.join(", ") });
    };
    let settings = config
        .tamper
        .for_camera(camera_id)
        .map_err(|invalid| TamperToolError::Settings { camera: camera_id.to_string(), problem: invalid.problem })?;
    let settings = TamperConfig { enabled: true, learn_secs: secs, ..settings };
    let mut watch = TamperWatch::new(camera_id, settings, None);
    let mut source = OpenSource::open(camera, None).await?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs) + patience;
    let mut sequence = 0u64;
    let mut decode_errors = 0;
    let (mut reference, image) = loop {
        if Instant::now() >= deadline {
            return Err(TamperToolError::NotStable {
                camera: camera_id.to_string(),
                secs,
                waited: (Duration::from_secs_f64(secs) + patience).as_secs(),
            });
        }
        let image = match tokio::time::timeout_at(deadline.into(), source.next_image()).await {
            Err(_) => continue,
            Ok(Ok(image)) => {
                decode_errors = 0;
                image
            }
            Ok(Err(error @ SourceError::Decode { .. })) => {
                decode_errors += 1;
                if decode_errors >= MAX_DECODE_ERRORS {
                    return Err(error.into());
                }
                continue;
            }
            Ok(Err(error)) => return Err(error.into()),
        };
        sequence += 1;
        let frame = Frame {
            camera: camera_id.into(),
            sequence,
            captured_at: Utc::now(),
            image: Arc::new(image),
            video: None,
            motion: None,
        };
        if let Some(learnt) = watch.observe(&frame).learnt {
            break (learnt, frame.image);
        }
    };
    reference.origin = ReferenceOrigin::Installer;
    let people = people_in(config, camera_id, &image)?;
    let mut picture: RgbImage = (*image).clone();
    let scene = config.scene_of(camera_id);
    let people_blurred = if scene.blur_people { people.len() } else { 0 };
    privacy::apply(&mut picture, &PrivacyMask::with_people(&scene, people));
    let jpeg = draw::encode_jpeg(&picture, config.evidence.jpeg_quality)
        .map_err(|e| TamperToolError::Encode(e.to_string()))?;
    let dir = tamper_dir(config);
    reference::save(&dir, &reference, &jpeg)?;
    Ok(SavedReference {
        file: reference::reference_path(&dir, camera_id),
        picture: reference::picture_path(&dir, camera_id),
        reference,
        people_blurred,
    })
}

/// The people the configured detectors find in the picture, when the camera blurs people.
fn people_in(
    config: &Config,
    camera_id: &str,
    image: &RgbImage,
) -> Result<Vec<crate::infer::BoundingBox>, TamperToolError> {
    if !config.scene_of(camera_id).blur_people {
        return Ok(Vec::new());
    }
    let privacy_error = |message: String| TamperToolError::Privacy { camera: camera_id.to_string(), message };
    let mut people = Vec::new();
    let mut detectors = 0;
    for model_config in &config.models {
        let mut model = Model::load_with(model_config, &config.inference).map_err(|e| privacy_error(e.to_string()))?;
        model.set_people(config.privacy.people_finder());
        let result = model.infer(image).map_err(|e| privacy_error(e.to_string()))?;
        if let Findings::Detect { .. } = result.findings {
            detectors += 1;
            people.extend(result.people);
        }
    }
    if detectors == 0 {
        return Err(privacy_error("no detector is configured (`privacy.blur_people` needs one)".into()));
    }
    Ok(people)
}
