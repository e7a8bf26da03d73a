"""Two agent builds against each other and against Python, one camera, every frame (issue 31):
bench/camera.sh --ab OLD NEW runs it. The one-stream case of bench/camera_substream.py (the agent on
the 1080p main stream with motion off, every frame decoded and inferred; Python OpenCV + ONNX
Runtime on the same stream), with each agent build and Python taking turns for --rounds rounds, so
a change is measured against the build before it in one run on one machine, whose speed changes
from session to session and minute to minute. Per run: CPU ms per inferred frame, frames inferred
per second, page faults (minor) per inferred frame, p99 frame-to-event latency, peak RSS; then the ratios
per round and their mean. Prints the table (with lscpu); writes nothing into bench/RESULTS.md.
Exits non-zero when a figure is missing.
"""

import argparse
import pathlib
import shutil
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import camera_bench as bench  # noqa: E402  (the camera benchmark's processes, agent runs and figures)
import camera_substream as substream  # noqa: E402  (its scene and one-stream camera)
import report as report_file  # noqa: E402

readings = []
_cpu_seconds = bench.cpu_seconds


def cpu_seconds_and_faults(pid):
    """bench.cpu_seconds, also noting the process's minor page faults (run_agent calls it at the
    window's start and end)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    readings.append(int(fields[7]))
    return _cpu_seconds(pid)


bench.cpu_seconds = cpu_seconds_and_faults


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True, help="the Python with OpenCV, ONNX Runtime and numpy")
    parser.add_argument("--cache", type=pathlib.Path, required=True, help="where clips are kept between runs")
    parser.add_argument("--old", type=pathlib.Path, required=True, help="the agent binary before the change")
    parser.add_argument("--new", type=pathlib.Path, required=True, help="the agent binary with it")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--warmup", type=float, default=8.0,
        help="seconds before the window; past the first clip (about 12 s) for the steady state of clips",
    )  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="640×360, one short round")
    args = parser.parse_args()
    width, height = (640, 360) if args.smoke else (1920, 1080)
    still_secs, warmup = (3.0, 3.0) if args.smoke else (substream.STILL_SECS, args.warmup)
    if args.smoke:
        args.rounds, args.seconds = 1, 6.0
    for binary in (args.old, args.new):
        if not binary.is_file():
            bench.fail(f"no agent binary at {binary}")
    run_args = argparse.Namespace(
        cache=args.cache, python=args.python, width=width, height=height, fps=10, still_secs=still_secs,
        warmup=warmup, seconds=args.seconds, threads=2, perf=None, smoke=args.smoke, agent=None,
    )  # fmt: skip
    args.cache.mkdir(parents=True, exist_ok=True)
    clip = substream.make_clip(run_args, width, height, 10)
    work = args.cache / "last-ab-run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    server = bench.RtspServer(clip, 10, 1, work, [])
    rows, ratios, missing = [], {"old": [], "new": []}, []
    try:
        for round_index in range(args.rounds):
            per_frame = {}
            for name, binary in (("old", args.old), ("new", args.new)):
                run_args.agent = binary
                readings.clear()
                run = bench.run_agent(
                    run_args, work, f"{name}-{round_index}", [server.url(0)],
                    cameras_toml=substream.one_stream_cameras(server, 1),
                )  # fmt: skip
                f = bench.figures(run)
                faults = (readings[-1] - readings[-2]) / run["frames_inferred"] if run["frames_inferred"] else None
                per_frame[name] = f["cpu_ms_per_frame"]
                rows.append((round_index, f"agent {name} ({binary})", f, faults))
            f = bench.figures(bench.run_python(run_args, work, f"python-{round_index}", [server.url(0)]))
            rows.append((round_index, "Python", f, None))
            for name in ("old", "new"):
                if per_frame[name] and f["cpu_ms_per_frame"]:
                    ratios[name].append(per_frame[name] / f["cpu_ms_per_frame"])
                else:
                    missing.append(f"round {round_index}: CPU per frame of {name} or Python")
            print(f"   round {round_index + 1} of {args.rounds} done", flush=True)
    finally:
        server.process.stop()
    cpu = report_file.lscpu()
    print(f"\n{width}×{height} at 10 frames/s, one camera, every frame; {args.seconds:g} s windows after {warmup:g} s warm-up")
    print(f"CPU: {cpu.get('Model name', '?')}; flags: {cpu.get('Flags', '?')}\n")
    print(
        "| round | contender | CPU ms per inferred frame | frames inferred/s | page faults per frame | latency p99 ms "
        "| peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for round_index, name, f, faults in rows:
        print(
            f"| {round_index + 1} | {name} | {bench.fmt(f['cpu_ms_per_frame'], 1)} | {bench.fmt(f['frames_per_second'], 1)} | "
            f"{bench.fmt(faults, 0)} | {bench.fmt(f['latency_p99_ms'], 0)} | {bench.fmt(f['peak_rss_mb'], 0)} |"
        )
    for name in ("old", "new"):
        if ratios[name]:
            shown = ", ".join(f"{r:.2f}" for r in ratios[name])
            print(f"- agent {name} ÷ Python, CPU per frame: {shown} (mean {statistics.mean(ratios[name]):.2f})")
    if ratios["old"] and len(ratios["old"]) == len(ratios["new"]):
        change = [n / o for o, n in zip(ratios["old"], ratios["new"])]
        print(f"- new ÷ old: {', '.join(f'{c:.2f}' for c in change)} (mean {statistics.mean(change):.2f})")
    if missing:
        bench.fail("figures missing:\n  " + "\n  ".join(missing))


if __name__ == "__main__":
    main()
