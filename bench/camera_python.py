"""The camera benchmark's Python peer: a plain OpenCV (FFmpeg capture) + ONNX Runtime pipeline on the
same RTSP cameras as the agent, built the way the agent is: one capture thread per camera keeps only
its newest frame (older ones are dropped, never queued), and one inference loop takes the cameras in
turn and runs the same NanoDet model with its manifest's pre-processing (bench/python_baseline.py:
cv2.resize, normalise, NCHW, session.run with 2 threads and spinning off, NanoDet decoding in numpy,
cv2.dnn.NMSBoxesBatched).

Writes one JSON line per inferred frame to --frames: the camera, when the frame came out of the
capture (cap.read() returned: decoded, in BGR), when its detections were ready, and whether it had
a detection the agent's object rule reports (its labels at its score). The driver
(bench/camera_bench.py) measures CPU and memory from outside.

    camera_python.py --model models/nanodet.toml --url rtsp://127.0.0.1:PORT/cam0 --frames out.jsonl
"""

import argparse
import json
import os
import pathlib
import sys
import threading
import time

# FFmpeg's RTSP client over TCP, as the agent's (retina) runs; must be set before cv2 opens a URL.
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")

import cv2  # noqa: E402
import onnxruntime  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import python_baseline as baseline  # noqa: E402


class Camera:
    """One capture thread: reads every frame (H.264 needs them all) and keeps the newest."""

    def __init__(self, index, url, wake):
        self.index, self.url, self.wake = index, url, wake
        self.lock = threading.Lock()
        self.newest = None  # (frame, captured_at, sequence)
        self.taken = 0
        self.error = None
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        capture = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG)
        if not capture.isOpened():
            self.error = f"cannot open {self.url} with OpenCV's FFmpeg backend"
            self.wake.set()
            return
        sequence = 0
        while True:
            ok, frame = capture.read()  # releases the GIL while FFmpeg reads and decodes
            if not ok:
                self.error = f"{self.url}: the stream ended or broke after {sequence} frames"
                self.wake.set()
                return
            sequence += 1
            with self.lock:
                self.newest = (frame, time.time(), sequence)
            self.wake.set()

    def take(self):
        with self.lock:
            if self.newest is None or self.newest[2] == self.taken:
                return None
            self.taken = self.newest[2]
            return self.newest


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=pathlib.Path, required=True, help="the model's manifest (TOML)")
    parser.add_argument("--url", action="append", required=True, help="one per camera")
    parser.add_argument("--frames", type=pathlib.Path, required=True, help="JSON lines, one per inferred frame")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--labels", default="truck,car,bus,motorcycle,bicycle,bottle,cup", help="the rule's labels")
    parser.add_argument("--min-score", type=float, default=0.3)
    args = parser.parse_args()

    manifest = baseline.load_manifest(args.model, named=True)
    if manifest is None or manifest.get("task") != "detect":
        sys.exit(f"{args.model}: expected a detector's model manifest (name, file, sha256, input, labels, task = detect)")
    labels = (manifest["folder"] / manifest["labels"]).read_text().splitlines()
    wanted = {i for i, label in enumerate(labels) if label in set(args.labels.split(","))}
    cv2.setNumThreads(args.threads)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(
        str(manifest["folder"] / manifest["file"]), options, providers=["CPUExecutionProvider"]
    )
    input_name = manifest["input"]["name"]

    wake = threading.Event()
    cameras = [Camera(i, url, wake) for i, url in enumerate(args.url)]
    out = args.frames.open("w", buffering=1)
    next_camera = 0
    while True:
        taken = None
        for step in range(len(cameras)):
            camera = cameras[(next_camera + step) % len(cameras)]
            if camera.error:
                sys.exit(camera.error)
            taken = camera.take()
            if taken:
                break
        if not taken:
            wake.wait(1.0)
            wake.clear()
            continue
        next_camera = (camera.index + 1) % len(cameras)
        frame, captured_at, sequence = taken
        outputs = session.run(None, {input_name: baseline.preprocess(frame, manifest["input"])})
        found = baseline.decode_nanodet(outputs, manifest, frame.shape[1], frame.shape[0])
        done_at = time.time()
        event = any(class_id in wanted and score >= args.min_score for class_id, score, _ in found)
        out.write(
            json.dumps(
                {"camera": camera.index, "sequence": sequence, "captured": captured_at, "done": done_at, "event": event}
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
