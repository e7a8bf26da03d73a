//! A real RTSP server for the end-to-end tests: Debian's GStreamer RTSP server (`rtsp_server.py`
//! beside this file, run by Debian's own python3 so it sees `gi`) on a loopback port the test owns,
//! so a test can kill, restart, freeze and thaw it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, missing_real_part, repo_root};

/// Debian's python3, which sees the `gi` bindings (a pyenv python on PATH does not).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

const HOW_TO_INSTALL: &str = "install gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-good \
     gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly with apt (scripts/test.sh does)";

pub struct RtspServer {
    args: Vec<String>,
    pub port: u16,
    child: Option<Child>,
}

/// What the server streams.
pub enum Stream<'a> {
    /// An endless H.264 stream of one picture.
    Picture { path: &'a Path, fps: u32 },
    /// An endless H.264 stream of one picture scaled to `size`: a camera's substream alone.
    PictureAt { path: &'a Path, fps: u32, size: (u32, u32) },
    /// A camera with two streams: the picture at its size on `/cam` (the main stream, `main`'s
    /// codec) and scaled to `substream` on `/sub` (H.264), as IP cameras serve them.
    TwoStreams { path: &'a Path, fps: u32, substream: (u32, u32), main_h265: bool },
    /// An endless H.264 stream of one picture of `size` with fresh noise in every frame: a live
    /// camera looking at a still scene.
    NoisyPicture { path: &'a Path, fps: u32, size: (u32, u32) },
    /// An endless H.265 (HEVC) stream of one picture.
    PictureH265 { path: &'a Path, fps: u32 },
    /// An endless H.265 stream of one picture with x265's own groups of pictures: a key frame
    /// every 250 pictures (25 s at 10 frames/s), B-frames, as "smart" H.265+ cameras send.
    LongGopH265 { path: &'a Path, fps: u32 },
    /// The H.264 track of an MP4 file, once.
    File(&'a Path),
}

impl RtspServer {
    /// Starts a server on a free port; `None` when GStreamer's RTSP server is missing outside CI.
    pub fn start(stream: Stream<'_>, credentials: Option<(&str, &str)>) -> Option<Self> {
        let probe = Command::new(SYSTEM_PYTHON)
            .args([
                "-c",
                "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer",
            ])
            .stderr(Stdio::null())
            .status();
        if !probe.is_ok_and(|s| s.success()) {
            missing_real_part("GStreamer RTSP server (python3-gi, gir1.2-gst-rtsp-server-1.0)", HOW_TO_INSTALL);
            return None;
        }
        let port = free_port();
        let mut server = Self { args: Vec::new(), port, child: None };
        server.set_stream(stream, credentials);
        server.restart();
        Some(server)
    }

    /// Serves something else on the same port from now on (kill and restart the server).
    pub fn switch_to(&mut self, stream: Stream<'_>) {
        self.set_stream(stream, None);
        self.restart();
    }

    fn set_stream(&mut self, stream: Stream<'_>, credentials: Option<(&str, &str)>) {
        let mut args = vec![script().display().to_string(), "--port".into(), self.port.to_string()];
        // A picture served as video: its file and rate, then what the variant adds.
        let picture = |args: &mut Vec<String>, path: &Path, fps: u32, more: &[String]| {
            args.extend(["--image".into(), path.display().to_string(), "--fps".into(), fps.to_string()]);
            args.extend_from_slice(more);
        };
        let size = |(width, height): (u32, u32)| format!("{width}x{height}");
        match stream {
            Stream::Picture { path, fps } => picture(&mut args, path, fps, &[]),
            Stream::PictureH265 { path, fps } => picture(&mut args, path, fps, &["--codec".into(), "h265".into()]),
            Stream::PictureAt { path, fps, size: at } => picture(&mut args, path, fps, &["--size".into(), size(at)]),
            Stream::TwoStreams { path, fps, substream, main_h265 } => {
                picture(&mut args, path, fps, &["--substream".into(), size(substream)]);
                if main_h265 {
                    args.extend(["--codec".into(), "h265".into()]);
                }
            }
            Stream::LongGopH265 { path, fps } => {
                picture(&mut args, path, fps, &["--codec".into(), "h265".into(), "--long-gop".into()])
            }
            Stream::NoisyPicture { path, fps, size: at } => {
                picture(&mut args, path, fps, &["--noise".into(), size(at)])
            }
            Stream::File(path) => args.extend(["--file".into(), path.display().to_string()]),
        }
        if let Some((user, password)) = credentials {
            args.extend(["--user".into(), user.into(), "--password".into(), password.into()]);
        }
        self.args = args;
    }

    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/cam", self.port)
    }

    /// The substream of [`Stream::TwoStreams`].
    pub fn substream_url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/sub", self.port)
    }

    pub fn url_with(&self, user: &str, password: &str) -> String {
        format!("rtsp://{user}:{password}@127.0.0.1:{}/cam", self.port)
    }

    /// Kills the server process (no goodbye to clients, as when a camera loses power).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the server on the same port and waits until it listens.
    pub fn restart(&mut self) {
        self.kill();
        let mut child = Command::new(SYSTEM_PYTHON)
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the RTSP server: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut first_line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut first_line);
        assert_eq!(first_line.trim(), "ready", "the RTSP server did not start: {first_line:?}");
        assert!(crate::wait_for_port(self.port, Duration::from_secs(10)), "RTSP server not listening");
        self.child = Some(child);
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing more arrives.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status();
            assert!(status.is_ok_and(|s| s.success()), "kill -{name} failed");
        }
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        // A frozen process ignores nothing but SIGKILL; thaw first anyway so it can exit cleanly.
        self.thaw();
        self.kill();
    }
}

fn script() -> PathBuf {
    repo_root().join("tests/support/rtsp_server.py")
}
