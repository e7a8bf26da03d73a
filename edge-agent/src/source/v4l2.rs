//! USB camera source through Video4Linux2 and `nokhwa` (cargo feature `v4l2`). Owns finding the
//! device (path, by-id link or index), choosing a format the camera offers (pixel format, size,
//! rate), and turning MJPEG/YUYV buffers into RGB. Capture blocks, so it runs on a thread of its
//! own; a read error or silence (unplugged camera) ends the source and the camera task reopens it.

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::config::{PixelFormat, V4l2Device};
#[cfg(not(feature = "v4l2"))]
use super::SourceError;

/// What a camera says it can do: one pixel format at one size and rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferedFormat {
    pub pixel_format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

impl std::fmt::Display for OfferedFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}×{} at {} fps", self.pixel_format, self.width, self.height, self.fps)
    }
}

/// What the config asks for; `None` leaves the choice to [`choose_format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatRequest {
    pub pixel_format: PixelFormat,
    pub size: Option<(u32, u32)>,
    pub fps: Option<u32>,
}

/// Without a configured size: the largest the camera offers up to this many pixels, enough for
/// the models' 224–416 px inputs without spending USB bandwidth and decoding on 4K.
const DEFAULT_MAX_PIXELS: u32 = 1280 * 720;

/// Picks the format to open: the requested pixel format, the requested size (else the largest up
/// to 1280×720, else the smallest), the requested rate (else the highest for that size). The error
/// lists what the camera offers, so an installer can fix the config.
pub fn choose_format(offered: &[OfferedFormat], request: &FormatRequest) -> Result<OfferedFormat, String> {
    let list = |formats: &mut dyn Iterator<Item = &OfferedFormat>| {
        let mut names: Vec<String> = formats.map(ToString::to_string).collect();
        names.dedup();
        if names.is_empty() {
            "nothing".to_string()
        } else {
            names.join(", ")
        }
    };
    let same_format: Vec<&OfferedFormat> = offered.iter().filter(|f| f.pixel_format == request.pixel_format).collect();
    if same_format.is_empty() {
        return Err(format!(
            "the camera offers no {} format; it offers {}",
            request.pixel_format,
            list(&mut offered.iter())
        ));
    }
    let (width, height) = match request.size {
        Some(size) => {
            if !same_format.iter().any(|f| (f.width, f.height) == size) {
                return Err(format!(
                    "the camera offers no {} at {}×{}; it offers {}",
                    request.pixel_format,
                    size.0,
                    size.1,
                    list(&mut same_format.iter().copied())
                ));
            }
            size
        }
        None => {
            let area = |f: &OfferedFormat| f.width * f.height;
            let largest_fitting =
                same_format.iter().copied().filter(|f| area(f) <= DEFAULT_MAX_PIXELS).max_by_key(|f| area(f));
            let chosen = largest_fitting.or_else(|| same_format.iter().copied().min_by_key(|f| area(f)));
            chosen.map(|f| (f.width, f.height)).unwrap_or_default()
        }
    };
    let at_size: Vec<&OfferedFormat> =
        same_format.iter().copied().filter(|f| (f.width, f.height) == (width, height)).collect();
    let chosen = match request.fps {
        Some(fps) => at_size.iter().find(|f| f.fps == fps).ok_or_else(|| {
            format!(
                "the camera offers no {} {width}×{height} at {fps} fps; it offers {}",
                request.pixel_format,
                list(&mut at_size.iter().copied())
            )
        })?,
        None => at_size.iter().max_by_key(|f| f.fps).ok_or("the camera offers no frame rate")?,
    };
    Ok(**chosen)
}

