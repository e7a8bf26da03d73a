#!/usr/bin/env bash
# Recomputes tests/fixtures/onnxruntime_reference.json (and onnxruntime_int8_reference.json for the
# int8 variants): what the onnxruntime Python package (the
# reference) gives for the shipped models on the sample pictures, with our pre-processing and
# decoders re-implemented in numpy (scripts/reference_outputs.py). JPEG samples are stored as PNG in
# tests/fixtures/parity/ so both sides see the same pixels. Makes its own virtual environment.
# Commit the changed fixture; the parity tests in tests/inference.rs read it.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${PYREF_VENV:-$HOME/.cache/edge-agent/pyref-venv}"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if [ ! -x "$venv/bin/python" ]; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c "import ensurepip" 2>/dev/null; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  onnxruntime==1.32.0 numpy==2.4.6 pillow==13.0.0
"$venv/bin/python" scripts/reference_outputs.py --models models --images models/samples \
  --lossless tests/fixtures/parity --output tests/fixtures/onnxruntime_reference.json
# The opt-in int8 models (models/quantize.sh) have their own fixture: int8 is compared with int8.
"$venv/bin/python" scripts/reference_outputs.py --models models --images models/samples --variant int8 \
  --lossless tests/fixtures/parity --output tests/fixtures/onnxruntime_int8_reference.json
