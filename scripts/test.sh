#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian machine that has only Rust: installs the system
# packages the tests need (mosquitto, chromium), builds the agent binary the end-to-end tests run, then runs
# the unit tests and the end-to-end tests in tests/, then the benchmarks in their smoke mode. `.ci/run`
# calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Builds are cached outside the clone so a second run is fast; a cold run builds everything.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edge-agent/target}"
mkdir -p "$CARGO_TARGET_DIR"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v systemd-analyze >/dev/null || missing+=(systemd)
# The fleet tests run a real three-node broker cluster (nats-server with MQTT on JetStream).
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
# The packaged-install test makes the service user as the package does and runs the agent as it,
# with the rest of the file system read-only in a private mount namespace (unshare, setpriv).
command -v adduser >/dev/null || missing+=(adduser)
{ command -v unshare >/dev/null && command -v setpriv >/dev/null; } || missing+=(util-linux)
# The power-cut tests mount a filesystem that forgets what was not fsynced (tests/support/crashfs,
# FUSE): fuse3's fusermount3 mounts it where the mount system call is refused.
command -v fusermount3 >/dev/null || missing+=(fuse3)
# The platform tool's tests store into a PostgreSQL cluster of their own (initdb and pg_ctl on a free
# port, run as the package's `postgres` user when the tests run as root).
{ command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || missing+=(postgresql)
# The web page's browser tests: Debian's chromium driven through chromedriver.
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
# Chinese labels in the browser tests' screenshots need a CJK font.
{ command -v fc-list >/dev/null && [ -n "$(fc-list :lang=zh family)" ]; } || missing+=(fonts-wqy-microhei)
# Build: OpenH264's bundled C++ source (RTSP/MP4 cameras); bindgen for V4L2 (feature edge-agent/v4l2).
command -v c++ >/dev/null || missing+=(g++)
# OpenH264's x86 assembly (SSE2/SSSE3/AVX2 motion compensation, IDCT, deblocking): without nasm its
# build silently falls back to plain C, and the decoder costs about a quarter more CPU (bench/RESULTS.md).
command -v nasm >/dev/null || missing+=(nasm)
# GStreamer source (feature edge-agent/gstreamer): its development files to build, FFmpeg's decoders.
for package in libclang-dev libv4l-dev libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-libav \
  gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
  gstreamer1.0-plugins-ugly gstreamer1.0-tools; do
  # The RTSP tests run a real GStreamer RTSP server (tests/support/rtsp_server.py).
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
# Event clips are checked with FFmpeg's ffprobe (another reader than the GStreamer that wrote them).
command -v ffprobe >/dev/null || missing+=(ffmpeg)
# The schema test validates with Python jsonschema in a venv (Debian splits venv/ensurepip out).
python3 -c "import venv, ensurepip" 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian starts a system-wide mosquitto on 1883 (and nats-server on 4222) after install; the tests
# start their own on free ports.

# Python jsonschema (in a venv beside the build) validates real MQTT messages against docs/schemas.
SCHEMA_VENV="$CARGO_TARGET_DIR/schema-venv"
if ! "$SCHEMA_VENV/bin/python" -c "import jsonschema, yaml, rfc3339_validator" 2>/dev/null; then
  echo "== creating $SCHEMA_VENV (jsonschema, pyyaml)"
  rm -rf "$SCHEMA_VENV"
  python3 -m venv "$SCHEMA_VENV"
  "$SCHEMA_VENV/bin/pip" install -q "jsonschema==4.26.0" "pyyaml==6.0.3" "rfc3339-validator==0.1.4"
fi
export EDGE_AGENT_SCHEMA_PYTHON="$SCHEMA_VENV/bin/python"
# Schemathesis (in its own venv: it pins its own jsonschema) runs the JSON API against its OpenAPI
# document (tests/api_contract.rs). A failed install fails here: CI never skips that test.
SCHEMATHESIS_VENV="$CARGO_TARGET_DIR/schemathesis-venv"
if ! "$SCHEMATHESIS_VENV/bin/schemathesis" --version 2>/dev/null | grep -q "version 4.32.5"; then
  echo "== creating $SCHEMATHESIS_VENV (schemathesis)"
  rm -rf "$SCHEMATHESIS_VENV"
  python3 -m venv "$SCHEMATHESIS_VENV"
  "$SCHEMATHESIS_VENV/bin/pip" install -q "schemathesis==4.32.5"
fi
export EDGE_AGENT_SCHEMATHESIS="$SCHEMATHESIS_VENV/bin/schemathesis"
# ONNX Runtime for the ort backend's tests: the C library from the PyPI wheel, cached. An older
# release too, for the test that a too-old library is refused naming both versions. A failed fetch
# leaves the variable unset: the ort tests then fail in CI and are skipped on a developer's machine.
echo "== fetching ONNX Runtime (scripts/fetch-onnxruntime.sh)"
if [ -z "${ORT_DYLIB_PATH:-}" ]; then
  ORT_DYLIB_PATH="$(bash scripts/fetch-onnxruntime.sh 1.32.0)" && export ORT_DYLIB_PATH || unset ORT_DYLIB_PATH
fi
if [ -z "${EDGE_AGENT_TEST_OLD_ORT:-}" ]; then
  EDGE_AGENT_TEST_OLD_ORT="$(bash scripts/fetch-onnxruntime.sh 1.20.1)" && export EDGE_AGENT_TEST_OLD_ORT \
    || unset EDGE_AGENT_TEST_OLD_ORT
fi

echo "== building (target dir $CARGO_TARGET_DIR)"
# V4L2 (USB cameras) and GStreamer are non-default features so a plain `cargo run` needs neither
# libclang nor GStreamer's development files; test them here, as the .deb ships them.
features="edge-agent/v4l2,edge-agent/gstreamer"
cargo build --workspace --bins --tests --locked --features "$features"

echo "== testing"
cargo test --workspace --locked --features "$features" "$@"

# The benchmarks in their smoke mode (a few seconds each, on the debug binary built above), so they
# cannot rot: each must run end to end and produce every figure. A developer may skip them with
# SKIP_BENCH_SMOKE=1; CI (CI=true) always runs them.
if [ "${SKIP_BENCH_SMOKE:-}" = 1 ] && [ "${CI:-}" != true ] && [ "${CI:-}" != 1 ]; then
  echo "== SKIPPED: benchmark smoke runs (SKIP_BENCH_SMOKE=1; CI never skips them)"
else
  echo "== benchmark smoke runs (bench/camera.sh --smoke, --substream --smoke and --ab --smoke, bench/compare.sh --smoke, bench/decoders.sh --smoke, bench/plates.sh --smoke, bench/plates_flow.sh --smoke, models/quantize.sh --smoke, platform_watch --smoke)"
  EDGE_AGENT_BIN="$CARGO_TARGET_DIR/debug/edge-agent" bash bench/camera.sh --smoke
  # Cameras per box: a two-stream camera with motion against one stream every frame and Python.
  EDGE_AGENT_BIN="$CARGO_TARGET_DIR/debug/edge-agent" bash bench/camera.sh --substream --smoke
  # Two agent builds taking turns with Python (here the same binary twice: the harness must run).
  EDGE_AGENT_BIN="$CARGO_TARGET_DIR/debug/edge-agent" bash bench/camera.sh --ab \
    "$CARGO_TARGET_DIR/debug/edge-agent" "$CARGO_TARGET_DIR/debug/edge-agent" --smoke
  EDGE_AGENT_BIN="$CARGO_TARGET_DIR/debug/edge-agent" bash bench/compare.sh --smoke
  bash bench/decoders.sh --smoke
  # The plate reader against the reference pipeline on a sample of ../shared/lpr.
  EDGE_AGENT_BIN="$CARGO_TARGET_DIR/debug/edge-agent" bash bench/plates.sh --smoke
  # The plate stage in the running agent: plates off and on, ort and tract, on two vehicles.
  EDGE_AGENT_BIN="$CARGO_TARGET_DIR/debug/edge-agent" bash bench/plates_flow.sh --smoke
  # Rebuilds the int8 models and checks they are the committed ones, then times them against fp32.
  bash models/quantize.sh --smoke
  # `edge-platform watch` on 12 boxes with signed chains into SQLite and PostgreSQL (benches/platform_watch.rs).
  cargo bench --profile dev --locked --features "$features" --bench platform_watch -- --smoke
fi