/// The N of `/dev/videoN` for a configured device; links such as `/dev/v4l/by-id/...` are followed,
/// so a camera keeps its config entry when it comes back under another number.
pub fn resolve_device(device: &V4l2Device) -> Result<(u32, PathBuf), String> {
    let path = match device {
        V4l2Device::Index(index) => return Ok((*index, PathBuf::from(format!("/dev/video{index}")))),
        V4l2Device::Path(path) => path,
    };
    let real = std::fs::canonicalize(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("V4L2 device {} does not exist (is the camera plugged in?)", path.display())
        } else {
            format!("cannot look up V4L2 device {}: {e}", path.display())
        }
    })?;
    let index = device_index(&real).ok_or_else(|| {
        format!(
            "{} is not a V4L2 video device (it is {}); expected /dev/videoN or a /dev/v4l/by-id link to one",
            path.display(),
            real.display()
        )
    })?;
    Ok((index, real))
}

fn device_index(path: &Path) -> Option<u32> {
    if path.parent() != Some(Path::new("/dev")) {
        return None;
    }
    path.file_name()?.to_str()?.strip_prefix("video")?.parse().ok()
}

/// One camera buffer to RGB. MJPEG frames from UVC cameras often lack Huffman tables; the JPEG
/// decoder fills in the standard ones.
pub fn decode_buffer(pixel_format: PixelFormat, width: u32, height: u32, data: &[u8]) -> Result<RgbImage, String> {
    match pixel_format {
        PixelFormat::Mjpeg => {
            let picture = image::load_from_memory_with_format(data, image::ImageFormat::Jpeg)
                .map_err(|e| format!("bad MJPEG frame: {e}"))?
                .to_rgb8();
            Ok(picture)
        }
        PixelFormat::Yuyv => yuyv_to_rgb(width, height, data),
    }
}

/// YUYV 4:2:2 (Y0 U Y1 V per two pixels, BT.601 limited range) to RGB.
pub fn yuyv_to_rgb(width: u32, height: u32, data: &[u8]) -> Result<RgbImage, String> {
    let expected = width as usize * height as usize * 2;
    if width % 2 != 0 || data.len() < expected {
        return Err(format!("YUYV frame of {} bytes; expected {expected} for {width}×{height}", data.len()));
    }
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for quad in data[..expected].chunks_exact(4) {
        let (u, v) = (i32::from(quad[1]) - 128, i32::from(quad[3]) - 128);
        for y in [quad[0], quad[2]] {
            let c = 298 * (i32::from(y) - 16);
            let channel = |value: i32| ((value + 128) >> 8).clamp(0, 255) as u8;
            rgb.extend_from_slice(&[channel(c + 409 * v), channel(c - 100 * u - 208 * v), channel(c + 516 * u)]);
        }
    }
    RgbImage::from_raw(width, height, rgb).ok_or_else(|| "YUYV conversion size mismatch".to_string())
}

/// The settings a V4L2 camera is opened with.
#[derive(Debug, Clone)]
pub struct V4l2Settings {
    pub device: V4l2Device,
    pub request: FormatRequest,
}

#[cfg(feature = "v4l2")]
pub use capture::V4l2Source;

#[cfg(feature = "v4l2")]
mod capture {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use image::RgbImage;
    use nokhwa::utils::{CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType, Resolution};
    use nokhwa::Camera;
    use tokio::sync::{mpsc, oneshot};

    use super::{choose_format, decode_buffer, resolve_device, OfferedFormat, PixelFormat, V4l2Settings};
    use crate::source::SourceError;

    pub struct V4l2Source {
        camera: String,
        device_name: String,
        pictures: mpsc::Receiver<Result<RgbImage, SourceError>>,
        stop: Arc<AtomicBool>,
        silence_limit: Duration,
        pub format: OfferedFormat,
    }

    impl Drop for V4l2Source {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    fn to_frame_format(pixel_format: PixelFormat) -> FrameFormat {
        match pixel_format {
            PixelFormat::Mjpeg => FrameFormat::MJPEG,
            PixelFormat::Yuyv => FrameFormat::YUYV,
        }
    }

