"""Turns one run of bench/plates.sh into the "Licence plates" section of bench/RESULTS.md.

Standard library only. The goals are the plate issue's (28): scenes >= 95 % whole plates right,
yellow single-row >= 96 %, double-row >= 3 of 4, crops >= 93 %, time per plate <= the reference's
in the same run, tract and ort the same texts. Accuracy is the same every round; times are the best
(lowest) of the rounds for every contender alike, since other work on a shared machine only ever
makes a round slower.
"""

import argparse
import csv
import datetime
import json
import os
import pathlib
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import lscpu  # noqa: E402

SECTION = "## Licence plates (issue 28)"


def reference_figures(results):
    """Accuracy and times of one evaluate.py run (its results/ folder)."""
    results = pathlib.Path(results)
    crops = list(csv.DictReader(open(results / "crops.csv", encoding="utf-8")))
    scenes = list(csv.DictReader(open(results / "scenes.csv", encoding="utf-8")))
    summary = (results / "summary.md").read_text(encoding="utf-8")
    figures = {"crops": tally(crops, lambda r: True)}
    times = re.findall(r"Time per picture .*?mean (\d+) ms, median (\d+) ms; per detected plate (\d+) ms", summary)
    for size, (mean, _median, per_plate) in zip((320, 640), times):
        rows = [r for r in scenes if r["det_size"] == str(size)]
        figures[size] = {
            "all": tally(rows, lambda r: True),
            "yellow1": tally(rows, lambda r: r["colour"] == "yellow" and r["rows"] == "1"),
            "rows2": tally(rows, lambda r: r["rows"] == "2"),
            "blue": tally(rows, lambda r: r["colour"] == "blue"),
            "ms_per_plate": float(per_plate),
            "ms_per_picture": float(mean),
            "texts": {(r["file"], r["gt"]): r["all_preds"] for r in rows},
        }
    return figures


def tally(rows, keep):
    kept = [r for r in rows if keep(r)]
    return (sum(int(r["exact"]) for r in kept), len(kept))


def agent_figures(path):
    data = json.load(open(path, encoding="utf-8"))
    report = data["report"]
    scenes = report["tallies"].get("scenes", {})
    crops = report["tallies"].get("crops", {})
    pick = lambda t, key: (t[key]["exact"], t[key]["plates"]) if key in t else (0, 0)
    timing = report["timing"].get("scenes", {})
    return {
        "backend": data["backend"],
        "all": pick(scenes, "all"),
        "yellow1": pick(scenes, "yellow rows=1"),
        "rows2": pick(scenes, "rows=2"),
        "blue": pick(scenes, "colour=blue"),
        "crops": pick(crops, "all"),
        "crops_yellow": pick(crops, "colour=yellow"),
        "ms_per_plate": timing.get("ms_per_plate", 0.0),
        "ms_per_picture": timing.get("ms_per_picture", 0.0),
        "texts": [(o["file"], o["label"], tuple(o["read"])) for o in report["outcomes"]],
        "models": data["models"],
    }


