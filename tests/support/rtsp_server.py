#!/usr/bin/python3
"""A real RTSP server for the end-to-end tests: Debian's GStreamer RTSP server on loopback.

    rtsp_server.py --port PORT --image dog.jpg [--fps 5] [--codec h264|h265] [--noise WxH]
                   [--long-gop] [--size WxH] [--substream WxH] [--user U --password P]
        serves an endless H.264 (x264, baseline) or H.265 (x265, main) stream of one picture, a
        keyframe every 10 frames; with --noise (the picture's size), fresh sensor-like noise in
        every frame, as a live camera shows a still scene; with --long-gop (H.265), x265's own
        defaults: a key frame every 250 pictures, open groups, B-frames, as "smart" H.265+ cameras;
        with --size, the picture scaled to that size; with --substream, also the camera's
        substream at rtsp://127.0.0.1:PORT/sub: the same picture at that size, H.264, as IP
        cameras serve a low-resolution stream for detection beside the main one;
    rtsp_server.py --port PORT --file clip.mp4
        serves the H.264 track of an MP4 file once (used for damaged streams).

The stream is at rtsp://127.0.0.1:PORT/cam. Runs until killed; prints "ready" once listening.
Needs Debian's python3-gi, gir1.2-gst-rtsp-server-1.0 and gstreamer1.0-plugins-{good,bad,ugly}.
"""

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def launch_line(args, size=None, codec=None):
    codec = codec or args.codec
    size = size or args.size
    if args.file:
        return (
            f'( filesrc location="{args.file}" ! qtdemux ! h264parse config-interval=-1 '
            "! rtph264pay name=pay0 pt=96 )"
        )
    decoder = "pngdec" if args.image.lower().endswith(".png") else "jpegdec"
    caps = "image/png" if decoder == "pngdec" else "image/jpeg"
    if codec == "h265" and args.long_gop:
        encoder = (
            "x265enc speed-preset=ultrafast key-int-max=250 "
            "! video/x-h265,profile=main ! rtph265pay name=pay0 pt=96 config-interval=1"
        )
    elif codec == "h265":
        encoder = (
            "x265enc tune=zerolatency speed-preset=ultrafast key-int-max=10 "
            "! video/x-h265,profile=main ! rtph265pay name=pay0 pt=96 config-interval=1"
        )
    else:
        # A constant quantiser: a still picture's key frames come out identical every time, as a
        # hung camera's would (rate control would make each one a little different).
        encoder = (
            "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 pass=quant quantizer=21 "
            "! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1"
        )
    picture = f'multifilesrc location="{args.image}" loop=true caps="{caps},framerate={args.fps}/1" ! {decoder}'
    if size:
        width, height = size.split("x")
        picture += f" ! videoscale ! video/x-raw,width={width},height={height}"
    if args.noise:
        width, height = args.noise.split("x")
        # GStreamer's snow at a few percent over the picture: every frame differs a little.
        return (
            f"( {picture} ! videoconvert ! mix.sink_0 "
            f"videotestsrc pattern=snow ! video/x-raw,width={width},height={height},framerate={args.fps}/1 "
            f"! mix.sink_1 compositor name=mix sink_1::alpha=0.04 ! videoconvert ! video/x-raw,format=I420 "
            f"! {encoder} )"
        )
    return f"( {picture} ! videoconvert ! video/x-raw,format=I420 ! {encoder} )"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image")
    source.add_argument("--file")
    parser.add_argument("--fps", type=int, default=5)
    parser.add_argument("--codec", choices=["h264", "h265"], default="h264")
    parser.add_argument("--size", help="WIDTHxHEIGHT: the picture scaled to this size")
    parser.add_argument("--substream", help="WIDTHxHEIGHT: also serve the picture at this size (H.264) at /sub")
    parser.add_argument("--long-gop", action="store_true", help="H.265 with x265's key frame every 250 pictures")
    parser.add_argument("--noise", help="WIDTHxHEIGHT of the picture: add live noise to every frame")
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args))
    factory.set_shared(True)
    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", args.user)
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password or ""), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_role_from_structure(
            Gst.Structure.new_from_string(f"{args.user},media.factory.access=true,media.factory.construct=true")
        )
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory("/cam", factory)
    if args.substream:
        substream = GstRtspServer.RTSPMediaFactory()
        substream.set_launch(launch_line(args, size=args.substream, codec="h264"))
        substream.set_shared(True)
        if args.user:
            substream.set_permissions(permissions)
        server.get_mount_points().add_factory("/sub", substream)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        sys.exit(1)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
