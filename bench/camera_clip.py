"""Makes the camera benchmark's clip: H.264 (Main profile, no B-frames, a keyframe every 2 s, as an
IP camera's main stream) from real photos with moving content, to be looped by
bench/rtsp_bench_server.py.

Each 6-second cycle is 3 s of models/samples/dog.jpg (a truck, a car and a bicycle: the object
rule's labels) with a slow zoom and pan, then 3 s of models/samples/person.jpg (nothing the rule
reports) with its own zoom, so the vehicles leave and come back and the agent's events start and end
about once a second (a busy station, not a quiet one). Frames are drawn with OpenCV and encoded by GStreamer's x264enc
(gst-launch-1.0 reads them raw on its standard input).

    camera_clip.py --out clip.mp4 --width 1920 --height 1080 --fps 10 --seconds 12

With --still-secs S, a quiet scene instead (issue 31's cameras-per-box benchmark): each cycle is the
same 3 s of vehicles, then S seconds of person.jpg standing still (nothing moves: a quiet yard), so
with S = 27 something moves 10 % of the time. The same arguments at another size and rate give the
camera's substream, picture for picture the same scene.
"""

import argparse
import pathlib
import subprocess
import sys

import cv2
import numpy as np

CYCLE_SECS = 6.0
VEHICLES_SECS = 3.0


def scene(photo, width, height, progress, zoom_to, pan):
    """`photo` scaled to cover width×height, zoomed by 1 → zoom_to and panned by `pan` (share of
    the frame) as `progress` goes 0 → 1."""
    h, w = photo.shape[:2]
    cover = max(width / w, height / h)
    zoom = cover * (1.0 + (zoom_to - 1.0) * progress)
    # Keep the zoomed photo covering the frame while its centre moves by pan × progress.
    dx = (width - w * zoom) / 2 + pan[0] * progress * width
    dy = (height - h * zoom) / 2 + pan[1] * progress * height
    dx = min(0.0, max(dx, width - w * zoom))
    dy = min(0.0, max(dy, height - h * zoom))
    matrix = np.float32([[zoom, 0, dx], [0, zoom, dy]])
    return cv2.warpAffine(photo, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--fps", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=12.0, help="length of the loop (whole cycles)")
    parser.add_argument("--bitrate-kbps", type=int, default=4000)
    parser.add_argument("--samples", type=pathlib.Path, default=pathlib.Path("models/samples"))
    parser.add_argument("--still-secs", type=float, help="a quiet scene: this long still after the vehicles")
    args = parser.parse_args()
    cycle_secs = VEHICLES_SECS + args.still_secs if args.still_secs else CYCLE_SECS

    photos = {}
    for name in ("dog.jpg", "person.jpg"):
        photo = cv2.imread(str(args.samples / name), cv2.IMREAD_COLOR)
        if photo is None:
            sys.exit(f"cannot read {args.samples / name}; expected a JPEG photo")
        photos[name] = photo
    cycles = max(1, round(args.seconds / cycle_secs))
    frames = int(cycles * cycle_secs * args.fps)
    keyframe_every = 2 * args.fps
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".partial.mp4")
    encoder = subprocess.Popen(
        [
            "gst-launch-1.0", "-q", "fdsrc", "fd=0", "!",
            "rawvideoparse", f"width={args.width}", f"height={args.height}", "format=bgr",
            f"framerate={args.fps}/1", "!",
            "videoconvert", "!", "video/x-raw,format=I420", "!",
            "x264enc", f"bitrate={args.bitrate_kbps}", "speed-preset=faster", "bframes=0",
            f"key-int-max={keyframe_every}", "!",
            "video/x-h264,profile=main", "!", "h264parse", "!", "mp4mux", "!",
            "filesink", f"location={partial}",
        ],
        stdin=subprocess.PIPE,
    )  # fmt: skip
    still = None
    for n in range(frames):
        t = (n / args.fps) % cycle_secs
        cycle = int(n / args.fps / cycle_secs)
        # Alternate the direction of zoom and pan from cycle to cycle, so no two cycles are alike.
        direction = 1.0 if cycle % 2 == 0 else -1.0
        if t < VEHICLES_SECS:
            frame = scene(photos["dog.jpg"], args.width, args.height, t / VEHICLES_SECS, 1.15, (0.04 * direction, 0.02))
        elif args.still_secs:
            if still is None:
                still = scene(photos["person.jpg"], args.width, args.height, 0.0, 1.0, (0.0, 0.0))
            frame = still
        else:
            progress = (t - VEHICLES_SECS) / (CYCLE_SECS - VEHICLES_SECS)
            frame = scene(photos["person.jpg"], args.width, args.height, progress, 1.1, (-0.03 * direction, 0.0))
        try:
            encoder.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError:
            break
    encoder.stdin.close()
    if encoder.wait() != 0:
        sys.exit(f"gst-launch-1.0 (x264enc) failed making {args.out}; is gstreamer1.0-plugins-ugly installed?")
    partial.replace(args.out)
    print(f"{args.out}: {args.width}×{args.height}, {args.fps} frames/s, {frames} frames ({cycles} cycles of {cycle_secs:g} s)")


if __name__ == "__main__":
    main()
