#!/usr/bin/env bash
# The plate stage in the flow (issue 28), in one run: `edge-agent run` on a replay camera watching
# vehicles of ../shared/lpr cross a site exit, on ort and tract, with plates off and on: the memory
# plates add (goal <= 40 MB), the CPU, and the plates the events carry (the same on both backends).
# Writes the "Licence plates in the flow" section of bench/RESULTS.md (bench/plates_flow.py).
#
#   bash bench/plates_flow.sh           # release build, 8 vehicles, about 6 minutes on 2 cores
#   bash bench/plates_flow.sh --smoke   # debug build, 2 vehicles: checks that it runs (scripts/test.sh);
#                                       # writes nothing
# EDGE_AGENT_BIN=path uses that binary instead of building one; LPR_DIR=path another set shaped the same.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=false
if [ "${1:-}" = "--smoke" ]; then smoke=true; fi
lpr="${LPR_DIR:-$PWD/../shared/lpr}"
if [ ! -f "$lpr/labels.csv" ] || [ ! -d "$lpr/models" ]; then
  echo "no licence-plate set at $lpr (labels.csv, images/, models/); set LPR_DIR" >&2
  exit 1
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edge-agent/target}"
bench_smoke=$smoke bench_features=""
# shellcheck source=bench/agent_env.sh
source bench/agent_env.sh

build="$(basename "$(dirname "$agent")")"
if $smoke; then
  "$BENCH_PYTHON" bench/plates_flow.py --agent "$agent" --lpr "$lpr" --vehicles 2 --build "$build" --smoke
else
  "$BENCH_PYTHON" bench/plates_flow.py --agent "$agent" --lpr "$lpr" --vehicles "${BENCH_VEHICLES:-8}" \
    --build "$build" --results bench/RESULTS.md
fi
