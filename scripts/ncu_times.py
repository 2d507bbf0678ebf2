"""Device times of bench-kernels' products from an ncu CSV, merged with the wall-clock run and the
PyTorch peers into docs/perf/int4-matmul.json's layout, plus a markdown table.

  ncu --clock-control none --cache-control all --metrics gpu__time_duration.sum --csv --log-file ncu.csv \\
      bench-kernels --launches 3 ...        # every product kernel from cold caches, 3 launches each
  python3 scripts/ncu_times.py ncu.csv wall.json torch.json out.json > table.md

bench-kernels measures, per (shape, M) in order: the int4 product (tensor cores), the scalar int4
kernel, the dense product (tensor cores), the scalar dense kernel; each kind's launches are matched to
records in that order and their median is taken.
"""
import csv
import json
import statistics
import sys

ncu_csv, wall_json, torch_json, out_json = sys.argv[1:5]
KINDS = {"int4_mma_kernel": "us", "int4_kernel": "scalar_us", "dense_mma_kernel": "dense_us", "dense_kernel": "dense_scalar_us"}

rows = []
with open(ncu_csv) as f:
    lines = [l for l in f if l.startswith('"')]  # ncu's own log lines are not quoted
to_us = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}
for r in csv.DictReader(lines):
    if "gpu__time_duration" not in r.get("Metric Name", ""):
        continue
    rows.append((r["Kernel Name"], float(r["Metric Value"].replace(",", "")) * to_us[r["Metric Unit"].strip()]))


def kind(name):
    """cubecl names entry points `<fn>_f_<dtype>`; pack kernels are not products."""
    base = name.split("(")[0].strip()
    for k in sorted(KINDS, key=len, reverse=True):
        if base == k or base.startswith(k + "_f_"):
            return k
    return None


print("kernel names seen:", sorted({n.split("(")[0] for n, _ in rows}), file=sys.stderr)
per_kind = {k: [] for k in KINDS}
for name, v in rows:
    k = kind(name)
    if k:
        per_kind[k].append(v)

wall = json.load(open(wall_json))
peers = {(r["shape"], r["m"]): r for r in json.load(open(torch_json))["records"]}
recs = wall["records"]
launches = max(1, len(per_kind["int4_mma_kernel"]) // max(1, len(recs)))
copy = wall["copy_gbps"]
out = []
for i, r in enumerate(recs):
    d = {}
    for k, field in KINDS.items():
        vals = per_kind[k][i * launches:(i + 1) * launches]
        d[field] = statistics.median(vals) if vals else None
    m, n, k_ = r["m"], r["n"], r["k"]
    act = 2
    io = (m * k_ + m * n) * act
    int4_bytes = k_ * n // 2 + (k_ // wall["group"]) * n * 2 * act
    rec = {"shape": r["shape"], "m": m, "n": n, "k": k_}
    rec["us"] = d["us"]
    rec["gbps"] = (int4_bytes + io) / (d["us"] * 1e-6) / 1e9 if d["us"] else None
    rec["bw_fraction"] = rec["gbps"] / copy if rec["gbps"] else None
    rec["bf16_us"] = r.get("bf16_us")
    rec["scalar_us"] = d["scalar_us"]
    rec["dense_us"] = d["dense_us"]
    rec["dense_bw_fraction"] = (k_ * n * act + io) / (d["dense_us"] * 1e-6) / 1e9 / copy if d["dense_us"] else None
    rec["dense_scalar_us"] = d["dense_scalar_us"]
    rec["wall_us"] = r["us"]
    rec["dense_wall_us"] = r["dense_us"]
    p = peers.get((r["shape"], m), {})
    rec["cublas_bf16_us"] = p.get("cublas_bf16_us")
    rec["torch_int4_us"] = p.get("torch_int4_us")
    out.append(rec)

doc = {"device": "NVIDIA H200", "revision": wall["revision"], "date": wall["date"], "copy_gbps": copy,
       "group": wall["group"], "dtype": wall["dtype"], "timing": "ours: ncu gpu__time_duration, cache-control all, median of "
       f"{launches} launches; torch: CUDA events over weight copies exceeding the L2; wall_us: host wall clock per call",
       "records": out}
json.dump(doc, open(out_json, "w"), indent=1)
f = lambda v, p=1: "-" if v is None else f"{v:.{p}f}"
print(f"copy bandwidth {copy:.0f} GB/s; int4 group {wall['group']}, activations {wall['dtype']}; device times in us")
print("| shape | M | int4 (tensor cores) | of copy bw | scalar int4 | torch int4 | dense (tensor cores) | dense of bw | scalar dense | cuBLAS bf16 | burn matmul (wall) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in out:
    print(f"| {r['shape']} | {r['m']} | {f(r['us'])} | {f(100*r['bw_fraction'] if r['bw_fraction'] else None, 0)}% | {f(r['scalar_us'])} | "
          f"{f(r['torch_int4_us'])} | {f(r['dense_us'])} | {f(100*r['dense_bw_fraction'] if r['dense_bw_fraction'] else None, 0)}% | "
          f"{f(r['dense_scalar_us'])} | {f(r['cublas_bf16_us'])} | {f(r['bf16_us'])} |")
