# Sourced (not run) by the benchmarks that run the agent beside a Python contender (compare.sh,
# camera.sh, plates.sh): ONNX Runtime's library (ORT_DYLIB_PATH), the Python environment
# (bench/python_env.sh: BENCH_PYTHON) and the agent binary in $agent — EDGE_AGENT_BIN when set, else
# built here: the debug build for a smoke run (bench_smoke=true), the release build otherwise, with
# the features named in bench_features. Expects CARGO_TARGET_DIR set and the repository as the
# working folder.

echo "== ONNX Runtime library"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(bash scripts/fetch-onnxruntime.sh 1.32.0)}"
echo "$ORT_DYLIB_PATH"

echo "== Python environment"
# shellcheck source=bench/python_env.sh
source bench/python_env.sh

bench_cargo_features=()
if [ -n "${bench_features:-}" ]; then bench_cargo_features=(--features "$bench_features"); fi
if [ -n "${EDGE_AGENT_BIN:-}" ]; then
  agent="$EDGE_AGENT_BIN"
elif [ "${bench_smoke:-false}" = true ]; then
  echo "== building edge-agent (debug)"
  cargo build --locked -p edge-agent "${bench_cargo_features[@]}"
  agent="$CARGO_TARGET_DIR/debug/edge-agent"
else
  echo "== building edge-agent (release)"
  cargo build --release --locked -p edge-agent "${bench_cargo_features[@]}"
  agent="$CARGO_TARGET_DIR/release/edge-agent"
fi
