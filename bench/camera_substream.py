"""Cameras per box (issue 31), bench/camera.sh --substream runs it: many cameras on one box the way
NVRs hold them, each a 1080p main stream and a 640×360 substream served over RTSP, a quiet scene
where something moves 10 % of the time, and the figures of issue 31 with their ratios from the same
run.

The scene (bench/camera_clip.py --still-secs 27): each 30 s cycle is 3 s of vehicles (a truck, a car
and a bicycle from models/samples/dog.jpg, panning: the object rule's events), then 27 s of a still
picture (models/samples/person.jpg: a person, whom the agent blurs, and nothing the rule reports).
The main stream is that scene at 1920×1080 and 10 frames/s, the substream the same at 640×360 and
5 frames/s, both H.264 with a key frame every 2 s, looped by bench/rtsp_bench_server.py; camera K
starts K/N of the way into the cycle, so the cameras are not busy at once.

Contenders, each alone, warmed up, then measured over --seconds (two cycles by default):

- two streams: the agent detecting on the substream (`detect_url`) with motion on (its default for
  RTSP cameras), the main stream kept for event clips without decoding it; at 1, 4, 8 and 16
  cameras.
- two streams, every frame: the same with motion off: every substream frame inferred whole, the
  reference for the events (the same video, so motion must find every event it finds); at 1 and 4
  cameras.
- one stream: the agent on the main stream with motion off (`motion = { enabled = false }`: every
  frame decoded and inferred, as before issue 31); at 1 and 4 cameras.
- Python: OpenCV (FFmpeg) + ONNX Runtime inferring every frame of the main stream
  (bench/camera_python.py); at 1 and 4 cameras.

Figures: cores per camera, frames inferred and frames still per second, frames replaced before
inference took them (only frames with motion get that far), event starts in the window (the same
events must be found with motion as without), peak RSS and RSS per extra camera, frame-to-event
latency (median, p99), CPU per inferred frame. `lscpu` is recorded with them. Exits non-zero when a
figure is missing.
"""

import argparse
import datetime
import pathlib
import shutil
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import camera_bench as bench  # noqa: E402  (the camera benchmark's processes, agent runs and figures)
import report as report_file  # noqa: E402

SECTION = "## Cameras per box: substream and motion (issue 31)"
NOTES_MARKER = "<!-- cameras-per-box notes: kept by bench/camera_substream.py across runs -->"
CLIP_VERSION = 1
STILL_SECS = 27.0
CORES_PER_CAMERA_GOAL = 0.1
RSS_PER_CAMERA_GOAL_MB = 20.0


def make_clip(args, width, height, fps):
    name = f"quiet-v{CLIP_VERSION}-{width}x{height}-{fps}fps-{args.still_secs:g}s-still.mp4"
    clip = args.cache / name
    if not clip.exists():
        print(f"== making {clip} (once; cached)", flush=True)
        subprocess.run(
            [
                args.python, str(bench.REPO / "bench/camera_clip.py"), "--out", str(clip), "--width", str(width),
                "--height", str(height), "--fps", str(fps), "--seconds", str(3.0 + args.still_secs),
                "--still-secs", str(args.still_secs), "--samples", str(bench.REPO / "models/samples"),
                "--bitrate-kbps", str(4000 if width >= 1280 else 600),
            ],
            check=True,
        )  # fmt: skip
    return clip


def two_stream_cameras(server, cameras, motion=True):
    return "".join(
        f'[[cameras]]\nid = "cam{i}"\nsource = {{ kind = "rtsp", url = "{server.url(i)}", '
        f'detect_url = "{server.sub_url(i)}" }}\n' + ("" if motion else "motion = { enabled = false }\n")
        for i in range(cameras)
    )


def one_stream_cameras(server, cameras):
    return "".join(
        f'[[cameras]]\nid = "cam{i}"\nsource = {{ kind = "rtsp", url = "{server.url(i)}" }}\n'
        "motion = { enabled = false }\n"
        for i in range(cameras)
    )


def starts(run):
    return run.get("event_states", {}).get("start", 0)


def row(name, run):
    f = bench.figures(run)
    per_s = lambda key: run.get(key, 0) / run["window_s"]  # noqa: E731
    still = f"{per_s('frames_still'):.1f}" if "frames_still" in run else "—"
    dropped = str(run["frames_dropped"]) if "frames_dropped" in run else "—"
    events = str(starts(run)) if run["contender"] == "agent" else "—"
    return (
        f"| {run['cameras']} | {name} | {f['cores_per_camera']:.3f} | {f['frames_per_second']:.1f} | {still} | "
        f"{dropped} | {events} | {bench.fmt(f['cpu_ms_per_frame'])} | {bench.fmt(f['latency_median_ms'], 0)} / "
        f"{bench.fmt(f['latency_p99_ms'], 0)} ({f['latency_samples']}) | {f['peak_rss_mb']:.0f} |"
    )


