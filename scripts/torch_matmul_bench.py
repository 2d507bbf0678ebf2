"""PyTorch peers for bench-kernels, same shapes and M on the same GPU: cuBLAS bf16 (torch.matmul)
and PyTorch's own int4 kernel (torch._weight_int4pack_mm, group 128, the "tinygemm" kernel).
Median of many CUDA-event-timed batches after warm-up. Each batch cycles through enough copies of
the weights to exceed the 60 MB L2 (so every call reads its weights from HBM, as in a forward pass and
as bench-kernels' ncu timings with flushed caches do). Writes JSON: {records: [{shape, m, k, n,
cublas_bf16_us, torch_int4_us}]}.

python3 scripts/torch_matmul_bench.py --json out.json [--m 1,2,4,...] [--models 8b,70b]
"""
import argparse
import json
import statistics

import torch


def shapes(model):
    h, heads, kv, ffn = {"8b": (4096, 32, 8, 14336), "70b": (8192, 64, 8, 28672)}[model]
    hd = h // heads
    return [(f"{model}.qkv", h, (heads + 2 * kv) * hd), (f"{model}.o", h, h),
            (f"{model}.gate_up", h, 2 * ffn), (f"{model}.down", ffn, h)]


def time_us(fns, samples=15, calls=10):
    """fns: one callable per weight copy; each batch calls them in turn."""
    for f in fns:
        f()
    torch.cuda.synchronize()
    calls = max(calls, len(fns))
    out = []
    for _ in range(samples):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for i in range(calls):
            fns[i % len(fns)]()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b) * 1e3 / calls)
    return statistics.median(out)


L2_BYTES = 60 << 20


def copies(nbytes):
    """Weight copies whose total exceeds twice the L2."""
    return max(1, -(-2 * L2_BYTES // nbytes))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="1,2,4,8,16,32,64,128")
    ap.add_argument("--models", default="8b,70b")
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    ms = [int(x) for x in args.m.split(",")]
    dev = "cuda"
    recs = []
    for model in args.models.split(","):
        for name, k, n in shapes(model):
            ws = [torch.randn(k, n, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(copies(2 * k * n))]
            # int4 pack: weight [n, k] int32 values 0..15, then the kernel's tile layout.
            wq = torch.randint(0, 16, (n, k), device=dev, dtype=torch.int32)
            inner_k_tiles = 8
            try:  # torch >= 2.5: two values per uint8, [n, k / 2]
                packed = torch._convert_weight_to_int4pack((wq[:, ::2] << 4 | wq[:, 1::2]).to(torch.uint8), inner_k_tiles)
            except RuntimeError:  # older releases: int32 [n, k]
                packed = torch._convert_weight_to_int4pack(wq, inner_k_tiles)
            packs = [packed] + [packed.clone() for _ in range(copies(k * n // 2) - 1)]
            sz = (torch.rand(k // args.group, n, 2, device=dev, dtype=torch.bfloat16) * 0.01)
            for m in ms:
                x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
                cublas = time_us([lambda w=w: torch.matmul(x, w) for w in ws])
                try:
                    int4 = time_us([lambda p=p: torch._weight_int4pack_mm(x, p, args.group, sz) for p in packs])
                except Exception as e:
                    print(f"int4 kernel failed at {name} m {m}: {e}")
                    int4 = None
                recs.append(dict(shape=name, m=m, k=k, n=n, cublas_bf16_us=cublas, torch_int4_us=int4))
                print(f"{name} m {m}: cublas {cublas:.1f} us, torch int4 {int4 if int4 is None else round(int4, 1)} us", flush=True)
            del ws, wq, packed, packs, sz
            torch.cuda.empty_cache()
    json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(), "records": recs}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
