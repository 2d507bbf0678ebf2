#!/usr/bin/env python3
"""Predicted speedups of sd, eagle and hier over AR for a big target (Llama-3-70B shape, W4A16) with
an intermediate / draft (Llama-3-8B shape), from measured parts only:

- per-forward latency of each model for N new tokens (bench --synthetic ... --curve-cache, the
  H200 verification-cost curves; linear interpolation between the measured N);
- per generated token, how many forwards of each model a method runs (target, intermediate, EAGLE
  head), measured on the real models (bench on Spec-Bench, Qwen2.5-Coder 1.5B W4A16 / 0.5B);
- the N each forward carries: the EAGLE tree's node count, the intermediate's tree size, the
  sequence the target verifies (~ the target tau), the draft length for sd.

The EAGLE head's forward is not measured at the 8B shape: --head-ms (an assumption, printed).

  time/token(method) = sum over models of forwards/token x T_model(N)
  predicted speedup  = time/token(ar) / time/token(method)

Usage: python3 scripts/predict_speedup.py --target-curve T.json --inter-curve I.json --real R.json
         [--eagle-real E.json] [--cache 512] [--json out.json]
"""
import argparse
import json
import math


def curve(path, cache):
    d = json.load(open(path))
    pts = sorted((p["n"], p["ms"]) for p in d["verify_curve"] if p["cache_len"] == cache)
    if not pts:
        raise SystemExit(f"{path}: no curve points at cache length {cache}")

    def t(n):
        for (n0, t0), (n1, t1) in zip(pts, pts[1:]):
            if n0 <= n <= n1:
                return t0 + (t1 - t0) * (n - n0) / (n1 - n0)
        return pts[-1][1] * n / pts[-1][0] if n > pts[-1][0] else pts[0][1]

    return d, t


def overall(path, method):
    for s in json.load(open(path))["summaries"]:
        if s["category"] == "overall" and s["method"] == method:
            return s
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target-curve", required=True)
    ap.add_argument("--inter-curve", required=True)
    ap.add_argument("--real", required=True, help="bench JSON with sd and hier")
    ap.add_argument("--eagle-real", help="bench JSON with eagle (default: --real)")
    ap.add_argument("--cache", type=int, default=512)
    ap.add_argument("--eagle-nodes", type=int, default=60)
    ap.add_argument("--inner-nodes", type=int, default=30)
    ap.add_argument("--draft-len", type=int, default=5)
    ap.add_argument("--head-ms", type=float, default=None, help="EAGLE head forward (default: 4/32 of the intermediate's N=1 forward)")
    ap.add_argument("--json")
    a = ap.parse_args()
    td, T = curve(a.target_curve, a.cache)
    idd, I = curve(a.inter_curve, a.cache)
    head_ms = a.head_ms if a.head_ms is not None else I(1) * 4 / 32
    ar_ms = td["ms_per_token"]
    rows = {"ar": {"ms_per_token": ar_ms, "speedup": 1.0}}
    sd, hier = overall(a.real, "sd"), overall(a.real, "hier")
    eagle = overall(a.eagle_real or a.real, "eagle")
    if sd:
        ms = sd["target_forwards_per_token"] * T(a.draft_len + 1) + sd["head_forwards_per_token"] * I(1)
        rows["sd"] = {"ms_per_token": ms, "tau": sd["tau"], "target_n": a.draft_len + 1}
    if eagle:
        ms = eagle["target_forwards_per_token"] * T(a.eagle_nodes) + eagle["head_forwards_per_token"] * head_ms
        rows["eagle"] = {"ms_per_token": ms, "tau": eagle["tau"], "target_n": a.eagle_nodes}
    if hier:
        seq = math.ceil(hier["tau"])
        ms = (hier["target_forwards_per_token"] * T(seq) + hier["intermediate_forwards_per_token"] * I(a.inner_nodes)
              + hier["head_forwards_per_token"] * head_ms)
        rows["hier"] = {"ms_per_token": ms, "tau": hier["tau"], "inner_tau": hier["inner_tau"], "target_n": seq,
                        "intermediate_n": a.inner_nodes}
    for r in rows.values():
        r["speedup"] = ar_ms / r["ms_per_token"]
        r["tok_s"] = 1e3 / r["ms_per_token"]
    print(f"target {td['shape']} ({'W4A16' if td['int4'] else 'bf16'}), intermediate {idd['shape']} ({'W4A16' if idd['int4'] else 'bf16'}), "
          f"cache {a.cache}; head forward {head_ms:.2f} ms (assumed)")
    print("| method | tau | target N | ms/token | tok/s | predicted speedup |")
    print("|---|---|---|---|---|---|")
    for m, r in rows.items():
        print(f"| {m} | {r.get('tau', 1.0):.2f} | {r.get('target_n', 1)} | {r['ms_per_token']:.1f} | {r['tok_s']:.1f} | {r['speedup']:.2f}x |")
    if a.json:
        out = {"target_curve": a.target_curve, "inter_curve": a.inter_curve, "real": a.real, "eagle_real": a.eagle_real or a.real,
               "cache": a.cache, "head_ms_assumed": head_ms, "methods": rows}
        json.dump(out, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
