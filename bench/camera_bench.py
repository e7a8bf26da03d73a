"""The camera benchmark's driver (bench/camera.sh runs it): real RTSP cameras into the agent and into
the Python OpenCV + ONNX Runtime pipeline (bench/camera_python.py), one after the other on the same
looping stream, and the figures of issue 17 with their ratios from the same run.

For each frame rate (one RTSP server, bench/rtsp_bench_server.py, serving the clip of
bench/camera_clip.py) and each number of cameras, each contender runs alone: started, warmed up,
then measured over a window of --seconds:

- CPU cores per camera: utime + stime of the process (/proc/PID/stat, every thread) over the
  window, ÷ window ÷ cameras; CPU per inferred frame: the same CPU time ÷ frames inferred.
- frames inferred per second: the agent's `frames_inferred` (/api/v1/status) over the window; the
  Python pipeline's frames whose detections were ready in the window.
- frame-to-event latency, median and p99: agent: from the capture time of the frame an event
  message was decided on (its `time`: when the picture left the H.264 decoder) to the message's
  arrival on the agent's push feed (/api/v1/events/stream, sent after the outbox's durable commit);
  every message (start, update, end) whose frame was captured in the window. Python: from cap.read()
  returning the frame to its detections being ready, for every frame with a detection of the
  object rule's labels (the pipeline has no tracking, evidence or outbox).
- peak RSS: VmHWM of the process when the window ends.

Plus, on one camera at the lowest frame rate: the agent with both shipped models (detector and
classifier), for the peak-RSS goal, with its resident memory by part (/proc/PID/smaps: libraries,
malloc heap, anonymous mappings); and both contenders with the int8 detector (models/nanodet.int8.toml),
for the int8 goal (agent int8 ÷ Python fp32). Exits non-zero when any figure is missing.
"""

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import report as report_file  # bench/report.py: one way to replace a section of RESULTS.md

SECTION = "## Camera benchmark (issue 17)"
NOTES_MARKER = "<!-- camera notes: kept by bench/camera_bench.py across runs -->"
CLIP_VERSION = 2
TICKS = os.sysconf("SC_CLK_TCK")
REPO = pathlib.Path(__file__).resolve().parent.parent


