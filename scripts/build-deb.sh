#!/usr/bin/env bash
# Builds the Debian package with cargo-deb and checks it: the file list (dpkg-deb -c), lintian, and
# an install / remove / purge with dpkg into a scratch root, where the packaged binary must find the
# packaged models and detect the truck in the sample picture.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edge-agent/target}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
command -v lintian >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lintian >/dev/null; }
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb@3.8.0
# OpenH264's x86 assembly: without nasm its build silently falls back to plain C (a slower decoder).
if [ "$(uname -m)" = x86_64 ] && ! command -v nasm >/dev/null; then
  as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nasm >/dev/null
fi

# The package decodes video through GStreamer (feature `gstreamer`): its development files to build.
missing=()
for package in libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== building the package"
# Stripped: a Pi or Jetson has little storage, and the release profile keeps line tables for `perf`.
cargo deb -p edge-agent --locked --strip
deb=$(ls -t "$CARGO_TARGET_DIR"/debian/edge-agent_*.deb | head -n 1)
echo "package: $deb"

echo "== contents"
listing=$(dpkg-deb -c "$deb")
for expected in ./usr/bin/edge-agent ./etc/edge-agent/edge-agent.toml ./usr/lib/systemd/system/edge-agent.service \
    ./usr/share/edge-agent/models/nanodet.onnx ./usr/share/edge-agent/models/nanodet.toml \
    ./usr/share/edge-agent/models/efficientnet_lite0.onnx ./usr/share/edge-agent/models/samples/dog.jpg; do
  grep -q " $expected\$" <<<"$listing" || { echo "missing from the package: $expected"; exit 1; }
done
echo "all expected files are in the package"

echo "== lintian"
lintian --fail-on error --suppress-tags-from-file scripts/lintian-suppressed-tags.txt "$deb"

echo "== install, remove and purge in a scratch root"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates"
touch "$root/var/lib/dpkg/status"
dpkg_root() { dpkg --root="$root" --force-script-chrootless --force-depends --no-triggers "$@"; }
dpkg_root -i "$deb" >/dev/null
for f in usr/bin/edge-agent etc/edge-agent/edge-agent.toml usr/lib/systemd/system/edge-agent.service; do
  [ -e "$root/$f" ] || { echo "not installed: /$f"; exit 1; }
done
"$root/usr/bin/edge-agent" --version
EDGE_AGENT_DATA="$root/usr/share/edge-agent" "$root/usr/bin/edge-agent" infer \
  "$root/usr/share/edge-agent/models/samples/dog.jpg" --model nanodet | tee "$root/infer.txt"
grep -q " truck " "$root/infer.txt" || { echo "the packaged model did not find the truck"; exit 1; }
dpkg_root -r edge-agent >/dev/null
[ ! -e "$root/usr/bin/edge-agent" ] || { echo "remove left the binary"; exit 1; }
[ -e "$root/etc/edge-agent/edge-agent.toml" ] || { echo "remove must keep the config (conffile)"; exit 1; }
dpkg_root -P edge-agent >/dev/null
[ ! -e "$root/etc/edge-agent/edge-agent.toml" ] || { echo "purge left the config"; exit 1; }
echo "install / remove / purge behave"
