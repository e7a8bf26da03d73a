#!/usr/bin/env bash
# The plate-reader benchmark of issue 28, in one run, on the same pictures (../shared/lpr) and with one
# thread for every contender: the reference pipeline (../shared/lpr/reference/evaluate.py, ONNX Runtime
# and OpenCV in Python) against `edge-agent plates eval` with the 320 and the 640 detector, each on the
# ort and the tract backend. Accuracy side by side, time per plate as a ratio to the reference's with
# the same detector, the reader's peak RSS, the machine (lscpu). Writes the "Licence plates" section of
# bench/RESULTS.md (bench/plates_report.py).
#
#   bash bench/plates.sh           # the whole set, BENCH_ROUNDS rounds (default 1; times are the best
#                                  # of the rounds), about 6 minutes a round on a 2-core machine
#   BENCH_EVERY=5 bash bench/plates.sh   # every 5th picture only (RESULTS.md says so)
#   bash bench/plates.sh --smoke   # debug binary, every 40th picture: checks that it runs end to end
#                                  # (scripts/test.sh); writes nothing
# Both contenders read the same pictures: every K-th picture of labels.csv with all of its labels,
# written to a labels file of their own (the pictures are read in place through a link).
# EDGE_AGENT_BIN=path uses that binary instead of building one; LPR_DIR=path another set shaped the same.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=false
if [ "${1:-}" = "--smoke" ]; then smoke=true; fi
lpr="${LPR_DIR:-$PWD/../shared/lpr}"
if [ ! -f "$lpr/labels.csv" ] || [ ! -f "$lpr/reference/evaluate.py" ]; then
  echo "no licence-plate set at $lpr (labels.csv, images/, models/, reference/); set LPR_DIR" >&2
  exit 1
fi
lpr="$(cd "$lpr" && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edge-agent/target}"
rounds="${BENCH_ROUNDS:-1}"
every="${BENCH_EVERY:-1}"
if $smoke; then every=40 rounds=1; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The pictures both read: every K-th file in the order of labels.csv (as `plates eval --every`).
mkdir "$work/set"
ln -s "$lpr/images" "$work/set/images"
python3 - "$lpr/labels.csv" "$work/set/labels.csv" "$every" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1], encoding="utf-8")))
files = list(dict.fromkeys(r["file"] for r in rows))
kept = set(files[::int(sys.argv[3])])
with open(sys.argv[2], "w", newline="", encoding="utf-8") as out:
    w = csv.DictWriter(out, fieldnames=list(rows[0].keys()))
    w.writeheader()
    w.writerows(r for r in rows if r["file"] in kept)
PY

bench_smoke=$smoke bench_features=""
# shellcheck source=bench/agent_env.sh
source bench/agent_env.sh
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

args=()
for round in $(seq 1 "$rounds"); do
  echo "== round $round of $rounds: reference pipeline (evaluate.py, 1 thread)"
  /usr/bin/time -f "%M" -o "$work/reference-$round.rss" "$BENCH_PYTHON" "$lpr/reference/evaluate.py" \
    --set "$work/set" --threads 1 --out "$work/reference-$round" >"$work/reference-$round.log"
  args+=(--reference "$work/reference-$round/results,$(tail -n 1 "$work/reference-$round.rss")")
  # Alternating with the reference, so a burst of other work on the machine hits them alike.
  for backend in ort tract; do
    for detector in 320 640; do
      echo "== round $round of $rounds: edge-agent plates eval, $backend, detector $detector, 1 thread"
      out="$work/agent-$backend-$detector-$round"
      RUST_LOG=warn /usr/bin/time -f "%M" -o "$out.rss" "$agent" plates eval --labels "$work/set/labels.csv" --images "$lpr/images" \
        --models "$lpr/models" --backend "$backend" --detector "$detector" --threads 1 --json >"$out.json"
      args+=(--agent "$backend,$detector,$out.json,$(tail -n 1 "$out.rss")")
    done
  done
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

report=(python3 bench/plates_report.py "${args[@]}" --load "$load_before / $load_after" --every "$every" \
  --build "$(basename "$(dirname "$agent")")")
if $smoke; then
  "${report[@]}" --check
  echo "== smoke run complete"
  exit 0
fi
"${report[@]}" --results bench/RESULTS.md
echo "== wrote the licence plates section of bench/RESULTS.md"
