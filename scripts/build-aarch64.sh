#!/usr/bin/env bash
# Builds edge-agent for aarch64 (Jetson, Raspberry Pi 4/5 64-bit) without Docker, using Debian's
# cross gcc as linker (.cargo/config.toml), then checks the binary under qemu-aarch64: `--version`,
# and `infer` on a sample picture with the tract backend must give the same detections as the
# x86-64 build (same labels, IoU >= 0.99, scores within 1e-3).
# ONNX Runtime's aarch64 library crashes under qemu on this machine, so the ort backend is not
# exercised here; it must be checked on a real board.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edge-agent/target}"
TARGET=aarch64-unknown-linux-gnu

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
# OpenH264's bundled C++ source (RTSP and MP4 cameras) is compiled for the target too.
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"

echo "== building for $TARGET"
cargo build --release --locked --target "$TARGET" -p edge-agent
cargo build --release --locked -p edge-agent
arm="$CARGO_TARGET_DIR/$TARGET/release/edge-agent"
x86="$CARGO_TARGET_DIR/release/edge-agent"
file "$arm" 2>/dev/null || true

echo "== $TARGET binary under qemu"
qemu-aarch64 -L /usr/aarch64-linux-gnu "$arm" --version
out=$(mktemp -d)
infer() { "$@" infer models/samples/dog.jpg models/samples/coffee.png --model nanodet --json; }
infer "$x86" >"$out/x86.json"
infer qemu-aarch64 -L /usr/aarch64-linux-gnu "$arm" >"$out/arm.json"
python3 - "$out/x86.json" "$out/arm.json" <<'PY'
import json, sys
def load(path):
    return [json.loads(line) for line in open(path) if line.strip()]
def iou(a, b):
    ix = max(0.0, min(a["x2"], b["x2"]) - max(a["x1"], b["x1"]))
    iy = max(0.0, min(a["y2"], b["y2"]) - max(a["y1"], b["y1"]))
    inter = ix * iy
    union = (a["x2"]-a["x1"])*(a["y2"]-a["y1"]) + (b["x2"]-b["x1"])*(b["y2"]-b["y1"]) - inter
    return inter / union if union > 0 else 0.0
x86, arm = load(sys.argv[1]), load(sys.argv[2])
assert len(x86) == len(arm), "different number of images"
compared = 0
for a, b in zip(x86, arm):
    da = a["results"][0]["findings"]["detections"]
    db = b["results"][0]["findings"]["detections"]
    assert [d["label"] for d in da] == [d["label"] for d in db], f"{a['image']}: labels differ {da} vs {db}"
    for p, q in zip(da, db):
        assert iou(p["bbox"], q["bbox"]) >= 0.99, f"{a['image']}: box {p} vs {q}"
        assert abs(p["score"] - q["score"]) <= 1e-3, f"{a['image']}: score {p} vs {q}"
        compared += 1
print(f"aarch64 (qemu) and x86-64 agree on {compared} detections in {len(x86)} pictures")
PY
