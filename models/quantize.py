"""Static int8 quantization of a shipped model, and its accuracy and speed against the fp32 model.

Owns: preparing an fp32 model for ONNX Runtime's static quantizer (folding a −inf `Pad` into the
`MaxPool` it feeds, ONNX Runtime's pre-processing), calibrating it on pictures fed exactly as the agent feeds them (the manifest's
resize, colour order, mean/std: scripts/reference_outputs.py re-implements the agent's pre-processing),
writing `<name>.int8.onnx` with its opt-in manifest `<name>.int8.toml`, and the report: top-1
agreement (classifier), matched detections (detector), score differences and `session.run` time,
int8 against fp32 on the parity pictures. Run it through models/quantize.sh, on a workstation: it
needs the `onnx` package and ONNX Runtime's Python quantizer, which the boxes do not have.
"""

import argparse
import hashlib
import json
import pathlib
import platform
import re
import statistics
import sys
import tempfile
import time
import tomllib

import numpy as np
import onnx
import onnxruntime
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))
import reference_outputs as ref  # noqa: E402  the agent's pre-processing and decoders, in numpy
import report as results_file  # noqa: E402  bench/report.py: replaces one section of RESULTS.md

PICTURES = (".jpg", ".jpeg", ".png")
RESULTS_HEADING = "## int8 models (issue 17)"
NOTES_MARKER = "<!-- int8 notes: kept by models/quantize.py across runs -->"
MATCH_IOU = 0.5
# The quantizer's graph clean-up warns once per unused initializer; errors still show.
onnxruntime.set_default_logger_severity(3)


def shown(path):
    """`path` relative to the repository when it is inside it, for the report."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def pictures_in(paths):
    found = []
    for path in (p.resolve() for p in paths):
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in PICTURES)
        elif path.is_file():
            found.append(path)
        else:
            raise SystemExit(f"no such picture or folder: {path}")
    if not found:
        raise SystemExit(f"no pictures ({', '.join(PICTURES)}) in {', '.join(map(str, paths))}")
    return found


def rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


def constant_value(graph, name):
    """The value of `name` if it is an initializer or a Constant node's output, else None."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def fold_infinite_pads(model):
    """Folds each constant `Pad` with a non-finite value (tf2onnx writes TensorFlow's −inf padding
    before a max pool this way) into the `pads` of the `MaxPool` nodes it feeds, which ignore padded
    cells: the same result, and no −inf left for the calibrator, whose range would otherwise be
    infinite and every scale NaN. A non-finite pad that cannot be folded is refused by name."""
    graph = model.graph
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folded = []
    for pad in list(graph.node):
        if pad.op_type != "Pad" or len(pad.input) < 3 or not pad.input[2]:
            continue
        value = constant_value(graph, pad.input[2])
        if value is None or np.isfinite(value).all():
            continue
        mode = next((a.s.decode() for a in pad.attribute if a.name == "mode"), "constant")
        pads = constant_value(graph, pad.input[1])
        users = consumers.get(pad.output[0], [])
        problem = None
        if mode != "constant" or pads is None or (len(pad.input) > 3 and pad.input[3]):
            problem = "its mode, pads or axes are not constants this tool can read"
        elif float(value) != -np.inf:
            problem = f"its value is {float(value)}, not −inf"
        elif not users or any(u.op_type != "MaxPool" for u in users):
            problem = f"it feeds {sorted({u.op_type for u in users})}, not only MaxPool"
        elif pad.output[0] in (o.name for o in graph.output):
            problem = "it is a graph output"
        else:
            rank = len(pads) // 2
            begin, end = [int(v) for v in pads[:rank]], [int(v) for v in pads[rank:]]
            if begin[:2] != [0, 0] or end[:2] != [0, 0]:
                problem = f"it pads batch or channel axes ({pads.tolist()})"
        if problem:
            raise SystemExit(
                f"node {pad.name!r} pads with a non-finite value and cannot be folded: {problem}. "
                "Static quantization needs finite activations; fix the model or exclude the node by hand."
            )
        for pool in users:
            attrs = {a.name: a for a in pool.attribute}
            if "auto_pad" in attrs and attrs["auto_pad"].s.decode() not in ("", "NOTSET"):
                raise SystemExit(f"MaxPool {pool.name!r} after −inf pad {pad.name!r} uses auto_pad; cannot fold")
            spatial = rank - 2
            old = list(attrs["pads"].ints) if "pads" in attrs else [0] * (2 * spatial)
            new = [old[i] + begin[2 + i] for i in range(spatial)] + [old[spatial + i] + end[2 + i] for i in range(spatial)]
            if "pads" in attrs:
                pool.attribute.remove(attrs["pads"])
            pool.attribute.append(onnx.helper.make_attribute("pads", new))
            pool.input[0] = pad.input[0]
        graph.node.remove(pad)
        folded.append(pad.name)
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype.kind == "f" and not np.isfinite(array).all() and any(
            init.name in n.input for n in graph.node
        ):
            raise SystemExit(f"initializer {init.name!r} still holds non-finite values after folding −inf pads")
    return folded


