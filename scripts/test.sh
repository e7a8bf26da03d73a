#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian machine that has only Rust: installs the system
# packages the tests need (mosquitto), builds the agent binary the end-to-end tests run, then runs
# the unit tests and the end-to-end tests in tests/. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Builds are cached outside the clone so a second run is fast; a cold run builds everything.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edge-agent/target}"
mkdir -p "$CARGO_TARGET_DIR"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian starts a system-wide mosquitto on 1883 after install; the tests start their own on free ports.

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
cargo build --workspace --bins --tests --locked

echo "== testing"
cargo test --workspace --locked "$@"
