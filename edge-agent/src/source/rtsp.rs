//! RTSP source for IP cameras: retina (pure Rust) over TCP interleaved transport, H.264 decoded by
//! OpenH264. Decoding starts at a keyframe (and restarts at one after loss or a corrupt frame); a
//! stall watchdog turns "no picture for N seconds" into an error, so the camera task reconnects.
//! Every message names the camera URL with its password replaced by `***`.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use image::RgbImage;
use retina::client::{Credentials, Demuxed, PlayOptions, Session, SessionOptions, SetupOptions, Transport};
use retina::codec::{CodecItem, FrameFormat};
use tokio::time::Instant;

use super::config::RtspUrl;
use super::h264::H264Decoder;
use super::SourceError;

pub struct RtspSource {
    camera: String,
    url: RtspUrl,
    stream: Pin<Box<Demuxed>>,
    /// Taken out while a blocking task decodes.
    decoder: Option<H264Decoder>,
    waiting_for_keyframe: bool,
    stall_timeout: Duration,
    /// Pictures closer together than this are decoded but not converted or handed on.
    min_interval: Option<Duration>,
    last_picture: Instant,
    last_handed_on: Option<Instant>,
}

impl RtspSource {
    /// Connects, picks the first H.264 video stream, and starts playing; all within `stall_timeout`.
    pub async fn open(
        camera: &str,
        url: &RtspUrl,
        fps: Option<f64>,
        stall_timeout: Duration,
    ) -> Result<Self, SourceError> {
        let open_error = |message: String| SourceError::Open { camera: camera.to_string(), message };
        let connect = async {
            let credentials =
                url.credentials().map(|(u, p)| Credentials { username: u.to_string(), password: p.to_string() });
            let options = SessionOptions::default()
                .creds(credentials)
                .user_agent(format!("edge-agent/{}", env!("CARGO_PKG_VERSION")));
            let mut session = Session::describe(url.bare().clone(), options)
                .await
                .map_err(|e| open_error(format!("cannot describe {url}: {e}")))?;
            let video = session
                .streams()
                .iter()
                .position(|s| s.media() == "video" && s.encoding_name().eq_ignore_ascii_case("h264"))
                .ok_or_else(|| {
                    let offered: Vec<String> =
                        session.streams().iter().map(|s| format!("{}/{}", s.media(), s.encoding_name())).collect();
                    open_error(format!("{url} offers no H.264 video stream (it offers {})", offered.join(", ")))
                })?;
            // Annex B with SPS/PPS before every keyframe: what the decoder reads as is.
            let setup =
                SetupOptions::default().transport(Transport::Tcp(Default::default())).frame_format(FrameFormat::SIMPLE);
            session.setup(video, setup).await.map_err(|e| open_error(format!("cannot set up {url}: {e}")))?;
            let playing = session
                .play(PlayOptions::default())
                .await
                .map_err(|e| open_error(format!("cannot play {url}: {e}")))?;
            playing.demuxed().map_err(|e| open_error(format!("cannot read {url}: {e}")))
        };
        let stream = tokio::time::timeout(stall_timeout, connect)
            .await
            .map_err(|_| open_error(format!("{url} did not answer within {} s", stall_timeout.as_secs_f64())))??;
        let decoder = H264Decoder::new().map_err(|e| open_error(e.to_string()))?;
        Ok(Self {
            camera: camera.to_string(),
            url: url.clone(),
            stream: Box::pin(stream),
            decoder: Some(decoder),
            waiting_for_keyframe: true,
            stall_timeout,
            min_interval: fps.map(|fps| Duration::from_secs_f64(1.0 / fps)),
            last_picture: Instant::now(),
            last_handed_on: None,
        })
    }

    fn lost(&self, message: String) -> SourceError {
        SourceError::Lost { camera: self.camera.clone(), message: format!("{}: {message}", self.url) }
    }

    pub async fn next_image(&mut self) -> Result<RgbImage, SourceError> {
        loop {
            let deadline = self.last_picture + self.stall_timeout;
            let item =
                match tokio::time::timeout_at(deadline, std::future::poll_fn(|cx| self.stream.as_mut().poll_next(cx)))
                    .await
                {
                    Err(_) => {
                        return Err(SourceError::Stalled {
                            camera: self.camera.clone(),
                            message: format!("no picture from {} for {} s", self.url, self.stall_timeout.as_secs_f64()),
                        })
                    }
                    Ok(None) => return Err(self.lost("the server ended the stream".into())),
                    Ok(Some(Err(e))) => return Err(self.lost(e.to_string())),
                    Ok(Some(Ok(item))) => item,
                };
            let CodecItem::VideoFrame(frame) = item else {
                continue;
            };
            if frame.loss() > 0 {
                // Pictures after a gap reference data we never got.
                self.waiting_for_keyframe = true;
            }
            if self.waiting_for_keyframe && !frame.is_random_access_point() {
                continue;
            }
            let now = Instant::now();
            let want = match (self.min_interval, self.last_handed_on) {
                (Some(interval), Some(last)) => now.duration_since(last) >= interval,
                _ => true,
            };
            let Some(mut decoder) = self.decoder.take() else {
                return Err(self.lost("the decoder was lost".into()));
            };
            let data = frame.into_data();
            let worked = tokio::task::spawn_blocking(move || {
                let outcome = decoder.decode(&data, want);
                (decoder, outcome)
            })
            .await;
            let (decoder, outcome) = worked.map_err(|e| self.lost(format!("decoder task failed: {e}")))?;
            self.decoder = Some(decoder);
            match outcome {
                Ok(picture) => {
                    self.waiting_for_keyframe = false;
                    self.last_picture = Instant::now();
                    if let Some(picture) = picture {
                        self.last_handed_on = Some(now);
                        return Ok(picture);
                    }
                }
                Err(e) => {
                    self.waiting_for_keyframe = true;
                    return Err(SourceError::Decode {
                        camera: self.camera.clone(),
                        what: format!("a frame from {}", self.url),
                        message: e.to_string(),
                    });
                }
            }
        }
    }
}
