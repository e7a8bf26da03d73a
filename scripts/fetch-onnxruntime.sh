#!/usr/bin/env bash
# Fetches the ONNX Runtime C library without internet access beyond PyPI: the `onnxruntime` wheel
# holds the real shared library (`onnxruntime/capi/libonnxruntime.so.VERSION`, x86-64 or aarch64).
# Downloads the wheel with pip, unpacks only that file into a cache folder and prints its path.
# Idempotent: a library already in the cache is printed without a download.
#
#   scripts/fetch-onnxruntime.sh [VERSION]        (default 1.32.0)
#   ORT_CACHE_DIR=/opt/edge-agent/onnxruntime scripts/fetch-onnxruntime.sh
#   export ORT_DYLIB_PATH="$(scripts/fetch-onnxruntime.sh)"
set -euo pipefail

version="${1:-1.32.0}"
cache="${ORT_CACHE_DIR:-$HOME/.cache/edge-agent/onnxruntime}"
arch="$(uname -m)"
library="$cache/$version/libonnxruntime.so.$version"

if [ -f "$library" ]; then
  echo "$library"
  exit 0
fi
case "$arch" in
  x86_64 | aarch64) ;;
  *) echo "fetch-onnxruntime: PyPI has no onnxruntime wheel for $arch (x86_64 and aarch64 only)" >&2; exit 1 ;;
esac

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "fetch-onnxruntime: installing python3-pip (pip downloads the wheel)" >&2
  as_root apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
fi

download="$(mktemp -d)"
trap 'rm -rf "$download"' EXIT
pip_download() {
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --dest "$download" "$@" \
    "onnxruntime==$version" >&2
}
# The wheel for this machine's Python; if that Python is one the release has no wheel for, any
# CPython wheel for this architecture holds the same C library.
if ! pip_download; then
  echo "fetch-onnxruntime: no wheel for this Python; asking for a CPython 3.12 one" >&2
  pip_download --only-binary=:all: --implementation cp --python-version 3.12 \
    --platform "manylinux_2_28_$arch" --platform "manylinux_2_27_$arch" --platform "manylinux_2_17_$arch" \
    --platform "manylinux2014_$arch"
fi
wheel="$(ls "$download"/onnxruntime-"$version"-*.whl)"

mkdir -p "$cache/$version"
python3 - "$wheel" "onnxruntime/capi/libonnxruntime.so.$version" "$library" <<'PY'
import os, sys, zipfile
wheel, member, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    try:
        data = z.read(member)
    except KeyError:
        sys.exit(f"fetch-onnxruntime: {wheel} has no {member}")
partial = target + ".partial"
with open(partial, "wb") as f:
    f.write(data)
os.chmod(partial, 0o755)
# Rename last, so an interrupted run never leaves a half-written library in the cache.
os.replace(partial, target)
PY
echo "$library"