class Pictures(CalibrationDataReader):
    """Feeds the calibrator the model's input for each picture, pre-processed as the agent does."""

    def __init__(self, manifest, pictures):
        self.name = manifest["input"]["name"]
        self.spec = manifest["input"]
        self.pictures = iter(pictures)

    def get_next(self):
        picture = next(self.pictures, None)
        if picture is None:
            return None
        tensor, _ = ref.preprocess(rgb(picture), self.spec)
        return {self.name: tensor}


def same_outputs(original, prepared, manifest, picture):
    """Checks that the prepared fp32 model (−inf pads folded, pre-processed) computes what the
    original does on `picture`, to float rounding."""
    tensor, _ = ref.preprocess(rgb(picture), manifest["input"])
    feed = {manifest["input"]["name"]: tensor}
    want, got = (session(path, 1).run(None, feed) for path in (original, prepared))
    worst = max(float(np.abs(w - g).max()) for w, g in zip(want, got))
    if worst > 1e-4:
        raise SystemExit(f"{original}: the model prepared for quantizing differs by {worst} on {picture}")


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def quantize(manifest, calibration, out_dir):
    """Writes `<name>.int8.onnx` and `<name>.int8.toml` into `out_dir`; returns the manifest path."""
    fp32_path = manifest["folder"] / manifest["file"]
    model = onnx.load(str(fp32_path))
    folded = fold_infinite_pads(model)
    if folded:
        print(f"{manifest['name']}: folded −inf padding into MaxPool: {', '.join(folded)}")
    stem = pathlib.Path(manifest["file"]).stem
    int8_path = out_dir / f"{stem}.int8.onnx"
    with tempfile.TemporaryDirectory() as work:
        folded_path, prepared = pathlib.Path(work) / "folded.onnx", pathlib.Path(work) / "prepared.onnx"
        onnx.save(model, str(folded_path))
        # ONNX Runtime's own pre-processing for the quantizer: constant folding and operator fusions
        # (a Conv with its BatchNorm, activation patterns) leave fewer tensors to quantize, so fewer
        # quantize/dequantize pairs at run time: about 0.5 instead of 0.75 of fp32's time for the
        # classifier. Symbolic shape inference is skipped: the shapes here are static.
        quant_pre_process(str(folded_path), str(prepared), skip_symbolic_shape=True)
        same_outputs(fp32_path, prepared, manifest, calibration[0])
        quantize_static(
            str(prepared),
            str(int8_path),
            Pictures(manifest, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    # The quantizer writes the shapes it inferred for every tensor, with the classifier's symbolic
    # batch in each; tract cannot unify those with the batch of 1 the agent feeds. They are hints
    # only (both engines infer shapes themselves): drop them.
    quantized = onnx.load(str(int8_path))
    del quantized.graph.value_info[:]
    onnx.save(quantized, str(int8_path))
    digest = sha256(int8_path)
    source = manifest["path"].read_text()
    names = ", ".join(p.name for p in calibration)
    provenance = (
        f"{manifest['provenance']}; quantized to int8 by models/quantize.sh (ONNX Runtime {onnxruntime.__version__} "
        f"quant_pre_process and quantize_static, QDQ, per-channel int8 weights, uint8 activations, MinMax calibration on {len(calibration)} "
        f"pictures: {names})"
    )
    text = source
    for key, value in (("file", int8_path.name), ("sha256", digest), ("provenance", provenance)):
        text, count = re.subn(rf"^{key} = .*$", lambda _: f"{key} = {json.dumps(value, ensure_ascii=False)}", text, 1, re.M)
        if count != 1:
            raise SystemExit(f"{manifest['path']}: no top-level `{key} = ...` line to rewrite")
    labels = manifest["folder"] / manifest["labels"]
    if labels.parent.resolve() != out_dir.resolve():
        text = re.sub(r"^labels = .*$", f"labels = {json.dumps(str(labels.resolve()))}", text, 1, re.M)
    header = (
        f"# int8 variant of {manifest['path'].name}, opt-in: name this manifest in the config's [[models]]\n"
        f"# instead of {manifest['path'].name}. Same name, labels, input and decoder, so taxonomies and\n"
        "# rules keep working.\n"
        "# Written by models/quantize.sh; models/README.md says how, and what it costs in accuracy.\n"
    )
    body = re.sub(r"\A(#[^\n]*\n)+", "", text)
    manifest_path = out_dir / f"{stem}.int8.toml"
    manifest_path.write_text(header + body)
    tomllib.loads(manifest_path.read_text())
    return manifest_path


def same_model(made, committed):
    """None when the model at `made` is the one at `committed`: byte for byte, or with the same graph
    and parameters up to what calibration on another CPU moves (activation ranges come from float
    kernels that differ in the last bits between instruction sets): scales within 1e-4 relative,
    integers within one step. Otherwise what differs."""
    if made.read_bytes() == committed.read_bytes():
        return None
    a, b = onnx.load(str(made)), onnx.load(str(committed))
    ops = lambda m: [(n.op_type, list(n.input), list(n.output)) for n in m.graph.node]
    if ops(a) != ops(b):
        return "the graphs differ (operators or their connections)"
    theirs = {i.name: numpy_helper.to_array(i) for i in b.graph.initializer}
    for init in a.graph.initializer:
        mine = numpy_helper.to_array(init)
        other = theirs.pop(init.name, None)
        if other is None or other.shape != mine.shape or other.dtype != mine.dtype:
            return f"initializer {init.name!r} is missing or of another shape or type"
        if mine.dtype.kind == "f":
            close = np.allclose(mine, other, rtol=1e-4, atol=0)
        else:
            close = np.abs(mine.astype(np.int64) - other.astype(np.int64)).max(initial=0) <= 1
        if not close:
            return f"initializer {init.name!r} differs beyond calibration noise"
    return f"initializers {sorted(theirs)} are not made any more" if theirs else None


def session(path, threads):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def findings(sess, manifest, pixels):
    tensor, transform = ref.preprocess(pixels, manifest["input"])
    outputs = sess.run(None, {manifest["input"]["name"]: tensor})
    if manifest["task"] == "classify":
        decoder = dict(manifest["decoder"], top_k=len(manifest["label_list"]), score_threshold=0.0)
        return ref.classify(outputs, dict(manifest, decoder=decoder))["classes"]
    return ref.detect(outputs, manifest, transform)["detections"]


def compare(fp32_manifest, int8_manifest, parity, threads, seconds):
    """Accuracy and speed of the int8 model against the fp32 one on the `parity` pictures."""
    fp32 = session(fp32_manifest["folder"] / fp32_manifest["file"], threads)
    int8 = session(int8_manifest["folder"] / int8_manifest["file"], threads)
    row = {"model": fp32_manifest["name"], "task": fp32_manifest["task"], "pictures": len(parity), "diffs": []}
    if fp32_manifest["task"] == "classify":
        row.update(top1_same=0, top5_overlap=[])
    else:
        row.update(reference=0, matched=0, extra=0, ious=[])
    for picture in parity:
        pixels = rgb(picture)
        want, got = findings(fp32, fp32_manifest, pixels), findings(int8, int8_manifest, pixels)
        if fp32_manifest["task"] == "classify":
            by_id = {c["class_id"]: c["score"] for c in got}
            row["top1_same"] += want[0]["class_id"] == got[0]["class_id"]
            row["top5_overlap"].append(len({c["class_id"] for c in want[:5]} & {c["class_id"] for c in got[:5]}))
            row["diffs"] += [abs(by_id[c["class_id"]] - c["score"]) for c in want[:5]]
        else:
            unused = list(got)
            row["reference"] += len(want)
            for d in want:
                same = [(ref.iou(d["box"], g["box"]), g) for g in unused if g["class_id"] == d["class_id"]]
                overlap, best = max(same, key=lambda t: t[0], default=(0.0, None))
                if best is not None and overlap >= MATCH_IOU:
                    unused.remove(best)
                    row["matched"] += 1
                    row["ious"].append(overlap)
                    row["diffs"].append(abs(best["score"] - d["score"]))
            row["extra"] += len(unused)
    # session.run alone, the two models alternating on the same tensors, so other work on the
    # machine hits both alike; the median of each.
    tensors = [ref.preprocess(rgb(p), fp32_manifest["input"])[0] for p in parity]
    feed = fp32_manifest["input"]["name"]
    times = {"fp32": [], "int8": []}
    for sess in (fp32, int8):
        sess.run(None, {feed: tensors[0]})
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline or i < 2:
        for label, sess in (("fp32", fp32), ("int8", int8)):
            start = time.perf_counter()
            sess.run(None, {feed: tensors[i % len(tensors)]})
            times[label].append(time.perf_counter() - start)
        i += 1
    row["fp32_ms"] = statistics.median(times["fp32"]) * 1000
    row["int8_ms"] = statistics.median(times["int8"]) * 1000
    row["runs"] = i
    row["fp32_mb"] = (fp32_manifest["folder"] / fp32_manifest["file"]).stat().st_size / 1e6
    row["int8_mb"] = (int8_manifest["folder"] / int8_manifest["file"]).stat().st_size / 1e6
    return row


def describe(row):
    diffs = row["diffs"] or [0.0]
    diff = f"mean {statistics.fmean(diffs):.4f}, max {max(diffs):.4f}"
    if row["task"] == "classify":
        accuracy = (
            f"top-1 same on {row['top1_same']} of {row['pictures']} pictures; top-5 overlap "
            f"{statistics.fmean(row['top5_overlap']):.1f} of 5; probability difference over the fp32 top 5: {diff}"
        )
    else:
        ious = f", mean IoU {statistics.fmean(row['ious']):.3f}" if row["ious"] else ""
        accuracy = (
            f"{row['matched']} of {row['reference']} fp32 detections matched (same label, IoU ≥ {MATCH_IOU}{ious}), "
            f"{row['extra']} extra; score difference of matched: {diff}"
        )
    speed = (
        f"{row['int8_ms']:.2f} ÷ {row['fp32_ms']:.2f} ms = {row['int8_ms'] / row['fp32_ms']:.2f} "
        f"({row['runs']} runs each)"
    )
    size = f"{row['int8_mb']:.1f} ÷ {row['fp32_mb']:.1f} MB"
    return accuracy, speed, size


def report(rows, args, calibration, parity):
    cpu = results_file.lscpu()
    lines = [
        "Written by `models/quantize.sh` (models/quantize.py): ONNX Runtime static quantization (QDQ, per-channel "
        "int8 weights, uint8 activations, MinMax) against the fp32 model, both run by the onnxruntime Python "
        f"package {onnxruntime.__version__}, {args.threads} intra-op thread{'s' if args.threads > 1 else ''}, spinning off as the agent runs it. "
        f"Calibration: {len(calibration)} pictures ({', '.join(sorted({shown(p.parent) for p in calibration}))}); "
        f"accuracy on the {len(parity)} parity pictures ({', '.join(shown(p) for p in parity)}). "
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average before {args.load_before}.",
        "",
        f"lscpu Model name: {cpu['Model name']}",
        "",
        f"lscpu Flags: {cpu['Flags']}",
        "",
        "| model | accuracy, int8 against fp32 | `session.run` int8 ÷ fp32 | file int8 ÷ fp32 |",
        "|---|---|---|---|",
    ]
    for row in rows:
        accuracy, speed, size = describe(row)
        lines.append(f"| {row['model']} | {accuracy} | {speed} | {size} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--manifest",
        type=pathlib.Path,
        action="append",
        help="fp32 model manifest to quantize (repeatable; default models/nanodet.toml and models/efficientnet_lite0.toml)",
    )
    parser.add_argument(
        "--calibration",
        type=pathlib.Path,
        action="append",
        help="pictures or folders to calibrate on: the site's own (repeatable; default calibration/example-site/samples)",
    )
    parser.add_argument(
        "--parity",
        type=pathlib.Path,
        action="append",
        help="pictures or folders to compare int8 with fp32 on (default: the pictures of "
        "tests/fixtures/onnxruntime_reference.json)",
    )
    parser.add_argument("--out", type=pathlib.Path, help="folder for the int8 files (default: beside each manifest)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the speed comparison")
    parser.add_argument("--seconds", type=float, default=10.0, help="timing per model, both models alternating")
    parser.add_argument("--results", type=pathlib.Path, help="also write the report into this file's int8 section")
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=0.75,
        help="fail when int8 agrees with fp32 on less than this share (classifier: same top-1; detector: "
        "fp32 detections matched) on the parity pictures",
    )
    parser.add_argument("--compare-only", action="store_true", help="skip quantizing; compare the existing int8 files")
    parser.add_argument(
        "--same-as",
        type=pathlib.Path,
        help="fail unless each int8 model made is the one in this folder (models/quantize.sh --smoke: the committed ones)",
    )
    args = parser.parse_args()
    args.load_before = " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])

    manifests = args.manifest or [ROOT / "models/nanodet.toml", ROOT / "models/efficientnet_lite0.toml"]
    calibration = pictures_in(args.calibration or [ROOT / "calibration/example-site/samples"])
    if args.parity:
        parity = pictures_in(args.parity)
    else:
        fixture = json.loads((ROOT / "tests/fixtures/onnxruntime_reference.json").read_text())
        parity = [ROOT / p for p in sorted(next(iter(fixture["models"].values()))["images"])]
    rows = []
    for path in manifests:
        fp32 = ref.load_manifest(path.resolve())
        fp32["path"] = path.resolve()
        out_dir = (args.out or fp32["folder"]).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        int8_path = out_dir / f"{pathlib.Path(fp32['file']).stem}.int8.toml"
        if not args.compare_only:
            started = time.perf_counter()
            int8_path = quantize(fp32, calibration, out_dir)
            print(f"{fp32['name']}: wrote {int8_path} and its model in {time.perf_counter() - started:.0f} s")
        if args.same_as:
            committed = args.same_as.resolve() / f"{pathlib.Path(fp32['file']).stem}.int8.onnx"
            made = int8_path.parent / f"{pathlib.Path(fp32['file']).stem}.int8.onnx"
            difference = same_model(made, committed) if committed.is_file() else "it does not exist"
            if difference:
                raise SystemExit(
                    f"{made.name} made now is not {committed}: {difference}. Rerun bash models/quantize.sh and "
                    "scripts/reference-outputs.sh and commit the results"
                )
            print(f"{made.name}: the same model as {committed}")
        int8 = ref.load_manifest(int8_path)
        if sha256(int8["folder"] / int8["file"]) != int8["sha256"]:
            raise SystemExit(f"{int8_path}: sha256 does not match {int8['file']}")
        rows.append(compare(fp32, int8, parity, args.threads, args.seconds))
    text = report(rows, args, calibration, parity)
    print(text)
    if args.results:
        results_file.write_section(args.results, RESULTS_HEADING, text, NOTES_MARKER)
        print(f"wrote the int8 section of {args.results}")
    poor = [(row["model"], share) for row in rows if (share := agreement(row)) < args.min_agreement]
    if poor:
        raise SystemExit(
            "int8 agrees with fp32 too rarely to opt in: "
            + ", ".join(f"{model} {share:.2f}" for model, share in poor)
            + f" (--min-agreement {args.min_agreement}); calibrate on more pictures of the site"
        )


def agreement(row):
    """The share of pictures with the same top-1 class, or of fp32 detections int8 matched."""
    if row["task"] == "classify":
        return row["top1_same"] / row["pictures"]
    return row["matched"] / row["reference"] if row["reference"] else 1.0


if __name__ == "__main__":
    main()
