"""Reference outputs of the shipped models, computed with the onnxruntime Python package.

The pre-processing is ours, re-implemented in numpy step by step as edge-agent/src/infer/preprocess.rs
does it (bilinear with half-pixel centres and no antialiasing, i.e. OpenCV's INTER_LINEAR; stretch or
letterbox; colour order; (pixel - mean) / std folded into one multiply-add in float32; NCHW/NHWC), and
so are the decoders (softmax + top k; NanoDet distribution decoding, class-aware greedy NMS, boxes mapped
back to frame pixels). The parity tests (tests/inference.rs) compare both backends against this file.

Run it through scripts/reference-outputs.sh, which makes the virtual environment it needs.
"""

import argparse
import json
import math
import pathlib
import tomllib

import numpy as np
import onnxruntime
from PIL import Image

F32 = np.float32


def load_manifest(path):
    manifest = tomllib.loads(path.read_text())
    manifest["folder"] = path.parent
    labels_file = path.parent / manifest["labels"]
    manifest["label_list"] = [line.strip() for line in labels_file.read_text().splitlines()]
    return manifest


def input_size(spec):
    shape = spec["shape"]
    return (shape[2], shape[3]) if spec["layout"] == "nchw" else (shape[1], shape[2])


def taps(source_len, content_len):
    """Per output column (or row): low and high source index and the weight of high, in float32."""
    ratio = F32(source_len) / F32(content_len)
    last = source_len - 1
    centre = np.maximum((np.arange(content_len, dtype=F32) + F32(0.5)) * ratio - F32(0.5), F32(0.0))
    low = np.minimum(np.floor(centre).astype(np.int64), last)
    high = np.minimum(low + 1, last)
    weight = (centre - low.astype(F32)).astype(F32)
    return low, high, weight


def round_half_away(x):
    return math.floor(x + 0.5)


def preprocess(pixels, spec):
    """RGB uint8 [h, w, 3] → the model's input tensor and the (scale, pad) to map boxes back."""
    out_h, out_w = input_size(spec)
    frame_h, frame_w, _ = pixels.shape
    if spec["resize"] == "stretch":
        content_w, content_h, pad_x, pad_y = out_w, out_h, 0, 0
    else:
        scale = min(F32(out_w) / F32(frame_w), F32(out_h) / F32(frame_h))
        content_w = min(max(round_half_away(float(F32(frame_w) * scale)), 1), out_w)
        content_h = min(max(round_half_away(float(F32(frame_h) * scale)), 1), out_h)
        pad_x, pad_y = (out_w - content_w) // 2, (out_h - content_h) // 2
    cx_low, cx_high, wx = taps(frame_w, content_w)
    ry_low, ry_high, wy = taps(frame_h, content_h)
    order = [0, 1, 2] if spec["colour_order"] == "rgb" else [2, 1, 0]
    source = pixels[:, :, order].astype(F32)
    wx = wx[None, :, None]
    wy = wy[:, None, None]
    top_left = source[ry_low][:, cx_low]
    top_right = source[ry_low][:, cx_high]
    bottom_left = source[ry_high][:, cx_low]
    bottom_right = source[ry_high][:, cx_high]
    top = top_left + (top_right - top_left) * wx
    bottom = bottom_left + (bottom_right - bottom_left) * wx
    value = top + (bottom - top) * wy
    std = np.array(spec["std"], dtype=F32)
    mean = np.array(spec["mean"], dtype=F32)
    a = F32(1.0) / std
    b = -mean / std
    pad_value = F32(spec.get("pad_value", 114)) * a + b
    canvas = np.empty((out_h, out_w, 3), dtype=F32)
    canvas[:, :] = pad_value
    canvas[pad_y : pad_y + content_h, pad_x : pad_x + content_w] = value * a + b
    tensor = canvas.transpose(2, 0, 1)[None] if spec["layout"] == "nchw" else canvas[None]
    transform = {
        "scale_x": F32(content_w) / F32(frame_w),
        "scale_y": F32(content_h) / F32(frame_h),
        "pad_x": float(pad_x),
        "pad_y": float(pad_y),
        "width": frame_w,
        "height": frame_h,
    }
    return np.ascontiguousarray(tensor, dtype=F32), transform


def softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def classify(outputs, manifest):
    decoder = manifest["decoder"]
    probabilities = softmax(outputs[0].reshape(-1))
    ranked = np.argsort(-probabilities, kind="stable")[: decoder.get("top_k", 5)]
    threshold = decoder.get("score_threshold", 0.0)
    return {
        "classes": [
            {"class_id": int(k), "label": manifest["label_list"][k], "score": float(probabilities[k])}
            for k in ranked
            if probabilities[k] >= threshold
        ]
    }


def iou(a, b):
    ix = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    iy = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = ix * iy
    area = lambda r: max(r[2] - r[0], 0.0) * max(r[3] - r[1], 0.0)
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def nms(candidates, iou_threshold, max_detections):
    kept = []
    for c in sorted(candidates, key=lambda d: -d["score"]):
        if len(kept) == max_detections:
            break
        if not any(k["class_id"] == c["class_id"] and iou(k["box"], c["box"]) > iou_threshold for k in kept):
            kept.append(c)
    return kept