    fn offered(format: &CameraFormat) -> Option<OfferedFormat> {
        let pixel_format = match format.format() {
            FrameFormat::MJPEG => PixelFormat::Mjpeg,
            FrameFormat::YUYV => PixelFormat::Yuyv,
            _ => return None,
        };
        Some(OfferedFormat { pixel_format, width: format.width(), height: format.height(), fps: format.frame_rate() })
    }

    impl V4l2Source {
        pub async fn open(camera: &str, settings: &V4l2Settings) -> Result<Self, SourceError> {
            let open_error = |message: String| SourceError::Open { camera: camera.to_string(), message };
            let (index, path) = resolve_device(&settings.device).map_err(open_error)?;
            let device_name = if path.display().to_string() == settings.device.to_string() {
                settings.device.to_string()
            } else {
                format!("{} ({})", settings.device, path.display())
            };
            let (ready_tx, ready_rx) = oneshot::channel();
            let (picture_tx, pictures) = mpsc::channel(1);
            let stop = Arc::new(AtomicBool::new(false));
            let thread_stop = stop.clone();
            let request = settings.request;
            let (thread_camera, thread_device) = (camera.to_string(), device_name.clone());
            std::thread::Builder::new()
                .name(format!("v4l2 {camera}"))
                .spawn(move || {
                    capture(&thread_camera, index, &thread_device, request, ready_tx, picture_tx, thread_stop)
                })
                .map_err(|e| open_error(format!("cannot start the capture thread: {e}")))?;
            let format = ready_rx
                .await
                .map_err(|_| open_error(format!("the capture thread for {device_name} ended")))?
                .map_err(|message| open_error(format!("{device_name}: {message}")))?;
            tracing::info!(camera, device = %device_name, "capturing {format}");
            // A camera that sends nothing for ten frame times (at least 5 s) is as good as gone.
            let silence_limit = Duration::from_secs_f64((10.0 / f64::from(format.fps.max(1))).max(5.0));
            Ok(Self { camera: camera.to_string(), device_name, pictures, stop, silence_limit, format })
        }

        pub async fn next_image(&mut self) -> Result<RgbImage, SourceError> {
            match tokio::time::timeout(self.silence_limit, self.pictures.recv()).await {
                Ok(Some(picture)) => picture,
                Ok(None) => Err(SourceError::Lost {
                    camera: self.camera.clone(),
                    message: format!("{}: capture stopped", self.device_name),
                }),
                Err(_) => Err(SourceError::Stalled {
                    camera: self.camera.clone(),
                    message: format!("no frame from {} for {} s", self.device_name, self.silence_limit.as_secs_f64()),
                }),
            }
        }
    }

