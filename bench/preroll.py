#!/usr/bin/python3
"""Memory a camera's event-clip pre-roll takes (issue 18): the camera benchmark's 1080p clip served
by bench/rtsp_bench_server.py at 10 frames/s, read by the agent through GStreamer with the default
`[evidence.clips]` (5 s pre-roll), its `video_buffered_bytes` read from the status API every second
for --seconds; prints the median and the largest, and the clip's bit rate to compare with.

    /usr/bin/python3 bench/preroll.py --agent target/debug/edge-agent --clip clip.mp4 [--seconds 40]

The agent needs the `gstreamer` feature. Nothing is written to bench/RESULTS.md: copy the line.
"""

import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/status", timeout=2) as reply:
            return json.load(reply)
    except OSError:
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", required=True)
    parser.add_argument("--clip", type=pathlib.Path, required=True)
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args()

    work = pathlib.Path(tempfile.mkdtemp(prefix="preroll-"))
    rtsp_port, web_port = free_port(), free_port()
    server = subprocess.Popen(
        ["/usr/bin/python3", str(REPO / "bench/rtsp_bench_server.py"), "--port", str(rtsp_port),
         "--file", str(args.clip), "--fps", str(args.fps), "--cameras", "1"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    agent = None
    try:
        if server.stdout.readline().strip() != "ready":
            sys.exit("the RTSP server did not start")
        config = work / "agent.toml"
        config.write_text(
            f'device_id = "preroll"\nstate_dir = "{work / "state"}"\n[web]\nlisten = "127.0.0.1:{web_port}"\n'
            f'[[cameras]]\nid = "cam0"\nsource = {{ kind = "rtsp", url = "rtsp://127.0.0.1:{rtsp_port}/cam0", '
            f'decoder = "gstreamer" }}\n'
            f'[[models]]\nmanifest = "{REPO / "models/nanodet.toml"}"\n'
        )
        log = open(work / "agent.log", "w")
        agent = subprocess.Popen([args.agent, "run", "--config", str(config)], stdout=log, stderr=log,
                                 env=dict(os.environ, NO_COLOR="1"))  # fmt: skip
        samples, decoder = [], None
        deadline = time.time() + 60 + args.seconds
        started = None
        while time.time() < deadline:
            time.sleep(1)
            answer = status(web_port)
            camera = (answer or {}).get("cameras", [{}])[0]
            held = camera.get("video_buffered_bytes", 0)
            if held and started is None:
                started = time.time()
            if started is not None:
                decoder = camera.get("decoder")
                # The first 10 s fill the pre-roll (5 s plus the 5 s of slack).
                if time.time() - started > 12:
                    samples.append(held)
                if time.time() - started > 12 + args.seconds:
                    break
        if not samples:
            sys.exit(f"no video held by the camera; log in {work / 'agent.log'}")
        bits = args.clip.stat().st_size * 8
        frames = int(subprocess.run(
            ["ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0", "-show_entries",
             "stream=nb_read_packets", "-of", "csv=p=0", str(args.clip)],
            capture_output=True, text=True, check=True,
        ).stdout.strip())  # fmt: skip
        rate = bits / (frames / args.fps)
        print(
            f"pre-roll held per camera ({decoder}): median {statistics.median(samples) / 1e6:.2f} MB, "
            f"largest {max(samples) / 1e6:.2f} MB over {len(samples)} s; the stream is {rate / 1e6:.2f} Mbit/s "
            f"({rate / 8 * 10 / 1e6:.2f} MB in 10 s)"
        )
    finally:
        if agent:
            agent.terminate()
            agent.wait(timeout=30)
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