def share(pair):
    right, n = pair
    return f"{100 * right / n:.1f} % ({right}/{n})" if n else "-"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", action="append", required=True,
                    help="RESULTS_DIR,PEAK_RSS_KIB per round (evaluate.py's results/ folder)")
    ap.add_argument("--agent", action="append", required=True, help="BACKEND,DETECTOR,JSON,PEAK_RSS_KIB per run")
    ap.add_argument("--load", default="?")
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--build", default="release", help="the agent binary's build profile, as said in the text")
    ap.add_argument("--results", help="RESULTS.md to write the section into")
    ap.add_argument("--check", action="store_true", help="only check that every figure is there (smoke run)")
    a = ap.parse_args()

    references = []
    for spec in a.reference:
        path, rss = spec.rsplit(",", 1)
        figures = reference_figures(path)
        figures["rss_kib"] = int(rss) if rss.strip().isdigit() else 0
        references.append(figures)
    ref = references[0]
    ref["rss_kib"] = max(r["rss_kib"] for r in references)
    agents = {}
    for spec in a.agent:
        backend, detector, path, rss = spec.split(",", 3)
        figures = agent_figures(path)
        figures["rss_kib"] = int(rss) if rss.strip().isdigit() else 0
        key = (backend, int(detector))
        if key in agents:
            for field in ("ms_per_plate", "ms_per_picture"):
                agents[key][field] = min(agents[key][field], figures[field])
            agents[key]["rss_kib"] = max(agents[key]["rss_kib"], figures["rss_kib"])
        else:
            agents[key] = figures
    for size in (320, 640):
        if size not in ref:
            sys.exit(f"the reference's summary has no times for the {size} detector")
        for field in ("ms_per_plate", "ms_per_picture"):
            ref[size][field] = min(r[size][field] for r in references)
    missing = [k for k in [(b, d) for b in ("ort", "tract") for d in (320, 640)] if k not in agents]
    if missing:
        sys.exit(f"no agent run for {missing}")
    for key, f in agents.items():
        if f["all"][1] == 0 or f["crops"][1] == 0 or f["ms_per_plate"] <= 0:
            sys.exit(f"the agent run {key} has no scene or crop figures")
    same_texts = {d: agents[("ort", d)]["texts"] == agents[("tract", d)]["texts"] for d in (320, 640)}
    if a.check:
        print("plate benchmark figures:")
        for (backend, d), f in sorted(agents.items()):
            ratio = f["ms_per_plate"] / ref[d]["ms_per_plate"] if ref[d]["ms_per_plate"] else float("nan")
            print(f"  {backend} {d}: scenes {share(f['all'])}, crops {share(f['crops'])}, "
                  f"{f['ms_per_plate']:.1f} ms per plate ({ratio:.2f}x the reference)")
        print(f"  reference: scenes 320 {share(ref[320]['all'])}, 640 {share(ref[640]['all'])}, crops {share(ref['crops'])}")
        print(f"  tract and ort give the same texts: {same_texts}")
        return

    cpu = lscpu()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = []

    def line(name, ref_value, agent_value, goal):
        cells = [name]
        for d in (320, 640):
            cells += [ref_value(ref, d), agent_value(agents[("ort", d)]), agent_value(agents[("tract", d)])]
        rows.append("| " + " | ".join(cells + [goal]) + " |")

    line("scenes, whole plates right", lambda r, d: share(r[d]["all"]), lambda f: share(f["all"]), "≥ 95 %")
    line("scenes, yellow single-row", lambda r, d: share(r[d]["yellow1"]), lambda f: share(f["yellow1"]), "≥ 96 %")
    line("scenes, double-row", lambda r, d: f"{r[d]['rows2'][0]} of {r[d]['rows2'][1]}",
         lambda f: f"{f['rows2'][0]} of {f['rows2'][1]}", "≥ 3 of 4")
    line("scenes, blue", lambda r, d: share(r[d]["blue"]), lambda f: share(f["blue"]), "")
    line("crops, whole plates right", lambda r, d: share(r["crops"]), lambda f: share(f["crops"]), "≥ 93 %")
    line("time per plate (scenes)", lambda r, d: f"{r[d]['ms_per_plate']:.0f} ms",
         lambda f: f"{f['ms_per_plate']:.0f} ms", "")
    ratio = lambda backend, d: f"{agents[(backend, d)]['ms_per_plate'] / ref[d]['ms_per_plate']:.2f}"
    cells = ["time per plate ÷ the reference's"]
    for d in (320, 640):
        cells += ["", ratio("ort", d), ratio("tract", d)]
    rows.append("| " + " | ".join(cells + ["≤ 1"]) + " |")
    line("time per picture (scenes)", lambda r, d: f"{r[d]['ms_per_picture']:.0f} ms",
         lambda f: f"{f['ms_per_picture']:.0f} ms", "")
    line("peak RSS of the process", lambda r, d: f"{r['rss_kib'] / 1024:.0f} MB",
         lambda f: f"{f['rss_kib'] / 1024:.0f} MB", "")

    subset = "the whole set" if a.every == 1 else f"every {a.every}th picture (`BENCH_EVERY={a.every}`)"
    section = f"""{SECTION}

Written by `bash bench/plates.sh` on {now}: {subset} of `../shared/lpr`, the dev half ({ref[320]['all'][1]}
plates in scenes, {ref['crops'][1]} crops here), {len(references)} round(s), one thread for every contender (ONNX Runtime intra-op
threads = 1; tract single-threaded), times the best of the rounds. The reference is
`../shared/lpr/reference/evaluate.py` (Python, ONNX Runtime, OpenCV); the agent is `edge-agent plates
eval` ({a.build} build). Machine: {cpu['Model name']}, {os.cpu_count()} logical cores, load average
before / after {a.load}.

| figure | reference 320 | agent 320 ort | agent 320 tract | reference 640 | agent 640 ort | agent 640 tract | goal |
|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + f"""

tract and ort give the same texts on every picture: 320 {'yes' if same_texts[320] else 'NO'}, 640
{'yes' if same_texts[640] else 'NO'}. The reference reads crops directly (its crop figure does not
depend on the detector); the agent reads a crop through the 320 detector inside a black border, so its
crop time is not comparable and is not shown. The reference's peak RSS is that of one process running
both detectors and the crops, the agent's that of one `plates eval` run. Time per plate is evaluate.py's figure: per picture,
the time to read it (decoding excluded) over the plates found, averaged over the pictures.

lscpu Flags: {cpu['Flags']}
"""
    if a.results:
        path = pathlib.Path(a.results)
        text = path.read_text(encoding="utf-8")
        pattern = re.compile(r"## Licence plates \(issue 28\)\n.*?(?=\n## |\Z)", re.S)
        text = pattern.sub(lambda _: section.rstrip() + "\n", text) if pattern.search(text) \
            else text.rstrip() + "\n\n" + section
        path.write_text(text, encoding="utf-8")
    else:
        print(section)


if __name__ == "__main__":
    main()
