"""The plate stage in the flow (issue 28): what reading plates adds to a running agent.

The agent runs on a replay camera that watches vehicles of ../shared/lpr drive through a site exit
(each scene picture moving across a grey road), four times in one run: ort and tract, plates off and
on. Figures: the agent's peak and final RSS with plates off and on (the goal: it grows by <= 40 MB
with plates on), the CPU it used, and the plates its `truck_exit` events carry (read from its own
API): right against labels.csv, and the same texts on ort and tract (the goal). `lscpu` recorded.
Writes the "Licence plates in the flow" section of bench/RESULTS.md (--results), or checks that the
run worked (--smoke). Standard library and PIL (the bench Python environment) only.

    python3 bench/plates_flow.py --agent BIN --lpr ../shared/lpr [--vehicles 8] [--results bench/RESULTS.md]
"""

import argparse
import csv
import datetime
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import lscpu  # noqa: E402

SECTION = "## Licence plates in the flow (issue 28)"
REPO = pathlib.Path(__file__).resolve().parent.parent
ROAD = (1280, 720)
STEPS, GAP = 10, 5
GOAL_GROWTH_MB = 40


def vehicles(lpr, count):
    """Scene pictures with one single-row plate, spread over the set: (file, plate text)."""
    rows = list(csv.DictReader(open(lpr / "labels.csv", encoding="utf-8")))
    per_file = {}
    for r in rows:
        if r["kind"] == "scene":
            per_file.setdefault(r["file"], []).append(r)
    single = [(f, rs[0]["plate_text"]) for f, rs in per_file.items() if len(rs) == 1 and rs[0]["rows"] == "1"]
    step = max(1, len(single) // count)
    return single[::step][:count]


def drive_through(folder, lpr, picked):
    """Each vehicle picture crossing the road in STEPS frames (at most 620 pixels tall), then GAP
    frames of the empty road."""
    folder.mkdir(parents=True)
    road = Image.new("RGB", ROAD, (96, 96, 96))
    n = 0
    for file, _ in picked:
        picture = Image.open(lpr / "images" / file).convert("RGB")
        scale = min(1.0, 620 / picture.height, 900 / picture.width)
        picture = picture.resize((int(picture.width * scale), int(picture.height * scale)), Image.BILINEAR)
        travel = ROAD[0] - picture.width
        for step in range(STEPS):
            frame = road.copy()
            frame.paste(picture, (travel * step // (STEPS - 1), ROAD[1] - picture.height - 20))
            frame.save(folder / f"{n:05d}.png")
            n += 1
        for _ in range(GAP):
            road.save(folder / f"{n:05d}.png")
            n += 1
    return n


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(work, backend, plates_on, lpr, port, fps):
    state = work / f"state-{backend}-{'on' if plates_on else 'off'}"
    text = f"""device_id = "plate-bench"
state_dir = "{state}"

[web]
listen = "127.0.0.1:{port}"

[mqtt]
url = "mqtt://127.0.0.1:{free_port()}"

[inference]
backend = "{backend}"
intra_op_threads = 1

[[cameras]]
id = "gate"
source = {{ kind = "replay", path = "{work / 'frames'}", fps = {fps}, looping = false }}

[[models]]
manifest = "{REPO / 'models' / 'nanodet.toml'}"

[[scenes.gate.zones]]
id = "exit"
role = "site_exit"
polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]

[rules.truck_exit]
labels = ["car", "truck", "bus"]

[plates]
enabled = {'true' if plates_on else 'false'}
models = "{lpr / 'models'}"
labels = ["car", "truck", "bus"]
"""
    path = work / f"agent-{backend}-{'on' if plates_on else 'off'}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def status_kib(pid, key):
    for line in open(f"/proc/{pid}/status", encoding="utf-8"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def cpu_secs(pid):
    fields = open(f"/proc/{pid}/stat", encoding="utf-8").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def exits(port):
    """The plates of the truck_exit events, oldest first (None for an event without one)."""
    url = f"http://127.0.0.1:{port}/api/v1/events?kind=truck_exit&limit=200"
    with urllib.request.urlopen(url, timeout=10) as reply:
        listed = json.load(reply)["events"]
    events = sorted((e["event"] for e in listed), key=lambda e: e["start_time"])
    return [(e.get("plate") or {}).get("text") for e in events]


def run(agent, cfg, port, seconds, log):
    """Runs the agent over the replay; its figures just before it is stopped."""
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen([agent, "run", "--config", str(cfg)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "RUST_LOG": "warn,edge_agent=info"})
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"the agent exited: {pathlib.Path(log).read_text()[-3000:]}")
                time.sleep(0.5)
        time.sleep(seconds)
        figures = {
            "peak_kib": status_kib(proc.pid, "VmHWM"),
            "rss_kib": status_kib(proc.pid, "VmRSS"),
            "cpu_s": cpu_secs(proc.pid),
            "plates": exits(port),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return figures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agent", required=True)
    ap.add_argument("--lpr", required=True)
    ap.add_argument("--vehicles", type=int, default=8)
    ap.add_argument("--fps", type=float, default=2.0)
    ap.add_argument("--build", default="release")
    ap.add_argument("--smoke", action="store_true", help="check that it runs; write nothing")
    ap.add_argument("--results", help="RESULTS.md to write the section into")
    a = ap.parse_args()
    lpr = pathlib.Path(a.lpr).resolve()
    picked = vehicles(lpr, a.vehicles)
    work = pathlib.Path(tempfile.mkdtemp(prefix="plates-flow-"))
    try:
        frames = drive_through(work / "frames", lpr, picked)
        seconds = frames / a.fps + 12
        load_before = open("/proc/loadavg").read().split()[:3]
        figures = {}
        for backend in ("ort", "tract"):
            for plates_on in (False, True):
                port = free_port()
                cfg = config(work, backend, plates_on, lpr, port, a.fps)
                name = f"{backend} plates {'on' if plates_on else 'off'}"
                print(f"== {name}: {frames} frames at {a.fps} a second", flush=True)
                figures[(backend, plates_on)] = run(a.agent, cfg, port, seconds, work / f"{name}.log")
                print(f"   {figures[(backend, plates_on)]}", flush=True)
        load_after = open("/proc/loadavg").read().split()[:3]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    truth = [text for _, text in picked]
    growth = {b: (figures[(b, True)]["peak_kib"] - figures[(b, False)]["peak_kib"]) / 1024 for b in ("ort", "tract")}
    settled = {b: (figures[(b, True)]["rss_kib"] - figures[(b, False)]["rss_kib"]) / 1024 for b in ("ort", "tract")}
    read = {b: [p for p in figures[(b, True)]["plates"] if p] for b in ("ort", "tract")}
    right = {b: sum(1 for t in truth if t in read[b]) for b in ("ort", "tract")}
    same = read["ort"] == read["tract"]
    never_off = all(not any(figures[(b, False)]["plates"]) for b in ("ort", "tract"))
    if a.smoke:
        problems = []
        if not never_off:
            problems.append("plates off, yet an event carries one")
        if not any(read.values()):
            problems.append("plates on, and no event carries one")
        if problems:
            raise SystemExit("plates in the flow: " + "; ".join(problems) + f": {figures}")
        print(f"== smoke run complete: {figures}")
        return

    cpu = lscpu()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mb = lambda kib: f"{kib / 1024:.0f} MB"
    rows = []
    for b in ("ort", "tract"):
        off, on = figures[(b, False)], figures[(b, True)]
        rows.append(f"| {b} | {mb(off['peak_kib'])} | {mb(on['peak_kib'])} | {growth[b]:+.0f} MB | "
                    f"{mb(off['rss_kib'])} | {mb(on['rss_kib'])} | {settled[b]:+.0f} MB | "
                    f"{off['cpu_s']:.1f} s | {on['cpu_s']:.1f} s ({on['cpu_s'] / max(off['cpu_s'], 0.01):.2f}×) | "
                    f"{right[b]} of {len(truth)} | {len(off['plates'])} / {len(on['plates'])} |")
    met = lambda ok: "met" if ok else "**missed**"
    worst = max(max(growth.values()), max(settled.values()))
    section = f"""{SECTION}

Written by `bash bench/plates_flow.sh` on {now}: `edge-agent run` ({a.build} build, one inference thread)
on a replay camera at {a.fps:g} frames/s watching {len(truth)} vehicles of `../shared/lpr` (scene pictures
with one single-row plate, spread over the set) cross a site exit, {STEPS} frames each
and {GAP} of empty road; nanodet finds them; `[plates]` reads cars, trucks and buses in the exit and
`truck_exit` reports each. Peak RSS is the process's `VmHWM`, final RSS its `VmRSS`, both read just
before it is stopped ({frames / a.fps + 12:.0f} s after its page answered); CPU is user + system over the run.
Machine: {cpu['Model name']}, {os.cpu_count()} logical cores, load average before / after
{' '.join(load_before)} / {' '.join(load_after)}.

| backend | peak RSS, plates off | peak RSS, plates on | growth | final RSS off | final RSS on | growth | CPU off | CPU on | vehicles with the right plate | truck_exit events off / on |
|---|---|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + f"""

- Memory added by plates: at most {worst:+.0f} MB (goal ≤ {GOAL_GROWTH_MB} MB: {met(worst <= GOAL_GROWTH_MB)}).
- tract and ort give the same plates in the flow: {'yes' if same else '**no**'} (ort: {', '.join(read['ort']) or 'none'};
  tract: {', '.join(read['tract']) or 'none'}).
- The plates on the labels: {', '.join(truth)}. With plates off no event carries one: {'yes' if never_off else '**no**'}.
- The vehicles jump {ROAD[0] // STEPS}–{ROAD[0] // (STEPS - 1)} pixels a frame at most (a picture crossing the road in {STEPS}
  frames), so some tracks break and a vehicle is more than one `truck_exit` event (the last column);
  a vehicle whose plate no event carries was not read 3 times alike (`plates.min_reads`) on one track.

lscpu Flags: {cpu['Flags']}
"""
    if a.results:
        path = pathlib.Path(a.results)
        text = path.read_text(encoding="utf-8")
        pattern = re.compile(re.escape(SECTION) + r"\n.*?(?=\n## |\Z)", re.S)
        text = pattern.sub(lambda _: section.rstrip() + "\n", text) if pattern.search(text) \
            else text.rstrip() + "\n\n" + section
        path.write_text(text, encoding="utf-8")
    print(section)


if __name__ == "__main__":
    main()
