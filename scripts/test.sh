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
# The schema test validates with Python jsonschema in a venv (Debian splits venv/ensurepip out).
python3 -c "import venv, ensurepip" 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian starts a system-wide mosquitto on 1883 after install; the tests start their own on free ports.

# Python jsonschema (in a venv beside the build) validates real MQTT messages against docs/schemas.
SCHEMA_VENV="$CARGO_TARGET_DIR/schema-venv"
if ! "$SCHEMA_VENV/bin/python" -c "import jsonschema, yaml, rfc3339_validator" 2>/dev/null; then
  echo "== creating $SCHEMA_VENV (jsonschema, pyyaml)"
  rm -rf "$SCHEMA_VENV"
  python3 -m venv "$SCHEMA_VENV"
  "$SCHEMA_VENV/bin/pip" install -q "jsonschema==4.26.0" "pyyaml==6.0.3" "rfc3339-validator==0.1.4"
fi
export EDGE_AGENT_SCHEMA_PYTHON="$SCHEMA_VENV/bin/python"

echo "== building (target dir $CARGO_TARGET_DIR)"
cargo build --workspace --bins --tests --locked

echo "== testing"
cargo test --workspace --locked "$@"
