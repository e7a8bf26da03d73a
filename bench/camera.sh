#!/usr/bin/env bash
# The camera benchmark (issue 17): a real RTSP stream (1080p H.264 at 10 and 25 frames/s; 1 and 4
# cameras, served looping by Debian's GStreamer RTSP server) into the agent (`edge-agent run`, ort
# backend) and into a Python OpenCV (FFmpeg capture) + ONNX Runtime pipeline on the same stream, one
# after the other: CPU cores per camera, CPU per inferred frame, frames inferred per second,
# frame-to-event latency (median, p99) and peak RSS, with ratios from the same run and the goals.
# bench/camera_bench.py measures and writes the camera section of bench/RESULTS.md (with lscpu).
#
#   bash bench/camera.sh            # release build; about 10 minutes
#   bash bench/camera.sh --smoke    # debug build, 640×360, 1 camera, 10 fps, a few seconds: checks that
#                                   # every figure is produced (scripts/test.sh runs it); writes no results
#   bash bench/camera.sh --substream           # cameras per box (issue 31): 1080p main stream and
#                                               # 640×360 substream, 1/4/8/16 cameras, motion; ~25 min
#   bash bench/camera.sh --substream --smoke   # its smoke run (scripts/test.sh runs it)
#   bash bench/camera.sh --ab OLD NEW          # two agent builds (binaries) and Python taking turns,
#                                               # one 1080p camera every frame: CPU per frame, page
#                                               # faults, ratios; prints, writes no results; ~8 min
#   bash bench/camera.sh --ab OLD NEW --smoke  # its smoke run (scripts/test.sh runs it)
# EDGE_AGENT_BIN=path uses that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

driver=bench/camera_bench.py
ab=()
if [ "${1:-}" = "--substream" ]; then driver=bench/camera_substream.py; shift; fi
if [ "${1:-}" = "--ab" ]; then
  driver=bench/camera_ab.py
  ab=(--old "$2" --new "$3")
  export EDGE_AGENT_BIN="${EDGE_AGENT_BIN:-$3}" # nothing to build: the two builds are given
  shift 3
fi
smoke=()
if [ "${1:-}" = "--smoke" ]; then smoke=(--smoke); shift; fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edge-agent/target}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# The RTSP server (Debian's python3-gi and GStreamer RTSP server), x264enc for the clip, gst-launch.
missing=()
# The agent is built as the .deb is, with its GStreamer source (FFmpeg's decoders, event clips).
for package in gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
  gstreamer1.0-plugins-ugly gstreamer1.0-tools gstreamer1.0-libav libgstreamer1.0-dev \
  libgstreamer-plugins-base1.0-dev; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

bench_smoke=false
if [ ${#smoke[@]} -gt 0 ]; then bench_smoke=true; fi
bench_features=gstreamer
# shellcheck source=bench/agent_env.sh
source bench/agent_env.sh

results=bench/RESULTS.md
if [ ${#smoke[@]} -gt 0 ]; then
  results="$(mktemp --suffix=-camera-smoke.md)"
  trap 'rm -f "$results"' EXIT
fi
cache="${BENCH_CACHE:-$HOME/.cache/edge-agent/camera-bench}"
if [ ${#ab[@]} -gt 0 ]; then
  exec "$BENCH_PYTHON" "$driver" "${ab[@]}" --python "$BENCH_PYTHON" --cache "$cache" "${smoke[@]}" "$@"
fi
"$BENCH_PYTHON" "$driver" --agent "$agent" --python "$BENCH_PYTHON" \
  --cache "$cache" --results "$results" "${smoke[@]}" "$@"