    /// The capture thread: opens and negotiates, reports that, then reads until told to stop, the
    /// receiver goes away, or the device fails.
    fn capture(
        camera_id: &str,
        index: u32,
        device_name: &str,
        request: super::FormatRequest,
        ready: oneshot::Sender<Result<OfferedFormat, String>>,
        pictures: mpsc::Sender<Result<RgbImage, SourceError>>,
        stop: Arc<AtomicBool>,
    ) {
        let opened = (|| {
            let any =
                RequestedFormat::with_formats(RequestedFormatType::None, &[FrameFormat::MJPEG, FrameFormat::YUYV]);
            let mut camera = Camera::new(CameraIndex::Index(index), any).map_err(|e| e.to_string())?;
            let offered: Vec<OfferedFormat> = camera
                .compatible_camera_formats()
                .map_err(|e| format!("cannot list formats: {e}"))?
                .iter()
                .filter_map(offered)
                .collect();
            let chosen = choose_format(&offered, &request)?;
            let exact = CameraFormat::new(
                Resolution::new(chosen.width, chosen.height),
                to_frame_format(chosen.pixel_format),
                chosen.fps,
            );
            let formats = [exact.format()];
            camera
                .set_camera_requset(RequestedFormat::with_formats(RequestedFormatType::Exact(exact), &formats))
                .map_err(|e| format!("cannot set {chosen}: {e}"))?;
            camera.open_stream().map_err(|e| format!("cannot start streaming: {e}"))?;
            Ok::<_, String>((camera, chosen))
        })();
        let (mut camera, chosen) = match opened {
            Ok(opened) => opened,
            Err(message) => {
                let _ = ready.send(Err(message));
                return;
            }
        };
        if ready.send(Ok(chosen)).is_err() {
            return;
        }
        while !stop.load(Ordering::Relaxed) {
            let outcome = match camera.frame_raw() {
                Ok(buffer) => {
                    decode_buffer(chosen.pixel_format, chosen.width, chosen.height, &buffer).map_err(|message| {
                        SourceError::Decode {
                            camera: camera_id.to_string(),
                            what: format!("a frame from {device_name}"),
                            message,
                        }
                    })
                }
                Err(e) => {
                    let _ = pictures.blocking_send(Err(SourceError::Lost {
                        camera: camera_id.to_string(),
                        message: format!("{device_name}: {e}"),
                    }));
                    break;
                }
            };
            if pictures.blocking_send(outcome).is_err() {
                break;
            }
        }
        let _ = camera.stop_stream();
    }
}

/// Stand-in when the agent was built without the `v4l2` feature: says so, naming the camera.
#[cfg(not(feature = "v4l2"))]
pub struct V4l2Source {
    pub format: OfferedFormat,
}

#[cfg(not(feature = "v4l2"))]
impl V4l2Source {
    pub async fn open(camera: &str, settings: &V4l2Settings) -> Result<Self, SourceError> {
        Err(SourceError::Open {
            camera: camera.to_string(),
            message: format!(
                "cannot open V4L2 device {}: this agent was built without V4L2 support \
                 (build it with `cargo build --release --features v4l2`)",
                settings.device
            ),
        })
    }

