"""The Python baselines edge-agent is measured against (bench/compare.sh runs this).

1. bare ONNX Runtime: `session.run` alone on a pre-processed tensor;
2. a plain OpenCV + ONNX Runtime pipeline doing the agent's per-frame steps: cv2.imdecode, cv2.resize
   (INTER_LINEAR), colour order, normalise, NCHW, session.run, decode (softmax + top k, or NanoDet
   decoding in numpy), cv2.dnn.NMSBoxesBatched (class-aware), boxes back to frame pixels.

Same pictures, same models (read from the manifests), same thread count as the agent's run. Each is
measured twice: with ONNX Runtime's defaults (intra-op threads spin between operators) and with spinning
off, which is how the agent runs ONNX Runtime.
"""

import argparse
import json
import pathlib
import statistics
import time
import tomllib

import cv2
import numpy as np
import onnxruntime


def load_manifest(path, named=False):
    """The default model manifest at `path`, or None for the other TOML files in models/; `named`: a
    manifest asked for by name, opt-in variants (nanodet.int8.toml) included."""
    if "." in path.stem and not named:  # opt-in variants (models/quantize.sh) and taxonomies
        return None
    manifest = tomllib.loads(path.read_text())
    if not all(key in manifest for key in ("name", "file", "sha256", "input", "labels")):
        return None
    manifest["folder"] = path.parent
    manifest["label_count"] = len((path.parent / manifest["labels"]).read_text().splitlines())
    return manifest


def input_size(spec):
    shape = spec["shape"]
    return (shape[2], shape[3]) if spec["layout"] == "nchw" else (shape[1], shape[2])


def preprocess(bgr, spec):
    height, width = input_size(spec)
    resized = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    if spec["colour_order"] == "rgb":
        resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    normalised = (resized.astype(np.float32) - np.float32(spec["mean"])) / np.float32(spec["std"])
    if spec["layout"] == "nchw":
        normalised = normalised.transpose(2, 0, 1)
    return np.ascontiguousarray(normalised[None])


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def decode_classifier(outputs, manifest):
    probabilities = softmax(outputs[0].reshape(-1))
    top = np.argsort(-probabilities)[: manifest["decoder"].get("top_k", 5)]
    return [(int(k), float(probabilities[k])) for k in top]


def decode_nanodet(outputs, manifest, frame_w, frame_h):
    decoder = manifest["decoder"]
    bins, threshold = decoder["bins"], decoder["score_threshold"]
    input_h, input_w = input_size(manifest["input"])
    classes = manifest["label_count"]
    boxes, scores, class_ids = [], [], []
    for score_output in (o for o in outputs if o.shape[-1] == classes):
        cell_scores = score_output.reshape(-1, classes)
        anchors = cell_scores.shape[0]
        distributions = next(o for o in outputs if o.shape[-1] == 4 * bins and o.size // (4 * bins) == anchors)
        best = cell_scores.argmax(axis=1)
        best_scores = cell_scores[np.arange(anchors), best]
        keep = np.nonzero(best_scores >= threshold)[0]
        if keep.size == 0:
            continue
        grid_w = round((anchors * input_w / input_h) ** 0.5)
        stride = input_w / grid_w
        sides = distributions.reshape(anchors, 4, bins)[keep]
        distance = (softmax(sides) * np.arange(bins, dtype=np.float32)).sum(axis=-1) * stride
        cx, cy = (keep % grid_w) * stride, (keep // grid_w) * stride
        x1, y1 = cx - distance[:, 0], cy - distance[:, 1]
        x2, y2 = cx + distance[:, 2], cy + distance[:, 3]
        boxes.append(np.stack([x1, y1, x2 - x1, y2 - y1], axis=1))
        scores.append(best_scores[keep])
        class_ids.append(best[keep])
    if not boxes:
        return []
    boxes, scores, class_ids = np.concatenate(boxes), np.concatenate(scores), np.concatenate(class_ids)
    kept = cv2.dnn.NMSBoxesBatched(boxes.tolist(), scores.tolist(), class_ids.tolist(), threshold, decoder["nms_iou"])
    kept = np.asarray(kept, dtype=np.int64).reshape(-1)[: decoder.get("max_detections", 100)]
    sx, sy = frame_w / input_w, frame_h / input_h
    found = []
    for i in kept:
        x, y, w, h = boxes[i]
        found.append(
            (int(class_ids[i]), float(scores[i]), [max(x * sx, 0), max(y * sy, 0), min((x + w) * sx, frame_w), min((y + h) * sy, frame_h)])
        )
    return found


def stats(samples_ms):
    ordered = sorted(samples_ms)
    p99 = ordered[max(int(np.ceil(0.99 * len(ordered))) - 1, 0)]
    return {
        "median_ms": statistics.median(ordered),
        "p99_ms": p99,
        "mean_ms": statistics.fmean(ordered),
        "samples": len(ordered),
    }


def measure(seconds, step):
    for _ in range(3):
        step(0)
    samples = []
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < seconds or len(samples) < 5:
        t0 = time.perf_counter()
        step(i)
        samples.append((time.perf_counter() - t0) * 1000.0)
        i += 1
    return samples


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=pathlib.Path, required=True)
    parser.add_argument("--images", type=pathlib.Path, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only", action="append", help="model name(s) to measure")
    args = parser.parse_args()

    cv2.setNumThreads(args.threads)
    pictures = [p.read_bytes() for p in sorted(args.images.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    results = []
    for manifest_path in sorted(args.models.glob("*.toml")):
        manifest = load_manifest(manifest_path)
        if manifest is None or (args.only and manifest["name"] not in args.only):
            continue
        input_name = manifest["input"]["name"]
        tensors = [
            preprocess(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), manifest["input"]) for b in pictures
        ]
        record = {"model": manifest["name"], "threads": args.threads}
        # ONNX Runtime's defaults (threads spin between operators), and with spinning off as the agent runs it.
        for variant, spinning in (("", "1"), ("_no_spin", "0")):
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
            session = onnxruntime.InferenceSession(
                str(manifest["folder"] / manifest["file"]), options, providers=["CPUExecutionProvider"]
            )
            run_only = measure(args.seconds, lambda i: session.run(None, {input_name: tensors[i % len(tensors)]}))

            def full_frame(i):
                bgr = cv2.imdecode(np.frombuffer(pictures[i % len(pictures)], np.uint8), cv2.IMREAD_COLOR)
                outputs = session.run(None, {input_name: preprocess(bgr, manifest["input"])})
                if manifest["task"] == "classify":
                    return decode_classifier(outputs, manifest)
                return decode_nanodet(outputs, manifest, bgr.shape[1], bgr.shape[0])

            pipeline = measure(args.seconds, full_frame)
            record["session_run" + variant] = stats(run_only)
            record["pipeline" + variant] = {
                **stats(pipeline),
                "frames_per_second": len(pipeline) / (sum(pipeline) / 1000.0),
            }
            del session
        results.append(record)
    print(
        json.dumps(
            {"onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__, "numpy": np.__version__, "results": results},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
