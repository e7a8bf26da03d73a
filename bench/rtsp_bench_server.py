#!/usr/bin/python3
"""The camera benchmark's RTSP cameras: Debian's GStreamer RTSP server on loopback, serving an H.264
MP4 clip looped forever, without re-encoding, on N mount points.

    rtsp_bench_server.py --port PORT --file clip.mp4 --fps 10 --cameras 4 [--sub-file sub.mp4 --sub-fps 5]

With --sub-file, each camera also serves that clip (the same scene, smaller) as its substream at
rtsp://127.0.0.1:PORT/camK-sub, starting at the same point of the scene as its main stream.

The clip's access units are read once into memory; each client of rtsp://127.0.0.1:PORT/camK gets
its own stream that starts K/N of the way into the clip (so the cameras do not move in step) and
loops with rising timestamps, paced at --fps by the server's clock, as a real camera sends. Prints
"ready" once listening; runs until killed. Needs Debian's python3-gi, gir1.2-gst-rtsp-server-1.0 and
gstreamer1.0-plugins-{good,bad}; run it with Debian's /usr/bin/python3.
"""

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

CAPS = "video/x-h264,stream-format=byte-stream,alignment=au"


def read_access_units(path):
    """The clip's H.264 access units in Annex B form, SPS/PPS before every keyframe."""
    pipeline = Gst.parse_launch(
        f'filesrc location="{path}" ! qtdemux ! h264parse config-interval=-1 ! {CAPS} '
        "! appsink name=sink sync=false"
    )
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    units = []
    while True:
        sample = sink.emit("pull-sample")
        if sample is None:
            break
        buffer = sample.get_buffer()
        ok, info = buffer.map(Gst.MapFlags.READ)
        if not ok:
            sys.exit(f"{path}: cannot read access unit {len(units)}")
        keyframe = not buffer.has_flags(Gst.BufferFlags.DELTA_UNIT)
        units.append((bytes(info.data), keyframe))
        buffer.unmap(info)
    bus = pipeline.get_bus()
    error = bus.pop_filtered(Gst.MessageType.ERROR)
    pipeline.set_state(Gst.State.NULL)
    if error is not None:
        sys.exit(f"{path}: {error.parse_error()[0].message}")
    if not units or not units[0][1]:
        sys.exit(f"{path}: expected an H.264 MP4 clip starting with a keyframe; found {len(units)} access units")
    return units


class LoopingCamera:
    """Feeds one client's appsrc: the clip from a keyframe near `start`, looped, one frame per 1/fps."""

    def __init__(self, units, fps, start):
        self.units = units
        self.duration = Gst.SECOND // fps
        keyframes = [i for i, (_, key) in enumerate(units) if key]
        self.index = max(k for k in keyframes if k <= start)
        self.frames = 0

    def need_data(self, appsrc, _length):
        data, keyframe = self.units[self.index]
        buffer = Gst.Buffer.new_wrapped(data)
        buffer.pts = self.frames * self.duration
        buffer.dts = buffer.pts
        buffer.duration = self.duration
        if not keyframe:
            buffer.set_flags(Gst.BufferFlags.DELTA_UNIT)
        self.frames += 1
        self.index = (self.index + 1) % len(self.units)
        appsrc.emit("push-buffer", buffer)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", required=True, help="H.264 MP4 clip (no B-frames)")
    parser.add_argument("--fps", type=int, required=True)
    parser.add_argument("--cameras", type=int, default=1)
    parser.add_argument("--sub-file", help="H.264 MP4 clip served as each camera's substream")
    parser.add_argument("--sub-fps", type=int, default=5)
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    mount(server, read_access_units(args.file), args.fps, args.cameras, "")
    if args.sub_file:
        mount(server, read_access_units(args.sub_file), args.sub_fps, args.cameras, "-sub")
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        sys.exit(1)
    print("ready", flush=True)
    GLib.MainLoop().run()


def mount(server, units, fps, cameras, suffix):
    """/cam0{suffix} … /cam{cameras-1}{suffix}: camera K starts K/N of the way into the clip."""
    for camera in range(cameras):
        factory = GstRtspServer.RTSPMediaFactory()
        # is-live: frames leave at the pace of their timestamps, as from a camera; none are queued
        # for a client that connects late.
        factory.set_launch(
            f'( appsrc name=src is-live=true format=time do-timestamp=false caps="{CAPS}" '
            "! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
        factory.set_shared(False)
        start = camera * len(units) // cameras

        def configure(_factory, media, start=start):
            appsrc = media.get_element().get_by_name("src")
            appsrc.connect("need-data", LoopingCamera(units, fps, start).need_data)

        factory.connect("media-configure", configure)
        server.get_mount_points().add_factory(f"/cam{camera}{suffix}", factory)


if __name__ == "__main__":
    main()
