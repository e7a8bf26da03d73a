"""The decoder benchmark of issue 18 (not a test): CPU cost of decoding one 1080p camera with each
decoder this box's GStreamer offers, for H.264 and H.265, as the agent's GStreamer path runs them
(decode, then `videoconvert` to RGB), and decoding alone.

The clips are the camera benchmark's 1080p H.264 clip (bench/camera_clip.py: real photos, zoom and
pan, Main profile, a keyframe every 2 s) and the same pictures encoded as H.265 by GStreamer's
x265enc. Each decoder reads the whole clip as fast as it can (`sync=false`); CPU is the child
process's user + system time (every decoder thread counts), so cores at 10 frames/s = CPU seconds
per frame x 10. `openh264dec` is Cisco's OpenH264 through GStreamer (Debian's build, with its
assembly): the decoder the agent's built-in path uses, here without retina and without the
agent's own YUV to RGB conversion. `ffmpeg` is measured too when it is installed.

    decoders.py --h264 clip.mp4 --h265 clip265.mp4 --frames N --rounds 3 --out results.md
"""

import argparse
import pathlib
import resource
import shutil
import subprocess
import sys
import time

PARSERS = {"h264": "h264parse", "h265": "h265parse"}
DECODERS = {
    "h264": [("avdec_h264", "FFmpeg (libavcodec) through GStreamer: what the agent's GStreamer path picks on a box without a hardware decoder"),
             ("openh264dec", "OpenH264 through GStreamer (the built-in path's decoder library)")],
    "h265": [("avdec_h265", "FFmpeg (libavcodec) through GStreamer: the agent's GStreamer path"),
             ("libde265dec", "libde265 through GStreamer (the fallback without gstreamer1.0-libav)")],
}


def available(element):
    return subprocess.run(["gst-inspect-1.0", element], capture_output=True).returncode == 0


def cpu_of(command):
    """(CPU seconds, wall seconds) of running `command` to the end; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-400:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def gst_command(clip, codec, decoder, rgb):
    line = ["gst-launch-1.0", "-q", "filesrc", f"location={clip}", "!", "qtdemux", "!", PARSERS[codec], "!", decoder]
    if rgb:
        line += ["!", "videoconvert", "!", "video/x-raw,format=RGB"]
    return line + ["!", "fakesink", "sync=false"]


def ffmpeg_command(clip, rgb):
    line = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(clip)]
    if rgb:
        line += ["-pix_fmt", "rgb24"]
    return line + ["-f", "null", "-"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--h264", type=pathlib.Path, required=True)
    parser.add_argument("--h265", type=pathlib.Path, required=True)
    parser.add_argument("--frames", type=int, required=True, help="pictures in each clip")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args()

    rows = []
    for codec, clip in (("h264", args.h264), ("h265", args.h265)):
        contenders = [(d, why, lambda rgb, d=d: gst_command(clip, codec, d, rgb)) for d, why in DECODERS[codec]]
        if shutil.which("ffmpeg"):
            contenders.append(("ffmpeg", "the ffmpeg command (libavcodec, its own threads)", lambda rgb: ffmpeg_command(clip, rgb)))
        for name, why, command in contenders:
            if name != "ffmpeg" and not available(name):
                rows.append((codec, name, why, None, None, "not installed"))
                continue
            # Best of the rounds: other work on a shared machine only ever adds time.
            decode = min(cpu_of(command(False))[0] for _ in range(args.rounds))
            with_rgb = min(cpu_of(command(True))[0] for _ in range(args.rounds))
            rows.append((codec, name, why, decode / args.frames, with_rgb / args.frames, ""))
            print(f"{codec} {name}: {1000 * decode / args.frames:.2f} ms/frame decode, "
                  f"{1000 * with_rgb / args.frames:.2f} ms/frame with RGB", flush=True)

    missing = [r for r in rows if r[3] is None]
    baseline = {codec: next((r[4] for r in rows if r[0] == codec and r[1].startswith("avdec") and r[4]), None)
                for codec in PARSERS}
    lines = [
        "| codec | decoder | CPU ms per frame, decode | CPU ms per frame, decode + RGB (as the agent) | cores per 1080p camera at 10 fps (with RGB) | ÷ avdec (with RGB) |",
        "|---|---|---|---|---|---|",
    ]
    for codec, name, why, decode, with_rgb, note in rows:
        if decode is None:
            lines.append(f"| {codec.upper()} | {name} | — | — | — | {note} |")
            continue
        ratio = with_rgb / baseline[codec] if baseline[codec] else float("nan")
        lines.append(f"| {codec.upper()} | `{name}` ({why}) | {1000 * decode:.2f} | {1000 * with_rgb:.2f} | {10 * with_rgb:.3f} | {ratio:.2f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if missing:
        print("not measured: " + ", ".join(r[1] for r in missing), file=sys.stderr)


if __name__ == "__main__":
    main()
