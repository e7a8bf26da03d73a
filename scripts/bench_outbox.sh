#!/usr/bin/env bash
# Outbox benchmark: enqueue rate (fsync per commit) and replay of a 10 000-event backlog into a real
# mosquitto. Release build; prints the figures that go into bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edge-agent/target}"
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || {
  echo "mosquitto is needed: apt-get install mosquitto" >&2
  exit 1
}
cargo bench --locked --bench outbox "$@"
