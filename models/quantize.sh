#!/usr/bin/env bash
# Quantizes the shipped models to int8 (models/quantize.py) in a virtual environment of its own, and
# reports their accuracy and speed against fp32. A workstation's job, not a box's: it needs the `onnx`
# package and a minute of CPU. Arguments go to models/quantize.py (`--help`); with none it rewrites
# models/nanodet.int8.* and models/efficientnet_lite0.int8.* calibrated on calibration/example-site/samples
# and writes the int8 section of bench/RESULTS.md. Then regenerate the int8 parity fixture
# (scripts/reference-outputs.sh) and commit all of it.
#
#   bash models/quantize.sh --calibration /path/to/site/pictures --out /tmp/int8   # a site's own pictures
#   bash models/quantize.sh --smoke   # scripts/test.sh: quantizes into a temporary folder, checks the
#                                     # result is the committed int8 models (byte for byte, or up to the
#                                     # last bits calibration moves on another CPU), times briefly
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${QUANT_VENV:-$HOME/.cache/edge-agent/quant-venv}"
if [ ! -x "$venv/bin/python" ]; then
  if ! python3 -c "import ensurepip" 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null;
    else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv >/dev/null; fi
  fi
  python3 -m venv "$venv"
fi
# The same onnxruntime, numpy and pillow as scripts/reference-outputs.sh, so the fixtures agree.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  onnxruntime==1.32.0 numpy==2.4.6 pillow==13.0.0 onnx==1.23.2

if [ "${1:-}" = "--smoke" ]; then
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
  "$venv/bin/python" models/quantize.py --out "$out" --seconds 0.5 --same-as models
  echo "models/quantize.sh --smoke: both int8 models rebuilt as committed"
else
  if [ $# -eq 0 ]; then set -- --results bench/RESULTS.md; fi
  "$venv/bin/python" models/quantize.py "$@"
fi
