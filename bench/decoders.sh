#!/usr/bin/env bash
# The decoder benchmark of issue 18: CPU per 1080p camera at 10 frames/s for each decoder GStreamer
# offers here (H.264 and H.265, decode and decode + RGB as the agent's GStreamer path does), in one
# run, with the machine recorded (lscpu). Writes the "Video decoders" section of bench/RESULTS.md.
#
#   bash bench/decoders.sh           # 1080p, 30 s clips, best of 3 rounds (a few minutes)
#   bash bench/decoders.sh --smoke   # 320x180, 2 s clips, 1 round: checks that it runs end to end
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=false
[ "${1:-}" = --smoke ] && smoke=true
if $smoke; then width=320 height=180 seconds=6 rounds=1; else width=1920 height=1080 seconds=30 rounds=3; fi
fps=10
frames=$((seconds * fps))

# shellcheck source=bench/python_env.sh
source bench/python_env.sh
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== clips: ${width}x${height}, ${seconds} s at ${fps} frames/s, H.264 and H.265"
"$BENCH_PYTHON" bench/camera_clip.py --out "$work/clip264.mp4" --width "$width" --height "$height" --fps "$fps" \
  --seconds "$seconds" >/dev/null
gst-launch-1.0 -q filesrc location="$work/clip264.mp4" ! qtdemux ! h264parse ! avdec_h264 ! videoconvert \
  ! video/x-raw,format=I420 ! x265enc speed-preset=fast bitrate=3000 key-int-max=20 ! video/x-h265,profile=main \
  ! h265parse ! mp4mux ! filesink location="$work/clip265.mp4"

echo "== decoding"
/usr/bin/python3 bench/decoders.py --h264 "$work/clip264.mp4" --h265 "$work/clip265.mp4" --frames "$frames" \
  --rounds "$rounds" --out "$work/table.md"
table="$(cat "$work/table.md")"
for codec in H264 H265; do
  grep -q "^| $codec | \`avdec" <<<"$table" || { echo "no avdec figure for $codec (is gstreamer1.0-libav installed?)"; exit 1; }
done
$smoke && { echo "== smoke run complete"; exit 0; }

model="$(lscpu | sed -n 's/^Model name: *//p')"
flags="$(lscpu | sed -n 's/^Flags: *//p')"
section="## Video decoders (issue 18)

Written by \`bash bench/decoders.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'): ${width}×${height} clips of ${seconds} s at ${fps} frames/s
(bench/camera_clip.py's real photos, H.264 Main; the same pictures as H.265 by x265enc), each decoded
to the end as fast as possible, best CPU time (user + system, all threads, GStreamer's own start of
about 0.2 s included) of ${rounds} rounds. Machine:
${model}, $(nproc) logical cores, load before the run $(cut -d' ' -f1-3 /proc/loadavg).

${table}

The agent's GStreamer path runs the decode + RGB column. OpenH264's figure is the same library as the
built-in path without its RTSP client and its own YUV → RGB conversion; the camera benchmark above
measures the built-in path in the running agent.

lscpu Flags: ${flags}
"
/usr/bin/python3 - "$section" <<'PY'
import pathlib, re, sys
path = pathlib.Path("bench/RESULTS.md")
text = path.read_text()
section = sys.argv[1].rstrip() + "\n"
pattern = re.compile(r"## Video decoders \(issue 18\)\n.*?(?=\n## |\Z)", re.S)
text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
path.write_text(text)
PY
echo "== wrote the video decoders section of bench/RESULTS.md"