def fail(message):
    sys.exit(f"camera benchmark: {message}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """utime + stime of every thread of `pid` so far."""
    text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


FP32 = "models/nanodet.toml"
INT8 = "models/nanodet.int8.toml"


def rss_by_part(pid):
    """The process's resident memory now, by what it is (/proc/PID/smaps): MB per part, largest first.
    File-backed pages are libraries' code and data (shared, dropped by the kernel when memory is
    short); anonymous ones are what the agent allocated: the malloc heap, and mappings without a name,
    which are allocations of 256 KB and more (frames, tensors, ONNX Runtime's arena) and thread stacks."""
    parts = {}
    name = None
    for line in pathlib.Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
            path = fields[5] if len(fields) > 5 else ""
            base = os.path.basename(path)
            if path == "[heap]":
                name = "malloc heap ([heap])"
            elif not path:
                name = "anonymous mappings (allocations ≥ 256 KB: frames, tensors, ONNX Runtime arena; thread stacks)"
            elif path.startswith("["):
                name = f"kernel {path}"
            elif base.startswith("libonnxruntime"):
                name = "ONNX Runtime library"
            elif base.startswith(("libgst", "libav", "libsw", "liborc", "libx264", "libopenh264", "libdav1d", "libde265")):
                name = "GStreamer and FFmpeg libraries"
            elif base.endswith(".onnx"):
                name = "model files (mapped)"
            elif base == "edge-agent":
                name = "the agent's binary"
            else:
                name = "other libraries and files"
        elif fields and fields[0] == "Rss:" and name:
            parts[name] = parts.get(name, 0) + int(fields[1])
    return sorted(((part, kib * 1024 / 1e6) for part, kib in parts.items()), key=lambda x: -x[1])


def peak_rss_kib(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    fail(f"/proc/{pid}/status has no VmHWM line")


def parse_time(text):
    """Seconds since the epoch of an RFC 3339 UTC time with up to nanoseconds (chrono's form)."""
    text = text.replace("+00:00", "Z")
    if not text.endswith("Z"):
        raise ValueError(f"{text!r} is not a UTC time")
    whole, _, fraction = text[:-1].partition(".")
    seconds = datetime.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return seconds.timestamp() + (float("0." + fraction) if fraction else 0.0)


def percentile(samples, share):
    """The nearest-rank percentile (as bench/python_baseline.py computes p99)."""
    ordered = sorted(samples)
    return ordered[max(math.ceil(share * len(ordered)) - 1, 0)]


class Process:
    """A child process the benchmark started; stopped by its own pid only."""

    def __init__(self, args, log, env=None):
        self.log = log
        self.popen = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
        self.pid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def stop(self):
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def tail(self, lines=20):
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class RtspServer:
    """bench/rtsp_bench_server.py on a free port; `extra`: more of its arguments (a substream)."""

    def __init__(self, clip, fps, cameras, work, extra=()):
        self.port = free_port()
        self.process = Process(
            [
                "/usr/bin/python3", str(REPO / "bench/rtsp_bench_server.py"), "--port", str(self.port),
                "--file", str(clip), "--fps", str(fps), "--cameras", str(cameras), *extra,
            ],
            work / f"rtsp-{fps}.log",
        )  # fmt: skip
        deadline = time.time() + 30
        while time.time() < deadline:
            if "ready" in self.process.tail():
                return
            if not self.process.alive():
                break
            time.sleep(0.2)
        fail(f"the RTSP server did not start:\n{self.process.tail()}")

    def url(self, camera):
        return f"rtsp://127.0.0.1:{self.port}/cam{camera}"

    def sub_url(self, camera):
        """Camera K's substream, when the server serves one (`--sub-file`)."""
        return f"rtsp://127.0.0.1:{self.port}/cam{camera}-sub"


def make_clip(args, fps):
    name = f"clip-v{CLIP_VERSION}-{args.width}x{args.height}-{fps}fps-{args.clip_seconds:g}s.mp4"
    clip = args.cache / name
    if not clip.exists():
        print(f"== making {clip} (once; cached)", flush=True)
        subprocess.run(
            [
                args.python, str(REPO / "bench/camera_clip.py"), "--out", str(clip), "--width", str(args.width),
                "--height", str(args.height), "--fps", str(fps), "--seconds", str(args.clip_seconds),
                "--samples", str(REPO / "models/samples"),
            ],
            check=True,
        )  # fmt: skip
    return clip


def api(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.load(response)


class EventFeed:
    """Listens to the agent's push feed; keeps (arrival, event) for every event message."""

    def __init__(self, port):
        self.messages = []
        self.lagged = 0
        self.error = None
        self.response = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/events/stream", timeout=None)
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        kind = None
        try:
            for raw in self.response:
                arrived = time.time()
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:") and kind == "event":
                    self.messages.append((arrived, json.loads(line[5:])))
                elif line.startswith("data:") and kind == "lagged":
                    self.lagged += int(line[5:])
        except (OSError, ValueError) as e:
            self.error = str(e)


def agent_config(args, work, name, port, urls, both_models, detector, cameras_toml=None):
    # The Python peer's one model; with both, the classifier on whole frames too (not the default).
    models = f'[[models]]\nmanifest = "{REPO / detector}"\n'
    if both_models:
        models += f'[[models]]\nmanifest = "{REPO / "models/efficientnet_lite0.toml"}"\n'

    cameras = cameras_toml or "".join(
        f'[[cameras]]\nid = "cam{i}"\nsource = {{ kind = "rtsp", url = "{url}" }}\n' for i, url in enumerate(urls)
    )
    config = work / f"{name}.toml"
    # Events start on the first sighting and end 1.5 s after the vehicles leave, and a vehicle that
    # comes back is a new incident: the clip's cuts then give about one event message a second.
    config.write_text(
        f'state_dir = "{work / ("state-" + name)}"\n'
        f'[web]\nlisten = "127.0.0.1:{port}"\n'
        f'[inference]\nbackend = "ort"\nintra_op_threads = {args.threads}\n'
        "[rules.object]\nmin_duration_secs = 0.0\n"
        "[tracking]\nmax_lost_secs = 1.5\nstationary_memory_secs = 0.0\n" + models + cameras
    )
    return config


def wait_until(what, deadline_secs, check, process):
    deadline = time.time() + deadline_secs
    while time.time() < deadline:
        if not process.alive():
            fail(f"{what}: the process exited (code {process.popen.returncode}):\n{process.tail()}")
        try:
            if check():
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.25)
    fail(f"{what}: not ready within {deadline_secs} s:\n{process.tail()}")


def start_profile(args, pid, name):
    """`perf record` of a contender over the measured window (--perf): adds a little CPU of its own,
    so profile in a separate run from the one whose figures are kept."""
    args.perf.mkdir(parents=True, exist_ok=True)
    data = args.perf / f"{name}.perf.data"
    command = ["perf", "record", "-F", "499", "-g", "-p", str(pid), "-o", str(data), "--", "sleep", f"{args.seconds:g}"]
    log = data.with_suffix(".log").open("w")
    return data, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def finish_profile(profiler):
    """Waits for `perf record` and writes its report (by library and symbol) beside the data."""
    data, process = profiler
    if process.wait() != 0 or not data.exists():
        print(f"   perf record failed (exit {process.returncode}, {data.with_suffix('.log')}); no profile", file=sys.stderr)
        return
    command = ["perf", "report", "-i", str(data), "--no-children", "-g", "none", "--sort", "dso,sym", "--stdio"]
    report = subprocess.run(command + ["--percent-limit", "0.5"], capture_output=True, text=True)
    summary = data.with_suffix(".txt")
    summary.write_text(report.stdout)
    print(f"   profile: {summary}", flush=True)


def run_agent(args, work, name, urls, both_models=False, detector=FP32, cameras_toml=None):
    """`cameras_toml`: the `[[cameras]]` tables to run, one per URL of `urls` (default: one RTSP
    camera per URL, as configured out of the box)."""
    port = free_port()
    config = agent_config(args, work, name, port, urls, both_models, detector, cameras_toml)
    env = dict(os.environ, NO_COLOR="1", RUST_LOG="info")
    agent = Process([str(args.agent), "run", "--config", str(config)], work / f"{name}.log", env)
    try:
        wait_until(f"agent {name}", 90, lambda: api(port, "/api/v1/status") is not None, agent)
        feed = EventFeed(port)

        def inferring():
            status = api(port, "/api/v1/status")
            return len(status["cameras"]) == len(urls) and all(c["frames_inferred"] > 0 for c in status["cameras"])

        wait_until(f"agent {name}: every camera inferring", 90, inferring, agent)
        time.sleep(args.warmup)
        before, cpu_before, t0 = api(port, "/api/v1/status"), cpu_seconds(agent.pid), time.time()
        parts_before = rss_by_part(agent.pid)
        profiler = start_profile(args, agent.pid, name) if args.perf and not both_models else None
        time.sleep(args.seconds)
        after, cpu_after, t1 = api(port, "/api/v1/status"), cpu_seconds(agent.pid), time.time()
        hwm = peak_rss_kib(agent.pid)
        parts = rss_by_part(agent.pid)
        if profiler:
            # perf ends its window on its own; stopping the agent first would cut it short.
            profiler[1].wait(timeout=args.seconds + 60)
    finally:
        agent.stop()
        shutil.rmtree(work / ("state-" + name), ignore_errors=True)  # outbox and evidence pictures
    if profiler:
        finish_profile(profiler)
    inferred = sum(c["frames_inferred"] for c in after["cameras"]) - sum(
        c["frames_inferred"] for c in before["cameras"]
    )
    captured = sum(c["frames_captured"] for c in after["cameras"]) - sum(
        c["frames_captured"] for c in before["cameras"]
    )

    def counted(field):
        return sum(c.get(field, 0) for c in after["cameras"]) - sum(c.get(field, 0) for c in before["cameras"])

    runs = {m: after["model_latency"][m]["count"] - before["model_latency"].get(m, {}).get("count", 0)
            for m in after["model_latency"]}  # fmt: skip
    seconds_in = {
        m: after["model_latency"][m]["sum_seconds"] - before["model_latency"].get(m, {}).get("sum_seconds", 0.0)
        for m in after["model_latency"]
    }
    inference_ms = sum(1000.0 * seconds_in[m] / runs[m] for m in runs if runs[m] > 0)
    latencies = []
    states = {}
    kept = []
    for arrived, event in list(feed.messages):
        captured_at = parse_time(event["time"])
        if t0 <= captured_at <= t1:
            latencies.append((arrived - captured_at) * 1000.0)
            states[event["state"]] = states.get(event["state"], 0) + 1
            kept.append({"camera": event["camera"], "time": event["time"], "state": event["state"],
                         "label": event["label"], "latency_ms": latencies[-1]})  # fmt: skip
    # Every message of the window, for a closer look (which frames were slow, with how many events).
    (work / f"{name}-events.json").write_text(json.dumps(kept, indent=0))
    # A frame's messages are committed together: its latency by how many it carried shows the cost
    # of each event's pictures.
    per_frame = {}
    for message in kept:
        per_frame.setdefault((message["camera"], message["time"]), []).append(message["latency_ms"])
    by_messages = {}
    for frame_latencies in per_frame.values():
        by_messages.setdefault(len(frame_latencies), []).append(max(frame_latencies))
    return {
        "contender": "agent",
        "models": ("nanodet + efficientnet_lite0" if both_models else "nanodet") + (" int8" if detector == INT8 else ""),
        "cameras": len(urls),
        "window_s": t1 - t0,
        "cpu_s": cpu_after - cpu_before,
        "frames_inferred": inferred,
        "frames_captured": captured,
        # Motion (issue 31): frames that went no further, frames replaced before inference took
        # them (only frames with motion reach that slot), frames inferred on regions.
        "frames_still": counted("frames_still"),
        "frames_dropped": counted("frames_dropped"),
        "frames_by_region": counted("frames_by_region"),
        "inference_plans": sorted({c.get("inference_plan") or "?" for c in after["cameras"]}),
        "inference_ms": inference_ms if runs and any(runs.values()) else None,
        "latencies_ms": latencies,
        "event_states": states,
        "by_messages": by_messages,
        "lagged": feed.lagged,
        "feed_error": feed.error,
        "peak_rss_kib": hwm,
        "rss_by_part": parts,
        # The same at the window's start: what grows with the window's events.
        "rss_by_part_start": parts_before,
        # What decodes, and the encoded video each camera keeps for event clips (its pre-roll).
        "decoders": sorted({c.get("decoder") or "?" for c in after["cameras"]}),
        "video_buffered_bytes": [c.get("video_buffered_bytes", 0) for c in after["cameras"]],
    }


def run_python(args, work, name, urls, detector=FP32):
    frames = work / f"{name}.jsonl"
    command = [args.python, str(REPO / "bench/camera_python.py"), "--model", str(REPO / detector)]
    for url in urls:
        command += ["--url", url]
    command += ["--frames", str(frames), "--threads", str(args.threads)]
    python = Process(command, work / f"{name}.log")

    def records():
        if not frames.exists():
            return []
        return [json.loads(line) for line in frames.read_text().splitlines() if line.endswith("}")]

    try:
        wait_until(
            f"Python pipeline {name}: every camera inferring",
            90,
            lambda: {r["camera"] for r in records()} == set(range(len(urls))),
            python,
        )
        time.sleep(args.warmup)
        cpu_before, t0 = cpu_seconds(python.pid), time.time()
        profiler = start_profile(args, python.pid, name) if args.perf else None
        time.sleep(args.seconds)
        cpu_after, t1 = cpu_seconds(python.pid), time.time()
        hwm = peak_rss_kib(python.pid)
        if profiler:
            profiler[1].wait(timeout=args.seconds + 60)
    finally:
        python.stop()
    if profiler:
        finish_profile(profiler)
    done = [r for r in records() if t0 <= r["done"] <= t1]
    latencies = [(r["done"] - r["captured"]) * 1000.0 for r in records() if r["event"] and t0 <= r["captured"] <= t1]
    return {
        "contender": "python",
        "models": "nanodet" + (" int8" if detector == INT8 else ""),
        "cameras": len(urls),
        "window_s": t1 - t0,
        "cpu_s": cpu_after - cpu_before,
        "frames_inferred": len(done),
        "inference_ms": None,
        "latencies_ms": latencies,
        "peak_rss_kib": hwm,
    }


def figures(run):
    """The reported figures of one run; None where a figure could not be measured."""
    window, inferred = run["window_s"], run["frames_inferred"]
    lat = run["latencies_ms"]
    return {
        "cores_per_camera": run["cpu_s"] / window / run["cameras"],
        "frames_per_second": inferred / window,
        "cpu_ms_per_frame": 1000.0 * run["cpu_s"] / inferred if inferred else None,
        "latency_median_ms": statistics.median(lat) if lat else None,
        "latency_p99_ms": percentile(lat, 0.99) if lat else None,
        "latency_samples": len(lat),
        "peak_rss_mb": run["peak_rss_kib"] * 1024 / 1e6,
    }


def fmt(value, digits=1, unit=""):
    return "—" if value is None else f"{value:.{digits}f}{unit}"


def verdict(ok):
    return "met" if ok else "**missed**"


def tables(args, scenarios, rss_run, int8, cpu, started, load_before, load_after):
    lines = []
    missing = []
    rows = [
        "| stream | cameras | contender | CPU cores per camera | CPU ms per inferred frame | frames inferred/s "
        "(captured/s) | frame-to-event latency median / p99 ms (samples) | inference ms per frame | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    goals = [
        "| goal | stream | cameras | figures | result | goal | |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(fps, cameras, name, run, f):
        captured = f" ({run['frames_captured'] / run['window_s']:.1f})" if "frames_captured" in run else ""
        return (
            f"| {args.height}p {fps} fps | {cameras} | {name} | {fmt(f['cores_per_camera'], 3)} | "
            f"{fmt(f['cpu_ms_per_frame'], 1)} | {fmt(f['frames_per_second'], 1)}{captured} | "
            f"{fmt(f['latency_median_ms'], 0)} / {fmt(f['latency_p99_ms'], 0)} ({f['latency_samples']}) | "
            f"{fmt(run['inference_ms'], 1)} | {fmt(f['peak_rss_mb'], 0)} |"
        )

    for (fps, cameras), (agent, python) in scenarios.items():
        a, p = figures(agent), figures(python)
        for name, run, f in (("edge-agent (ort)", agent, a), ("Python OpenCV + ORT", python, p)):
            rows.append(row(fps, cameras, name, run, f))
            for key in ("cpu_ms_per_frame", "latency_median_ms", "latency_p99_ms"):
                if f[key] is None:
                    missing.append(f"{name}, {fps} fps, {cameras} camera(s): {key}")
            if run["frames_inferred"] == 0:
                missing.append(f"{name}, {fps} fps, {cameras} camera(s): no frame inferred in the window")
        if agent["inference_ms"] is None:
            missing.append(f"agent, {fps} fps, {cameras} camera(s): inference time")
        if a["cpu_ms_per_frame"] and p["cpu_ms_per_frame"]:
            ratio = a["cpu_ms_per_frame"] / p["cpu_ms_per_frame"]
            goals.append(
                f"| CPU per inferred frame, agent ÷ Python | {fps} fps | {cameras} | "
                f"{a['cpu_ms_per_frame']:.1f} ÷ {p['cpu_ms_per_frame']:.1f} ms | {ratio:.2f} | ≤ 0.7 | {verdict(ratio <= 0.7)} |"
            )
        if cameras == 1 and fps == 10:
            cores = a["cores_per_camera"]
            goals.append(
                f"| one camera at 10 fps with the detector, agent | {fps} fps | 1 | "
                f"{a['frames_per_second']:.1f} frames/s inferred | {cores:.3f} cores | < 0.5 | {verdict(cores < 0.5)} |"
            )
        if a["latency_p99_ms"] is not None and agent["inference_ms"] is not None:
            bound = 1000.0 / fps + agent["inference_ms"]
            goals.append(
                f"| frame-to-event latency p99, agent | {fps} fps | {cameras} | "
                f"p99 {a['latency_p99_ms']:.0f} ms of {a['latency_samples']} messages; bound {1000.0 / fps:.0f} + "
                f"{agent['inference_ms']:.1f} ms | {a['latency_p99_ms']:.0f} ms | < {bound:.0f} ms | "
                f"{verdict(a['latency_p99_ms'] < bound)} |"
            )
        if agent.get("feed_error"):
            missing.append(f"agent, {fps} fps, {cameras} camera(s): the event feed broke: {agent['feed_error']}")
    decoding = ["Agent decoder and the encoded video each camera keeps in memory for event clips "
                "(`evidence.clips.pre_roll_secs` = 5, plus 5 s and up to a group of pictures):", ""]
    for (fps, cameras), (agent, _) in scenarios.items():
        held = agent.get("video_buffered_bytes") or [0]
        decoding.append(f"- {args.height}p {fps} fps, {cameras} camera(s): {', '.join(agent.get('decoders', ['?']))}; "
                        f"pre-roll {statistics.mean(held) / 1e6:.2f} MB per camera")  # fmt: skip
    by_messages = decoding + [""] + [
        "Agent: frame-to-event latency by the number of event messages decided on the same frame (they are "
        "committed together; each brings its evidence pictures): median ms (frames).",
        "",
        "| stream | cameras | 1 message | 2 | 3 | 4 or more |",
        "|---|---|---|---|---|---|",
    ]
    for (fps, cameras), (agent, _) in scenarios.items():
        cells = []
        for low, high in ((1, 1), (2, 2), (3, 3), (4, 10**6)):
            frames = [x for n, xs in agent["by_messages"].items() if low <= n <= high for x in xs]
            cells.append(f"{statistics.median(frames):.0f} ({len(frames)})" if frames else "—")
        by_messages.append(f"| {args.height}p {fps} fps | {cameras} | " + " | ".join(cells) + " |")
    r = figures(rss_run)
    rss_fps = rss_run["fps"]
    rows.append(row(rss_fps, 1, "edge-agent (ort), both models", rss_run, r))
    goals.append(
        f"| peak RSS, both models, one camera, agent | {rss_fps} fps | 1 | VmHWM {rss_run['peak_rss_kib'] / 1024:.0f} MiB "
        f"| {r['peak_rss_mb']:.0f} MB | ≤ 100 MB | {verdict(r['peak_rss_mb'] <= 100)} |"
    )
    if rss_run["frames_inferred"] == 0:
        missing.append("agent with both models: no frame inferred in the window")
    start = dict(rss_run["rss_by_part_start"])
    messages = len(rss_run["latencies_ms"])
    parts = [
        f"Agent with both models, one camera: resident memory by part at the start and the end of the "
        f"window, {messages} event messages apart (/proc/PID/smaps; peak VmHWM "
        f"{rss_run['peak_rss_kib'] / 1024:.0f} MiB):",
        "",
        "| part | MB at the start | MB at the end |",
        "|---|---|---|",
        *(f"| {part} | {start.get(part, 0.0):.1f} | {mb:.1f} |" for part, mb in rss_run["rss_by_part"] if mb >= 0.5),
        f"| total | {sum(start.values()):.1f} | {sum(mb for _, mb in rss_run['rss_by_part']):.1f} |",
    ]
    if not start or messages == 0:
        missing.append("agent with both models: memory at the window's start, or event messages in it")

    # int8: the agent with the int8 detector against the Python pipeline with the fp32 one (the goal),
    # and with the same int8 model (the same runtime on both sides).
    int8_agent, int8_python, int8_fps = int8
    i8a, i8p = figures(int8_agent), figures(int8_python)
    fp32_python = figures(scenarios[(int8_fps, 1)][1]) if (int8_fps, 1) in scenarios else None
    int8_runs = (("edge-agent (ort), int8 detector", int8_agent, i8a), ("Python OpenCV + ORT, int8 detector", int8_python, i8p))
    for name, run, f in int8_runs:
        rows.append(row(int8_fps, 1, name, run, f))
        if f["cpu_ms_per_frame"] is None:
            missing.append(f"{name}: no frame inferred in the window")
    if i8a["cpu_ms_per_frame"] and fp32_python and fp32_python["cpu_ms_per_frame"]:
        ratio = i8a["cpu_ms_per_frame"] / fp32_python["cpu_ms_per_frame"]
        goals.append(
            f"| CPU per inferred frame, agent int8 ÷ Python fp32 | {int8_fps} fps | 1 | "
            f"{i8a['cpu_ms_per_frame']:.1f} ÷ {fp32_python['cpu_ms_per_frame']:.1f} ms | {ratio:.2f} | ≤ 0.4 | {verdict(ratio <= 0.4)} |"
        )
    if i8a["cpu_ms_per_frame"] and i8p["cpu_ms_per_frame"]:
        ratio = i8a["cpu_ms_per_frame"] / i8p["cpu_ms_per_frame"]
        goals.append(
            f"| CPU per inferred frame, agent int8 ÷ Python int8 (same model) | {int8_fps} fps | 1 | "
            f"{i8a['cpu_ms_per_frame']:.1f} ÷ {i8p['cpu_ms_per_frame']:.1f} ms | {ratio:.2f} | — | |"
        )

    load = f"load average (1, 5, 15 min) before {load_before}, after {load_after}"
    versions = subprocess.run(
        [args.python, "-c", "import cv2, onnxruntime, numpy; print(cv2.__version__, onnxruntime.__version__, numpy.__version__)"],
        capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    lines += [
        f"Run {started} by `bash bench/camera.sh{' --smoke' if args.smoke else ''}` at commit "
        f"`{commit.stdout.strip() or '?'}`; agent binary `{args.agent}`.",
        f"Machine: {cpu['Model name']}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}; "
        f"{load} (a shared machine: other work may run at the same time).",
        f"Stream: bench/camera_clip.py, {args.width}×{args.height} H.264 Main profile, no B-frames, a keyframe every "
        f"2 s, {args.clip_seconds:g} s looped by bench/rtsp_bench_server.py (GStreamer RTSP server, TCP); each "
        f"contender alone, {args.warmup:g} s warm-up then {args.seconds:g} s measured. 2 inference threads, "
        f"ONNX Runtime spinning off, the same NanoDet fp32 model for both; Python: OpenCV "
        f"{versions[0] if versions else '?'}, ONNX Runtime {versions[1] if len(versions) > 1 else '?'}.",
        "",
        *rows,
        "",
        *goals,
        "",
        *by_messages,
        "",
        *parts,
        "",
        f"lscpu Model name: {cpu['Model name']}",
        "",
        f"lscpu Flags: {cpu['Flags']}",
        "",
    ]
    return "\n".join(lines), missing


INTRO = (
    "Written by `bench/camera.sh` (`bench/camera_bench.py` says how each figure is measured). "
    "Frame-to-event latency: agent, from the capture of the frame an event message was decided on to its "
    "arrival on `/api/v1/events/stream` (after the durable outbox commit); Python, from `cap.read()` to the "
    "frame's detections, for frames with a detection of the object rule's labels.\n\n"
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", type=pathlib.Path, required=True)
    parser.add_argument("--python", required=True, help="the Python with OpenCV, ONNX Runtime and numpy")
    parser.add_argument("--cache", type=pathlib.Path, required=True, help="where clips are kept between runs")
    parser.add_argument("--results", type=pathlib.Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="a few seconds, 1 camera, 10 fps, a small clip")
    parser.add_argument("--fps", type=int, action="append")
    parser.add_argument("--cameras", type=int, action="append")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--clip-seconds", type=float, default=12.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--perf", type=pathlib.Path, help="folder: `perf record` each contender in its window")
    args = parser.parse_args()
    if args.smoke:
        args.fps, args.cameras = args.fps or [10], args.cameras or [1]
        args.width, args.height, args.clip_seconds, args.warmup, args.seconds = 640, 360, 6.0, 3.0, 7.0
    args.fps = sorted(set(args.fps or [10, 25]))
    args.cameras = sorted(set(args.cameras or [1, 4]))
    if not args.agent.is_file():
        fail(f"no agent binary at {args.agent}; build it (`cargo build --release -p edge-agent`) or set EDGE_AGENT_BIN")
    args.cache.mkdir(parents=True, exist_ok=True)

    cpu = report_file.lscpu()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])
    clips = {fps: make_clip(args, fps) for fps in args.fps}
    scenarios = {}
    rss_run = None
    int8 = None
    # Logs and configs of the last run stay for a look afterwards; state folders are deleted.
    work = args.cache / "last-run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for fps in args.fps:
        server = RtspServer(clips[fps], fps, max(args.cameras), work)
        try:
            for cameras in args.cameras:
                urls = [server.url(i) for i in range(cameras)]
                name = f"{fps}fps-{cameras}cam"
                print(f"== {name}: edge-agent", flush=True)
                agent = run_agent(args, work, f"agent-{name}", urls)
                print(f"== {name}: Python OpenCV + ONNX Runtime", flush=True)
                python = run_python(args, work, f"python-{name}", urls)
                scenarios[(fps, cameras)] = (agent, python)
                for run in (agent, python):
                    f = figures(run)
                    print(
                        f"   {run['contender']}: {f['cores_per_camera']:.3f} cores/camera, "
                        f"{f['frames_per_second']:.1f} frames/s, CPU {fmt(f['cpu_ms_per_frame'])} ms/frame, "
                        f"latency {fmt(f['latency_median_ms'], 0)}/{fmt(f['latency_p99_ms'], 0)} ms "
                        f"({f['latency_samples']}), peak RSS {f['peak_rss_mb']:.0f} MB",
                        flush=True,
                    )
            if fps == args.fps[0]:
                print(f"== {fps}fps-1cam: edge-agent with both models (peak RSS)", flush=True)
                rss_run = run_agent(args, work, f"agent-both-{fps}fps", [server.url(0)], both_models=True)
                rss_run["fps"] = fps
                print(f"== {fps}fps-1cam: int8 detector ({INT8}), edge-agent and Python", flush=True)
                int8 = (
                    run_agent(args, work, f"agent-int8-{fps}fps", [server.url(0)], detector=INT8),
                    run_python(args, work, f"python-int8-{fps}fps", [server.url(0)], detector=INT8),
                    fps,
                )
        finally:
            server.process.stop()
    load_after = " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])
    body, missing = tables(args, scenarios, rss_run, int8, cpu, started, load_before, load_after)
    print(body)
    report_file.write_section(args.results, SECTION, INTRO + body, NOTES_MARKER)
    print(f"== wrote the camera section of {args.results}")
    if missing:
        fail("figures missing:\n  " + "\n  ".join(missing))


if __name__ == "__main__":
    main()