    pub async fn next_image(&mut self) -> Result<RgbImage, SourceError> {
        Err(SourceError::Ended { camera: String::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Formats a Logitech C920 reports (a subset), as `v4l2-ctl --list-formats-ext` shows them.
    fn c920() -> Vec<OfferedFormat> {
        let mut formats = Vec::new();
        for (pixel_format, sizes) in [
            (
                PixelFormat::Yuyv,
                &[(640, 480, &[30, 24, 15][..]), (1280, 720, &[10, 5][..]), (1920, 1080, &[5][..])][..],
            ),
            (
                PixelFormat::Mjpeg,
                &[(640, 480, &[30, 24, 15][..]), (1280, 720, &[30, 15][..]), (1920, 1080, &[30][..])][..],
            ),
        ] {
            for (width, height, rates) in sizes {
                for fps in *rates {
                    formats.push(OfferedFormat { pixel_format, width: *width, height: *height, fps: *fps });
                }
            }
        }
        formats
    }

    fn request(pixel_format: PixelFormat, size: Option<(u32, u32)>, fps: Option<u32>) -> FormatRequest {
        FormatRequest { pixel_format, size, fps }
    }

    #[test]
    fn without_a_size_the_largest_up_to_720p_at_its_highest_rate_is_chosen() {
        let chosen = choose_format(&c920(), &request(PixelFormat::Mjpeg, None, None)).unwrap();
        assert_eq!((chosen.width, chosen.height, chosen.fps), (1280, 720, 30));
        let chosen = choose_format(&c920(), &request(PixelFormat::Yuyv, None, None)).unwrap();
        assert_eq!((chosen.width, chosen.height, chosen.fps), (1280, 720, 10));
    }

    #[test]
    fn an_exact_request_is_honoured() {
        let chosen = choose_format(&c920(), &request(PixelFormat::Yuyv, Some((640, 480)), Some(15))).unwrap();
        assert_eq!(chosen, OfferedFormat { pixel_format: PixelFormat::Yuyv, width: 640, height: 480, fps: 15 });
    }

    #[test]
    fn an_impossible_request_lists_what_the_camera_offers() {
        let err = choose_format(&c920(), &request(PixelFormat::Yuyv, Some((1920, 1080)), Some(30))).unwrap_err();
        assert!(err.contains("no YUYV 1920×1080 at 30 fps") && err.contains("YUYV 1920×1080 at 5 fps"), "{err}");
        let err = choose_format(&c920(), &request(PixelFormat::Mjpeg, Some((800, 600)), None)).unwrap_err();
        assert!(err.contains("800×600") && err.contains("MJPEG 1280×720 at 30 fps"), "{err}");
        let yuyv_only: Vec<_> = c920().into_iter().filter(|f| f.pixel_format == PixelFormat::Yuyv).collect();
        let err = choose_format(&yuyv_only, &request(PixelFormat::Mjpeg, None, None)).unwrap_err();
        assert!(err.contains("no MJPEG") && err.contains("YUYV 640×480 at 30 fps"), "{err}");
    }

    #[test]
    fn a_missing_device_is_named_in_the_error() {
        let err = resolve_device(&V4l2Device::Path("/dev/video7".into())).unwrap_err();
        assert!(err.contains("/dev/video7") && err.contains("does not exist"), "{err}");
    }

    #[test]
    fn a_path_that_is_not_a_video_device_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("usb-Acme_Cam-video-index0");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        let err = resolve_device(&V4l2Device::Path(link.clone())).unwrap_err();
        assert!(err.contains(&link.display().to_string()) && err.contains("/dev/null"), "{err}");
        assert_eq!(resolve_device(&V4l2Device::Index(3)).unwrap(), (3, PathBuf::from("/dev/video3")));
        assert_eq!(device_index(Path::new("/dev/video12")), Some(12));
        assert_eq!(device_index(Path::new("/tmp/video1")), None);
    }

    #[test]
    fn yuyv_grey_and_colour_convert_to_the_right_rgb() {
        // Two pixels: Y=235 white and Y=16 black with neutral chroma, then a saturated red pair.
        let data = [235, 128, 16, 128, 81, 90, 81, 240];
        let rgb = yuyv_to_rgb(4, 1, &data).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [0, 0, 0]);
        let [r, g, b] = rgb.get_pixel(2, 0).0;
        assert!(r > 240 && g < 15 && b < 15, "{r} {g} {b}");
        assert!(yuyv_to_rgb(4, 2, &data).unwrap_err().contains("expected 16"));
    }

    #[test]
    fn an_mjpeg_frame_decodes_and_a_broken_one_is_an_error() {
        let jpeg = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/samples/dog.jpg")).unwrap();
        assert_eq!(decode_buffer(PixelFormat::Mjpeg, 768, 576, &jpeg).unwrap().dimensions(), (768, 576));
        assert!(decode_buffer(PixelFormat::Mjpeg, 768, 576, &jpeg[..200]).unwrap_err().contains("MJPEG"));
    }

    #[tokio::test]
    async fn opening_a_missing_camera_names_the_device() {
        let settings = V4l2Settings {
            device: V4l2Device::Path("/dev/video7".into()),
            request: request(PixelFormat::Mjpeg, None, None),
        };
        let err = V4l2Source::open("bin-cam", &settings).await.err().unwrap();
        let text = err.to_string();
        assert!(text.contains("bin-cam") && text.contains("/dev/video7"), "{text}");
    }

    #[tokio::test]
    async fn opening_a_missing_camera_by_index_goes_through_v4l2_and_names_the_device() {
        let settings =
            V4l2Settings { device: V4l2Device::Index(7), request: request(PixelFormat::Yuyv, Some((640, 480)), None) };
        let err = V4l2Source::open("bin-cam", &settings).await.err().unwrap();
        let text = err.to_string();
        assert!(text.contains("bin-cam") && text.contains("/dev/video7"), "{text}");
        if cfg!(feature = "v4l2") {
            // nokhwa's own open of /dev/video7 failed, and said why.
            assert!(text.contains("No such file or directory"), "{text}");
        }
    }
}