def decode_nanodet(outputs, manifest):
    decoder = manifest["decoder"]
    labels = manifest["label_list"]
    bins = decoder["bins"]
    input_h, input_w = input_size(manifest["input"])
    candidates = []
    for scores in (o for o in outputs if o.shape[-1] == len(labels)):
        scores = scores.reshape(-1, len(labels))
        anchors = scores.shape[0]
        boxes = next(o for o in outputs if o.shape[-1] == 4 * bins and o.size // (4 * bins) == anchors)
        boxes = boxes.reshape(anchors, 4, bins)
        grid_w = round(math.sqrt(anchors * input_w / input_h))
        stride = input_w / grid_w
        distances = (softmax(boxes) * np.arange(bins)).sum(axis=-1) * stride
        best = scores.argmax(axis=1)
        for cell in np.nonzero(scores[np.arange(anchors), best] >= decoder["score_threshold"])[0]:
            cx, cy = (cell % grid_w) * stride, (cell // grid_w) * stride
            left, top, right, bottom = distances[cell]
            candidates.append(
                {
                    "class_id": int(best[cell]),
                    "label": labels[best[cell]],
                    "score": float(scores[cell, best[cell]]),
                    "box": [cx - left, cy - top, cx + right, cy + bottom],
                }
            )
    return candidates


def detect(outputs, manifest, transform):
    decoder = manifest["decoder"]
    if decoder["kind"] != "nanodet":
        raise SystemExit(f"no reference decoder for {decoder['kind']} here")
    kept = nms(decode_nanodet(outputs, manifest), decoder["nms_iou"], decoder.get("max_detections", 100))
    for d in kept:
        x1, y1, x2, y2 = d["box"]
        to_x = lambda v: min(max((v - transform["pad_x"]) / float(transform["scale_x"]), 0.0), transform["width"])
        to_y = lambda v: min(max((v - transform["pad_y"]) / float(transform["scale_y"]), 0.0), transform["height"])
        d["box"] = [to_x(x1), to_y(y1), to_x(x2), to_y(y2)]
    return {"detections": kept}


# Instruction sets that change ONNX Runtime's int8 kernels (x86: AVX2's saturating VPMADDUBSW or the
# VNNI dot products; ARM: the dot-product and int8 matrix extensions). The int8 parity test expects
# exact agreement only on a CPU with the same ones as the machine that wrote the fixture.
INT8_FLAGS = {"avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"}


def int8_flags():
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return sorted(INT8_FLAGS & set(value.split()))
    return []


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=pathlib.Path, required=True, help="folder with the manifests")
    parser.add_argument("--images", type=pathlib.Path, required=True, help="folder with the sample pictures")
    parser.add_argument("--output", type=pathlib.Path, required=True, help="the JSON fixture to write")
    parser.add_argument(
        "--lossless",
        type=pathlib.Path,
        required=True,
        help="folder for PNG copies of JPEG samples (two JPEG decoders differ by a grey level here and there, "
        "which moves probabilities by up to 0.005: the parity tests feed both sides the same pixels)",
    )
    parser.add_argument("--root", type=pathlib.Path, default=pathlib.Path("."), help="paths in the fixture are relative to this")
    parser.add_argument(
        "--variant",
        default="",
        help="manifests to cover: the default models (`name.toml`), or an opt-in variant such as int8 "
        "(`name.int8.toml`, made by models/quantize.sh)",
    )
    args = parser.parse_args()
    args.lossless.mkdir(parents=True, exist_ok=True)

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    images = []
    for picture in sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        if picture.suffix.lower() != ".png":
            lossless = args.lossless / (picture.stem + ".png")
            Image.open(picture).convert("RGB").save(lossless, optimize=True)
            picture = lossless
        images.append(picture)
    result = {
        "generator": "scripts/reference-outputs.sh",
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "pillow": Image.__version__,
        "variant": args.variant or "default",
        "cpu_int8_flags": int8_flags(),
        "models": {},
    }
    # `name.toml` is a default model; `name.VARIANT.toml` an opt-in variant; taxonomies are neither.
    pattern = f"*.{args.variant}.toml" if args.variant else "*.toml"
    manifests = [p for p in sorted(args.models.glob(pattern)) if args.variant or "." not in p.stem]
    if not manifests:
        raise SystemExit(f"no manifests {pattern} in {args.models}")
    for manifest_path in manifests:
        manifest = load_manifest(manifest_path)
        session = onnxruntime.InferenceSession(
            str(manifest["folder"] / manifest["file"]), options, providers=["CPUExecutionProvider"]
        )
        per_image = {}
        for image_path in images:
            pixels = np.asarray(Image.open(image_path).convert("RGB"))
            tensor, transform = preprocess(pixels, manifest["input"])
            outputs = session.run(None, {manifest["input"]["name"]: tensor})
            if manifest["task"] == "classify":
                findings = classify(outputs, manifest)
            else:
                findings = detect(outputs, manifest, transform)
            key = image_path.resolve().relative_to(args.root.resolve()).as_posix()
            per_image[key] = {"width": int(pixels.shape[1]), "height": int(pixels.shape[0]), **findings}
        result["models"][manifest["name"]] = {
            "sha256": manifest["sha256"],
            "task": manifest["task"],
            "images": per_image,
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
