"""Merge bench-kernels JSON with the PyTorch peers' JSON into docs/perf/int4-matmul.json's layout
and print the markdown table. python3 scripts/merge_int4_table.py ours.json torch.json out.json"""
import json
import sys

ours, peers, out = (json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3])
peer = {(r["shape"], r["m"]): r for r in peers["records"]}
recs = []
for r in ours["records"]:
    p = peer.get((r["shape"], r["m"]), {})
    recs.append({**r, "cublas_bf16_us": p.get("cublas_bf16_us"), "torch_int4_us": p.get("torch_int4_us")})
doc = {"device": "NVIDIA H200 (" + ours["device"] + ")", "revision": ours["revision"], "date": ours["date"],
       "copy_gbps": ours["copy_gbps"], "group": ours["group"], "dtype": ours["dtype"], "torch": peers.get("torch"),
       "records": recs}
json.dump(doc, open(out, "w"), indent=1)
f = lambda v: "-" if v is None else f"{v:.1f}"
print(f"copy bandwidth {ours['copy_gbps']:.0f} GB/s; int4 group {ours['group']}, activations {ours['dtype']}")
print("| shape | M | int4 us | of copy bw | dense kernel us | burn matmul us | cuBLAS bf16 us | torch int4 us |")
print("|---|---|---|---|---|---|---|---|")
for r in recs:
    print(f"| {r['shape']} | {r['m']} | {r['us']:.1f} | {100*r['bw_fraction']:.0f}% | {r['dense_us']:.1f} | {f(r['bf16_us'])} | {f(r['cublas_bf16_us'])} | {f(r['torch_int4_us'])} |")
