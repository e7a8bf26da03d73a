"""Turns one run of bench/compare.sh into bench/RESULTS.md and the README's benchmark section.

Standard library only. The ratios and goals are the ones of the inference issue:
1. ort inference ÷ bare ONNX Runtime `session.run` (Python)            goal ≤ 1.05
2. our full per-frame path frames/s ÷ Python OpenCV + ONNX Runtime      goal ≥ 2.0 detector, ≥ 1.5 classifier
3. pre + post-processing share of our frame time                        goal ≤ 10 %
4. tract ÷ ort per inference                                            goal ≤ 1.5
5. peak RSS of the agent with both models loaded                        goal ≤ 120 MB

The run alternates the contenders over several rounds; every figure is the best of its rounds (lowest
latency, highest frames/s), the same rule for every contender, because other work on a shared machine
only ever makes a round slower.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import re

README_START = "<!-- bench-results:start -->"
README_END = "<!-- bench-results:end -->"
NOTES_MARKER = "<!-- notes: kept by bench/report.py across runs -->"
SECTION = "## Inference benchmark"
DETECTORS = {"nanodet"}


def machine():
    model = "unknown CPU"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", pathlib.Path("/proc/meminfo").read_text()).group(1))
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    return f"{model}, {os.cpu_count()} logical cores{memory}, {platform.system()} {platform.release()} {platform.machine()}"


def lscpu():
    """`lscpu`'s Model name and Flags, which every benchmark result records (the machine's CPU
    changes from one session to the next)."""
    import subprocess
    import sys

    info = {"Model name": platform.processor() or "unknown", "Flags": "unknown"}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"lscpu failed: {e}", file=sys.stderr)
        return info
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in info:
            info[key.strip()] = value.strip()
    return info


def best_agent(runs):
    """(model, backend) → best-of-rounds figures."""
    best = {}
    for run in runs:
        for r in run:
            key = (r["model"], r["backend"])
            b = best.setdefault(key, dict(r))
            for field in ("inference_median_ms", "inference_p99_ms", "frame_median_ms", "frame_p99_ms"):
                b[field] = min(b[field], r[field])
            if r["frames_per_second"] > b["frames_per_second"]:
                for field in ("frames_per_second", "decode_mean_ms", "pre_mean_ms", "post_mean_ms", "pre_post_share"):
                    b[field] = r[field]
    return best


def best_python(runs):
    """model → {session_run..., pipeline...} best-of-rounds."""
    best = {}
    for run in runs:
        for r in run["results"]:
            b = best.setdefault(r["model"], json.loads(json.dumps(r)))
            for key, figures in r.items():
                if not isinstance(figures, dict):
                    continue
                for field in ("median_ms", "p99_ms", "mean_ms"):
                    b[key][field] = min(b[key][field], figures[field])
                if "frames_per_second" in figures:
                    b[key]["frames_per_second"] = max(b[key]["frames_per_second"], figures["frames_per_second"])
    return best


def verdict(ok):
    return "met" if ok else "**missed**"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--agent", type=pathlib.Path, action="append", required=True, help="one per round")
    parser.add_argument(
        "--agent-spinning", type=pathlib.Path, action="append", default=[], help="ort with spinning threads, per round"
    )
    parser.add_argument("--python", type=pathlib.Path, action="append", required=True, help="one per round")
    parser.add_argument("--rss", nargs=3, action="append", metavar=("BACKEND", "KIB", "FRAMES"), required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--load", nargs=2, metavar=("BEFORE", "AFTER"), default=["?", "?"])
    parser.add_argument("--results", type=pathlib.Path, required=True)
    parser.add_argument("--readme", type=pathlib.Path)
    args = parser.parse_args()

    agent = best_agent([json.loads(p.read_text()) for p in args.agent])
    spinning = best_agent([json.loads(p.read_text()) for p in args.agent_spinning])
    python_runs = [json.loads(p.read_text()) for p in args.python]
    python = best_python(python_runs)
    models = sorted({m for m, _ in agent})

    rows = []

    def row(measure, model, figures, ratio, goal, ok):
        rows.append((measure, model, figures, ratio, goal, verdict(ok)))

    for model in models:
        ort, tract, py = agent.get((model, "ort")), agent.get((model, "tract")), python.get(model)
        ort_spin = spinning.get((model, "ort"))
        # Like with like: ONNX Runtime's threads spinning (its default, the Python baselines' default)
        # or not (the agent's default); and each side with its own defaults.
        pairs = [
            ("both without spinning threads", ort, "_no_spin"),
            ("both with spinning threads", ort_spin, ""),
        ]
        if ort and py:
            for label, ours, variant in pairs:
                if not ours:
                    continue
                ratio = ours["inference_median_ms"] / py["session_run" + variant]["median_ms"]
                row(
                    f"1. ort inference ÷ Python `session.run`, {label}",
                    model,
                    f"{ours['inference_median_ms']:.2f} ÷ {py['session_run' + variant]['median_ms']:.2f} ms",
                    f"{ratio:.3f}",
                    "≤ 1.05",
                    ratio <= 1.05,
                )
            goal = 2.0 if model in DETECTORS else 1.5
            for label, ours, variant in pairs + [("each with its defaults (ours: no spinning)", ort, "")]:
                if not ours:
                    continue
                ratio = ours["frames_per_second"] / py["pipeline" + variant]["frames_per_second"]
                row(
                    f"2. full frame path frames/s, ours (ort) ÷ Python OpenCV + ORT, {label}",
                    model,
                    f"{ours['frames_per_second']:.1f} ÷ {py['pipeline' + variant]['frames_per_second']:.1f} frames/s",
                    f"{ratio:.2f}",
                    f"≥ {goal}",
                    ratio >= goal,
                )
        for backend in (ort, tract):
            if backend:
                share = backend["pre_post_share"]
                row(
                    f"3. pre + post share of our frame time ({backend['backend']})",
                    model,
                    f"pre {backend['pre_mean_ms']:.2f} + post {backend['post_mean_ms']:.2f} ms of "
                    f"{1000.0 / backend['frames_per_second']:.1f} ms (picture decode {backend['decode_mean_ms']:.2f} ms)",
                    f"{share * 100:.1f} %",
                    "≤ 10 %",
                    share <= 0.10,
                )
        if ort and tract:
            ratio = tract["inference_median_ms"] / ort["inference_median_ms"]
            row(
                "4. tract ÷ ort per inference",
                model,
                f"{tract['inference_median_ms']:.2f} ÷ {ort['inference_median_ms']:.2f} ms",
                f"{ratio:.2f}",
                "≤ 1.5",
                ratio <= 1.5,
            )
    for backend, kib, frames in args.rss:
        mb = int(kib) * 1024 / 1e6
        row(
            f"5. peak RSS of `edge-agent run`, both models ({backend})",
            "both",
            f"VmHWM {int(kib) / 1024:.0f} MiB after {frames} frames",
            f"{mb:.0f} MB",
            "≤ 120 MB",
            mb <= 120,
        )

    table = ["| measure | model | figures (best of rounds) | result | goal | |", "|---|---|---|---|---|---|"]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    latency = ["| model | contender | median ms | p99 ms | frames/s (full path) |", "|---|---|---|---|---|"]
    for model in models:
        for backend, figures, label in (
            ("ort", agent, "no spinning"),
            ("ort", spinning, "spinning"),
            ("tract", agent, ""),
        ):
            r = figures.get((model, backend))
            if r:
                name = f"edge-agent {backend} ({r['execution_provider']}{', ' + label if label else ''})"
                latency.append(
                    f"| {model} | {name} | {r['inference_median_ms']:.2f} | "
                    f"{r['inference_p99_ms']:.2f} | {r['frames_per_second']:.1f} |"
                )
        py = python.get(model, {})
        for variant, label in (("", "defaults"), ("_no_spin", "spinning off")):
            if "session_run" + variant in py:
                run, pipe = py["session_run" + variant], py["pipeline" + variant]
                latency.append(f"| {model} | Python session.run, {label} | {run['median_ms']:.2f} | {run['p99_ms']:.2f} | |")
                latency.append(
                    f"| {model} | Python OpenCV + ORT pipeline, {label} (whole frame) | {pipe['median_ms']:.2f} | "
                    f"{pipe['p99_ms']:.2f} | {pipe['frames_per_second']:.1f} |"
                )

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = python_runs[0]
    summary = (
        f"Machine: {machine()}; load average (1, 5, 15 min) before the run {args.load[0]}, after {args.load[1]} "
        f"(a shared machine: other jobs ran at the same time).\n"
        f"{args.threads} threads per inference for every contender; {len(args.agent)} rounds of {args.seconds:g} s per "
        f"measurement, best round reported; pictures: models/samples (2 JPEG, 1 PNG); ONNX Runtime "
        f"{info['onnxruntime']} (the same library file for the agent and Python), OpenCV {info['opencv']}, "
        f"numpy {info['numpy']}. Run {when} by `bash bench/compare.sh`."
    )
    body = "\n".join([summary, "", *table, "", "Latencies (inference alone; the pipelines' whole frame):", "", *latency, ""])
    intro = (
        "Written by `bench/compare.sh` (`bench/report.py` says how each figure is computed). Inference is the "
        "backend's run alone; a frame is picture decode → pre-process → inference → decode/NMS.\n\n"
    )
    write_section(args.results, SECTION, intro + body, NOTES_MARKER)
    if args.readme and args.readme.exists():
        text = args.readme.read_text()
        if README_START in text and README_END in text:
            head, rest = text.split(README_START, 1)
            _, tail = rest.split(README_END, 1)
            args.readme.write_text(head + README_START + "\n" + body + README_END + tail)


def write_section(path, heading, body, notes_marker):
    """Replaces the section under `heading` in the results file at `path` (up to the next `## `
    heading) with `body`, keeping the hand-written notes below `notes_marker` in it and every other
    section (the outbox and camera benchmarks write their own)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    notes, tail = "", ""
    if heading in text:
        head, rest = text.split(heading, 1)
        end = rest.find("\n## ")
        section, tail = (rest, "") if end < 0 else (rest[: end + 1], rest[end + 1 :])
        if notes_marker in section:
            notes = section.split(notes_marker, 1)[1].strip("\n") + "\n"
    else:
        head = text.rstrip("\n") + "\n\n"
    section = heading + "\n\n" + body.rstrip("\n") + "\n\n" + notes_marker + "\n" + (("\n" + notes) if notes else "")
    path.write_text(head + section + ("\n" + tail if tail else ""))


if __name__ == "__main__":
    main()