def tables(args, two, every, one, python, cpu, started, load_before, load_after):
    lines, missing = [], []
    lines.append(
        f"Run {started} ({'smoke' if args.smoke else 'full'}), agent `{args.agent.name}` "
        f"({'debug' if '/debug/' in str(args.agent) else 'release'} build), {args.threads} inference threads; "
        f"main stream {args.width}×{args.height} at {args.fps} frames/s, substream {args.sub_width}×{args.sub_height} "
        f"at {args.sub_fps} frames/s; something moves {3.0 / (3.0 + args.still_secs):.0%} of the time; "
        f"window {args.seconds:g} s after {args.warmup:g} s warm-up. Load before {load_before}, after {load_after}.\n"
    )
    lines.append(f"CPU: {cpu}\n")
    lines.append(
        "| cameras | contender | cores/camera | frames inferred/s | frames still/s | frames replaced | "
        "event starts | CPU ms/inferred frame | latency median / p99 ms (n) | peak RSS MB |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for cameras in sorted(two):
        lines.append(row("two streams, motion", two[cameras]))
        if cameras in every:
            lines.append(row("two streams, every frame", every[cameras]))
        if cameras in one:
            lines.append(row("one stream, every frame", one[cameras]))
        if cameras in python:
            lines.append(row("Python, every frame", python[cameras]))
    lines.append("")
    goals = []
    for cameras, run in sorted(two.items()):
        f = bench.figures(run)
        goals.append(
            f"- {cameras} camera(s), two streams with motion: {f['cores_per_camera']:.3f} cores/camera "
            f"(goal ≤ {CORES_PER_CAMERA_GOAL}: {bench.verdict(f['cores_per_camera'] <= CORES_PER_CAMERA_GOAL)}); "
            f"{run['frames_dropped']} frames with motion replaced before inference "
            f"(goal 0: {bench.verdict(run['frames_dropped'] == 0)}); plan: {', '.join(run['inference_plans'])}"
        )
        if cameras in every:
            base = every[cameras]
            goals.append(
                f"  - against every frame of the same substream: event starts {starts(run)} against "
                f"{starts(base)} (goal: every event found: {bench.verdict(starts(run) >= starts(base) and starts(base) > 0)})"
            )
        if cameras in one:
            base = one[cameras]
            ratio = bench.figures(base)["cores_per_camera"] / f["cores_per_camera"] if f["cores_per_camera"] else None
            goals.append(
                f"  - against one stream (the main stream), every frame: {bench.fmt(ratio, 1)}× less CPU per camera "
                f"(goal ≥ 4: {bench.verdict(ratio is not None and ratio >= 4.0)}); event starts {starts(run)} "
                f"against {starts(base)} there (another video: 1280 pixels wide and twice the frames)"
            )
    if 1 in two and len(two) > 1:
        most = max(two)
        per_camera = (bench.figures(two[most])["peak_rss_mb"] - bench.figures(two[1])["peak_rss_mb"]) / (most - 1)
        goals.append(
            f"- RSS per extra camera (1 → {most} cameras): {per_camera:.1f} MB "
            f"(goal ≤ {RSS_PER_CAMERA_GOAL_MB:g}: {bench.verdict(per_camera <= RSS_PER_CAMERA_GOAL_MB)})"
        )
    latency_at = 8 if 8 in two else max(two)
    run = two[latency_at]
    f = bench.figures(run)
    bound = 1000.0 / args.sub_fps + (run["inference_ms"] or 0.0)
    if f["latency_p99_ms"] is None:
        missing.append(f"latency with {latency_at} cameras")
    else:
        goals.append(
            f"- p99 frame-to-event latency with {latency_at} cameras: {f['latency_p99_ms']:.0f} ms (goal < one "
            f"substream interval + one inference = {bound:.0f} ms: {bench.verdict(f['latency_p99_ms'] < bound)})"
        )
    for cameras in sorted(set(one) & set(python)):
        agent_ms, python_ms = bench.figures(one[cameras])["cpu_ms_per_frame"], bench.figures(python[cameras])["cpu_ms_per_frame"]
        if agent_ms is None or python_ms is None:
            missing.append(f"CPU per frame at {cameras} camera(s)")
            continue
        goals.append(
            f"- one stream, every frame, {cameras} camera(s): {agent_ms / python_ms:.2f}× the Python pipeline's CPU "
            f"per frame (goal ≤ 1.0: {bench.verdict(agent_ms / python_ms <= 1.0)})"
        )
    for name, runs in (("two streams", two), ("two streams, every frame", every), ("one stream", one), ("Python", python)):
        for cameras, run in runs.items():
            if not run["frames_inferred"]:
                missing.append(f"{name} at {cameras} camera(s): no frame inferred")
            if run["contender"] == "agent" and not starts(run):
                missing.append(f"{name} at {cameras} camera(s): no event started in the window")
    lines.append("\n".join(goals))
    return "\n".join(lines) + "\n", missing


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", type=pathlib.Path, required=True)
    parser.add_argument("--python", required=True, help="the Python with OpenCV, ONNX Runtime and numpy")
    parser.add_argument("--cache", type=pathlib.Path, required=True, help="where clips are kept between runs")
    parser.add_argument("--results", type=pathlib.Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="1 camera, small streams, a short scene")
    parser.add_argument("--cameras", type=int, action="append", help="two-stream runs (default 1, 4, 8, 16)")
    parser.add_argument("--contender-cameras", type=int, action="append", help="default 1 and 4")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--sub-width", type=int, default=640)
    parser.add_argument("--sub-height", type=int, default=360)
    parser.add_argument("--sub-fps", type=int, default=5)
    parser.add_argument("--still-secs", type=float, default=STILL_SECS)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--perf", type=pathlib.Path, help="folder: `perf record` each contender in its window")
    args = parser.parse_args()
    if args.smoke:
        args.cameras, args.contender_cameras = [1], [1]
        args.width, args.height, args.sub_width, args.sub_height = 640, 360, 320, 180
        args.still_secs, args.warmup, args.seconds = 3.0, 3.0, 12.0
    args.cameras = sorted(set(args.cameras or [1, 4, 8, 16]))
    args.contender_cameras = sorted(set(args.contender_cameras or [1, 4]))
    if not args.agent.is_file():
        bench.fail(f"no agent binary at {args.agent}; build it or set EDGE_AGENT_BIN")
    args.cache.mkdir(parents=True, exist_ok=True)

    cpu = report_file.lscpu()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])
    main_clip = make_clip(args, args.width, args.height, args.fps)
    sub_clip = make_clip(args, args.sub_width, args.sub_height, args.sub_fps)
    work = args.cache / "last-substream-run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    substream = ["--sub-file", str(sub_clip), "--sub-fps", str(args.sub_fps)]
    server = bench.RtspServer(main_clip, args.fps, max(args.cameras + args.contender_cameras), work, substream)
    two, every, one, python = {}, {}, {}, {}
    try:
        for cameras in args.cameras:
            urls = [server.url(i) for i in range(cameras)]
            print(f"== {cameras} camera(s): edge-agent, two streams with motion", flush=True)
            two[cameras] = bench.run_agent(
                args, work, f"agent-two-{cameras}", urls, cameras_toml=two_stream_cameras(server, cameras)
            )
            if cameras in args.contender_cameras:
                print(f"== {cameras} camera(s): edge-agent, two streams, every frame", flush=True)
                every[cameras] = bench.run_agent(
                    args, work, f"agent-every-{cameras}", urls,
                    cameras_toml=two_stream_cameras(server, cameras, motion=False),
                )  # fmt: skip
                print(f"== {cameras} camera(s): edge-agent, one stream, every frame", flush=True)
                one[cameras] = bench.run_agent(
                    args, work, f"agent-one-{cameras}", urls, cameras_toml=one_stream_cameras(server, cameras)
                )
                print(f"== {cameras} camera(s): Python OpenCV + ONNX Runtime, every frame", flush=True)
                python[cameras] = bench.run_python(args, work, f"python-{cameras}", urls)
            for name, runs in (("two", two), ("every", every), ("one", one), ("python", python)):
                if cameras in runs:
                    f = bench.figures(runs[cameras])
                    print(
                        f"   {name}: {f['cores_per_camera']:.3f} cores/camera, {f['frames_per_second']:.1f} frames/s, "
                        f"p99 {bench.fmt(f['latency_p99_ms'], 0)} ms, peak RSS {f['peak_rss_mb']:.0f} MB, "
                        f"event starts {starts(runs[cameras]) if name != 'python' else '—'}",
                        flush=True,
                    )
    finally:
        server.process.stop()
    load_after = " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])
    body, missing = tables(args, two, every, one, python, cpu, started, load_before, load_after)
    print(body)
    report_file.write_section(args.results, SECTION, body, NOTES_MARKER)
    print(f"== wrote the cameras-per-box section of {args.results}")
    if missing:
        bench.fail("figures missing:\n  " + "\n  ".join(missing))


if __name__ == "__main__":
    main()
