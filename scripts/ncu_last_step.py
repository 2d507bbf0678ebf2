#!/usr/bin/env python3
"""Device time per kernel of the last decode step in an ncu csv of a synthetic AR run
(`profile.sh <rev> ar`): the launches after the second-to-last argmax up to the last one; with
--all <label>, of every launch in the run (what profile.sh prints).
Usage: python3 scripts/ncu_last_step.py <ncu.csv | ncu.csv.xz> [--all <label>]"""
import collections, csv, lzma, sys

path = sys.argv[1]
text = (lzma.open(path, "rt") if path.endswith(".xz") else open(path)).read().splitlines()
to_us = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}
rows = [(r["Kernel Name"].split("(")[0], float(r["Metric Value"].replace(",", "")) * to_us[r["Metric Unit"].strip()])
        for r in csv.DictReader(l for l in text if l.startswith('"')) if "gpu__time_duration" in r.get("Metric Name", "")]

def tally(launches):
    total, count = collections.defaultdict(float), collections.Counter()
    for name, us in launches:
        total[name] += us
        count[name] += 1
    return sorted(total.items(), key=lambda kv: -kv[1]), count


if len(sys.argv) > 3 and sys.argv[2] == "--all":
    table, count = tally((name[:60], us) for name, us in rows)
    print(f"## {sys.argv[3]}: {len(rows)} launches, {sum(us for _, us in table):.0f} us device time in all")
    print("| kernel | launches | total us | us per launch |\n|---|---|---|---|")
    for name, us in table:
        print(f"| {name} | {count[name]} | {us:.0f} | {us / count[name]:.2f} |")
    sys.exit(0)
# A step ends with its argmax: the merge launch where argmax runs in two (chunks, then merge).
last = "argmax_merge" if any(name.startswith("argmax_merge") for name, _ in rows) else "argmax"
marks = [i for i, (name, _) in enumerate(rows) if name.startswith(last)]
if len(marks) < 2:
    sys.exit(f"{path}: fewer than two argmax launches, no whole decode step")
step = rows[marks[-2] + 1 : marks[-1] + 1]
table, count = tally(step)
print(f"last decode step: {len(step)} launches, {sum(us for _, us in table):.0f} us device time")
print("| kernel | launches | us per launch | us per step |\n|---|---|---|---|")
for name, us in table:
    print(f"| {name} | {count[name]} | {us / count[name]:.1f} | {us:.0f} |")
