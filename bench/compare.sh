#!/usr/bin/env bash
# The inference benchmark, in one run, on the same pictures (models/samples), the same models and the
# same thread count for every contender:
#   edge-agent bench (ort and tract backends)  vs  bench/python_baseline.py (bare ONNX Runtime
#   session.run, and a plain OpenCV + ONNX Runtime pipeline), plus the agent's peak RSS with both
#   default models loaded, on each backend.
# Writes bench/RESULTS.md and the benchmark section of README.md (bench/report.py).
#
#   bash bench/compare.sh          # threads = nproc, 3 rounds of 8 s per measurement (about 8 minutes)
#   BENCH_THREADS=2 BENCH_SECONDS=20 BENCH_ROUNDS=5 bash bench/compare.sh
#   bash bench/compare.sh --smoke  # debug build, 1 round of 1 s, 4 s of RSS: checks that the benchmark
#                                  # runs end to end (scripts/test.sh runs it); writes no results
# EDGE_AGENT_BIN=path uses that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=false
if [ "${1:-}" = "--smoke" ]; then smoke=true; fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edge-agent/target}"
threads="${BENCH_THREADS:-$(nproc)}"
seconds="${BENCH_SECONDS:-8}"
rounds="${BENCH_ROUNDS:-3}"
rss_seconds="${BENCH_RSS_SECONDS:-20}"
if $smoke; then seconds=1 rounds=1 rss_seconds=4; fi
work="$(mktemp -d)"
agent_pid=""
cleanup() {
  if [ -n "$agent_pid" ]; then kill "$agent_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

bench_smoke=$smoke bench_features=""
# shellcheck source=bench/agent_env.sh
source bench/agent_env.sh
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

# Rounds alternate the contenders, so a burst of other work on the machine hits them alike.
# The agent runs ONNX Runtime without spinning threads by default; it is also measured with
# spinning on (ONNX Runtime's own default, which the Python baselines use) to compare like with like.
# Both shipped models on whole pictures (the defaults run only the detector on whole frames).
both_models="[[models]]
manifest = \"$PWD/models/nanodet.toml\"
[[models]]
manifest = \"$PWD/models/efficientnet_lite0.toml\""
printf '%s\n' "$both_models" >"$work/models.toml"
printf '[inference]\nort_allow_spinning = true\n%s\n' "$both_models" >"$work/spinning.toml"
agent_runs=()
python_runs=()
for round in $(seq 1 "$rounds"); do
  echo "== round $round of $rounds: edge-agent bench (ort, tract), $threads threads, $seconds s each"
  "$agent" bench --json --threads "$threads" --seconds "$seconds" --backend ort --backend tract --config "$work/models.toml" \
    >"$work/agent-$round.json"
  agent_runs+=(--agent "$work/agent-$round.json")
  "$agent" bench --json --threads "$threads" --seconds "$seconds" --backend ort --config "$work/spinning.toml" \
    >"$work/agent-spinning-$round.json"
  agent_runs+=(--agent-spinning "$work/agent-spinning-$round.json")
  echo "== round $round of $rounds: Python session.run and OpenCV + ONNX Runtime pipeline"
  "$BENCH_PYTHON" bench/python_baseline.py --models models --images models/samples \
    --threads "$threads" --seconds "$seconds" >"$work/python-$round.json"
  python_runs+=(--python "$work/python-$round.json")
done

# Peak RSS (VmHWM) of `edge-agent run` with both shipped models on whole frames, after it has inferred frames for a
# while: the demo replay camera at 5 frames/s, no broker, the web page on a free port.
peak_rss_kib() {
  local backend="$1" port config state
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  state="$work/state-$backend"
  config="$work/$backend.toml"
  cat >"$config" <<EOF
state_dir = "$state"
[web]
listen = "127.0.0.1:$port"
[inference]
backend = "$backend"
intra_op_threads = $threads
[[cameras]]
id = "bench"
source = { kind = "replay", path = "$PWD/models/samples", fps = 5.0 }
[[models]]
manifest = "$PWD/models/nanodet.toml"
[[models]]
manifest = "$PWD/models/efficientnet_lite0.toml"
EOF
  "$agent" run --config "$config" >"$work/$backend.log" 2>&1 &
  agent_pid=$!
  sleep "$rss_seconds"
  local inferred
  inferred="$(python3 -c "import json,urllib.request; s=json.load(urllib.request.urlopen('http://127.0.0.1:$port/api/status')); print(sum(c.get('frames_inferred',0) for c in s['cameras']))" 2>/dev/null || echo "?")"
  local hwm
  hwm="$(awk '/VmHWM/ {print $2}' "/proc/$agent_pid/status")"
  kill -TERM "$agent_pid"
  wait "$agent_pid" || true
  agent_pid=""
  echo "$backend: peak RSS ${hwm} KiB after $inferred frames" >&2
  echo "$hwm $inferred"
}
echo "== peak RSS of the agent with both models loaded ($rss_seconds s each)"
read -r rss_ort frames_ort < <(peak_rss_kib ort)
read -r rss_tract frames_tract < <(peak_rss_kib tract)
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

results=(--results bench/RESULTS.md --readme README.md)
if $smoke; then results=(--results "$work/RESULTS.md"); fi
python3 bench/report.py "${agent_runs[@]}" "${python_runs[@]}" \
  --rss ort "$rss_ort" "$frames_ort" --rss tract "$rss_tract" "$frames_tract" \
  --threads "$threads" --seconds "$seconds" --load "$load_before" "$load_after" "${results[@]}"
if $smoke; then
  # Every contender must have produced its figures: a row per measure and model, and frames for RSS.
  for measure in "1. ort inference" "2. full frame path" "3. pre + post share" "4. tract ÷ ort" "5. peak RSS"; do
    grep -q "| $measure" "$work/RESULTS.md" || { echo "compare.sh --smoke: no \"$measure\" row" >&2; exit 1; }
  done
  if ! [ "$frames_ort" -gt 0 ] 2>/dev/null || ! [ "$frames_tract" -gt 0 ] 2>/dev/null; then
    echo "compare.sh --smoke: the agent inferred no frame for the RSS measure" >&2; exit 1
  fi
  cat "$work/RESULTS.md"
  echo "== compare.sh --smoke: every figure produced"
else
  echo "== wrote bench/RESULTS.md and the README's benchmark section"
  cat bench/RESULTS.md
fi
