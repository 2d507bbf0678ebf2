#!/usr/bin/env python3
"""Device time per kernel of the last decode step in an ncu csv of a synthetic AR run
(`profile.sh <rev> ar`): the launches after the second-to-last argmax up to the last one.
Usage: python3 scripts/ncu_last_step.py <ncu.csv | ncu.csv.xz>"""
import collections, csv, lzma, sys

path = sys.argv[1]
text = (lzma.open(path, "rt") if path.endswith(".xz") else open(path)).read().splitlines()
to_us = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}
rows = [(r["Kernel Name"].split("(")[0], float(r["Metric Value"].replace(",", "")) * to_us[r["Metric Unit"].strip()])
        for r in csv.DictReader(l for l in text if l.startswith('"')) if "gpu__time_duration" in r.get("Metric Name", "")]
marks = [i for i, (name, _) in enumerate(rows) if name.startswith("argmax")]
if len(marks) < 2:
    sys.exit(f"{path}: fewer than two argmax launches, no whole decode step")
step = rows[marks[-2] + 1 : marks[-1] + 1]
total, count = collections.defaultdict(float), collections.Counter()
for name, us in step:
    total[name] += us
    count[name] += 1
print(f"last decode step: {len(step)} launches, {sum(total.values()):.0f} us device time")
print("| kernel | launches | us per launch | us per step |\n|---|---|---|---|")
for name, us in sorted(total.items(), key=lambda kv: -kv[1]):
    print(f"| {name} | {count[name]} | {us / count[name]:.1f} | {us:.0f} |")
