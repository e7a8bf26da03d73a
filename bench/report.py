"""Turns one run of bench/compare.sh into bench/RESULTS.md and the README's benchmark section.

Standard library only. The ratios and goals are the ones of the inference issue:
1. ort inference ÷ bare ONNX Runtime `session.run` (Python)            goal ≤ 1.05
2. our full per-frame path frames/s ÷ Python OpenCV + ONNX Runtime      goal ≥ 2.0 detector, ≥ 1.5 classifier
3. pre + post-processing share of our frame time                        goal ≤ 10 %
4. tract ÷ ort per inference                                            goal ≤ 1.5
5. peak RSS of the agent with both models loaded                        goal ≤ 120 MB
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


def verdict(ok):
    return "met" if ok else "**missed**"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--agent", type=pathlib.Path, required=True)
    parser.add_argument("--python", type=pathlib.Path, required=True)
    parser.add_argument("--rss", nargs=3, action="append", metavar=("BACKEND", "KIB", "FRAMES"), required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--load", nargs=2, metavar=("BEFORE", "AFTER"), default=["?", "?"])
    parser.add_argument("--results", type=pathlib.Path, required=True)
    parser.add_argument("--readme", type=pathlib.Path)
    args = parser.parse_args()

    agent = {(r["model"], r["backend"]): r for r in json.loads(args.agent.read_text())}
    python_run = json.loads(args.python.read_text())
    python = {r["model"]: r for r in python_run["results"]}
    models = sorted({m for m, _ in agent})
    detector = {"nanodet"}

    rows = []
    for model in models:
        ort, tract, py = agent.get((model, "ort")), agent.get((model, "tract")), python.get(model)
        if ort and py:
            ratio = ort["inference_median_ms"] / py["session_run"]["median_ms"]
            rows.append(
                (
                    "1. ort inference ÷ Python `session.run` (median)",
                    model,
                    f"{ort['inference_median_ms']:.1f} ms ÷ {py['session_run']['median_ms']:.1f} ms",
                    f"{ratio:.3f}",
                    "≤ 1.05",
                    verdict(ratio <= 1.05),
                )
            )
            goal = 2.0 if model in detector else 1.5
            ratio = ort["frames_per_second"] / py["pipeline"]["frames_per_second"]
            rows.append(
                (
                    "2. full frame path frames/s, ours (ort) ÷ Python OpenCV + ORT",
                    model,
                    f"{ort['frames_per_second']:.2f} ÷ {py['pipeline']['frames_per_second']:.2f} frames/s",
                    f"{ratio:.2f}",
                    f"≥ {goal}",
                    verdict(ratio >= goal),
                )
            )
        for backend in (ort, tract):
            if backend:
                share = backend["pre_post_share"]
                rows.append(
                    (
                        f"3. pre + post share of our frame time ({backend['backend']})",
                        model,
                        f"pre {backend['pre_mean_ms']:.2f} + post {backend['post_mean_ms']:.2f} ms of "
                        f"{1000.0 / backend['frames_per_second']:.1f} ms",
                        f"{share * 100:.1f} %",
                        "≤ 10 %",
                        verdict(share <= 0.10),
                    )
                )
        if ort and tract:
            ratio = tract["inference_median_ms"] / ort["inference_median_ms"]
            rows.append(
                (
                    "4. tract ÷ ort per inference (median)",
                    model,
                    f"{tract['inference_median_ms']:.1f} ms ÷ {ort['inference_median_ms']:.1f} ms",
                    f"{ratio:.2f}",
                    "≤ 1.5",
                    verdict(ratio <= 1.5),
                )
            )
    for backend, kib, frames in args.rss:
        mib = int(kib) / 1024
        rows.append(
            (
                f"5. peak RSS, agent with both models ({backend})",
                "both",
                f"{mib:.0f} MiB after {frames} frames",
                f"{mib:.0f} MiB",
                "≤ 120 MB (114 MiB)",
                verdict(int(kib) * 1024 <= 120e6),
            )
        )

    table = ["| measure | model | figures | ratio | goal | |", "|---|---|---|---|---|---|"]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    latency = [
        "| model | contender | median ms | p99 ms | frames/s (full path) |",
        "|---|---|---|---|---|",
    ]
    for model in models:
        for backend in ("ort", "tract"):
            r = agent.get((model, backend))
            if r:
                latency.append(
                    f"| {model} | edge-agent {backend} ({r['execution_provider']}) | {r['inference_median_ms']:.1f} | "
                    f"{r['inference_p99_ms']:.1f} | {r['frames_per_second']:.2f} |"
                )
        py = python.get(model)
        if py:
            latency.append(
                f"| {model} | Python session.run | {py['session_run']['median_ms']:.1f} | "
                f"{py['session_run']['p99_ms']:.1f} | |"
            )
            latency.append(
                f"| {model} | Python OpenCV + ORT pipeline (frame) | {py['pipeline']['median_ms']:.1f} | "
                f"{py['pipeline']['p99_ms']:.1f} | {py['pipeline']['frames_per_second']:.2f} |"
            )

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    summary = (
        f"Machine: {machine()}. Load average (1, 5, 15 min) before: {args.load[0]}, after: {args.load[1]}.\n"
        f"Threads per inference: {args.threads} for every contender; {args.seconds:g} s per measurement; pictures: "
        f"models/samples; ONNX Runtime {python_run['onnxruntime']} (the same library file for the agent and Python), "
        f"OpenCV {python_run['opencv']}, numpy {python_run['numpy']}. Run {when} by `bash bench/compare.sh`."
    )
    body = "\n".join([summary, "", *table, "", "Latencies:", "", *latency, ""])
    args.results.write_text(
        "# Inference benchmark\n\n"
        "Written by `bench/compare.sh` (see `bench/report.py` for how each ratio is computed). "
        "Inference latency is the backend's run alone; a frame is picture decode → pre-process → inference → "
        "decode/NMS. The notes below the tables are written by hand after looking at a run.\n\n" + body
        + NOTES_MARKER + "\n" + existing_notes(args.results)
    )
    if args.readme and args.readme.exists():
        text = args.readme.read_text()
        if README_START in text and README_END in text:
            head, rest = text.split(README_START, 1)
            _, tail = rest.split(README_END, 1)
            args.readme.write_text(head + README_START + "\n" + body + README_END + tail)


NOTES_MARKER = "\n<!-- notes: kept by bench/report.py across runs -->"


def existing_notes(path):
    """Hand-written notes below the marker survive a new run."""
    if path.exists():
        text = path.read_text()
        if NOTES_MARKER in text:
            return text.split(NOTES_MARKER, 1)[1].lstrip("\n")
    return ""


if __name__ == "__main__":
    main()
