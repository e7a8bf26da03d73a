# Sourced by the benchmarks: makes (once) the Python venv with the peers' pinned OpenCV, ONNX Runtime
# and numpy, and sets BENCH_PYTHON to its interpreter. BENCH_VENV overrides where it lives.
bench_venv="${BENCH_VENV:-$HOME/.cache/edge-agent/bench-venv}"
if [ ! -x "$bench_venv/bin/python" ]; then
  if ! python3 -c "import ensurepip" 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null;
    else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv >/dev/null; fi
  fi
  python3 -m venv "$bench_venv"
fi
"$bench_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  onnxruntime==1.32.0 numpy==2.4.6 opencv-python-headless==5.0.0.93 pillow==13.0.0
BENCH_PYTHON="$bench_venv/bin/python"
