#!/usr/bin/env python3
"""How close can any bf16 engine get to the float64 logits? (issue #2's bf16 tolerance)

Runs the float64 reference forward of `reference_gguf.py` with bf16 rounding (round to nearest even)
inserted where a bf16 engine rounds: the weights once, the activations after every op (norm outputs,
q/k/v, RoPE, attention output, every product, swiglu), the residual stream after every add, the
logits. Each rounding site is switched on or off independently, so the table says which one costs
what. Compares with the committed fixture (top-20 logits at every position) like the Rust test.

Usage: python3 scripts/bf16_bound.py <path.gguf> assets/fixtures/<alias>.json [--prompts N]
       [--bound assets/fixtures/bf16_bound.json]  (the bf16-everywhere row only, recorded per fixture)
Needs numpy, regex and gguf, as reference_gguf.py.
"""
import argparse
import json
import os
import sys

import numpy as np
from gguf import GGUFReader

sys.path.insert(0, os.path.dirname(__file__))
import reference_gguf as ref  # noqa: E402


def bf16(x):
    """Round to bf16 (nearest even) and widen back to float64."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32).astype(np.float64)


def f32(x):
    return np.asarray(x, dtype=np.float32).astype(np.float64)


class Rounded(ref.Model):
    """The reference forward with a rounding function at each site: `act`, `res`, `logit`."""

    def set(self, weights, act, res, logit, w64):
        self.w = {k: weights(v) for k, v in w64.items()}
        self.out = self.w.get("output.weight", self.w["token_embd.weight"])
        self.act, self.res, self.logit = act, res, logit

    def forward(self, ids, cache):
        w, A, R = self.w, self.act, self.res
        n = len(ids)
        pos = np.arange(n, dtype=np.float64)
        x = R(w["token_embd.weight"][ids])
        g = self.n_head // self.n_kv
        for i in range(self.n_layer):
            p = f"blk.{i}."
            h = A(self.norm(x, w[p + "attn_norm.weight"]))
            q = A(h @ w[p + "attn_q.weight"].T + w.get(p + "attn_q.bias", 0))
            k = A(h @ w[p + "attn_k.weight"].T + w.get(p + "attn_k.bias", 0))
            v = A(h @ w[p + "attn_v.weight"].T + w.get(p + "attn_v.bias", 0)).reshape(n, self.n_kv, self.hd)
            q = A(self.rope(q.reshape(n, self.n_head, self.hd), pos))
            k = A(self.rope(k.reshape(n, self.n_kv, self.hd), pos))
            s = np.einsum("nhd,thd->hnt", q, np.repeat(k, g, axis=1)) / np.sqrt(self.hd)
            s = np.where((np.arange(n)[None, :] > np.arange(n)[:, None])[None], -np.inf, s)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)  # softmax in f32 or better in every engine we compare
            o = A(np.einsum("hnt,thd->nhd", s, np.repeat(v, g, axis=1)).reshape(n, -1))
            x = R(x + A(o @ w[p + "attn_output.weight"].T))
            h = A(self.norm(x, w[p + "ffn_norm.weight"]))
            gate = A(h @ w[p + "ffn_gate.weight"].T)
            up = A(h @ w[p + "ffn_up.weight"].T)
            x = R(x + A(A(gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T))
        return self.logit(A(self.norm(x, w["output_norm.weight"])) @ self.out.T)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("fixture")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--bound", metavar="JSON", help="only the bf16-everywhere row, recorded as this fixture's bound in JSON "
                    "(assets/fixtures/bf16_bound.json, which the bf16 fidelity tests read)")
    a = ap.parse_args()
    fx = json.load(open(a.fixture))
    m = Rounded(GGUFReader(a.gguf))
    w64 = dict(m.w)
    same = lambda t: t  # noqa: E731
    # (name, weights, activations, residual, logits); products accumulate in float64 throughout.
    configs = [
        ("f32 everywhere (the f32 engine)", f32, f32, f32, f32),
        ("bf16 weights only", bf16, f32, f32, f32),
        ("bf16 activations only (exact weights)", same, bf16, f32, f32),
        ("bf16 weights + activations, f32 residual and logits (llama.cpp style)", bf16, bf16, f32, f32),
        ("bf16 weights + activations + logits, f32 residual", bf16, bf16, f32, bf16),
        ("bf16 everywhere (hierspec, HF, vLLM in bf16)", bf16, bf16, bf16, bf16),
    ]
    if a.bound:
        configs = configs[-1:]
    print(f"| rounding in bf16 | max abs diff, {a.prompts} prompts, top-20 logits | median over positions of the per-position max | argmax identical |")
    print("|---|---|---|---|")
    for name, wt, act, res, logit in configs:
        m.set(wt, act, res, logit, w64)
        worst, per_pos, argmax = 0.0, [], True
        for p in fx["prompts"][: a.prompts]:
            lg = m.forward(np.array(p["ids"]), None)
            ids, want = np.array(p["top_ids"]), np.array(p["top_logits"])
            d = np.abs(np.take_along_axis(lg, ids, 1) - want)
            worst = max(worst, d.max())
            per_pos += list(d.max(1))
            argmax &= bool((lg.argmax(1) == ids[:, 0]).all())
        print(f"| {name} | {worst:.4f} | {np.median(per_pos):.4f} | {argmax} |", flush=True)
    if a.bound:
        bounds = json.load(open(a.bound)) if os.path.exists(a.bound) else {}
        bounds[fx["alias"]] = {"max_abs_diff": round(float(worst), 6), "prompts": a.prompts, "argmax_identical": argmax}
        with open(a.bound, "w") as f:
            json.dump(bounds, f, indent=1, sort_keys=True)
            f.write("\n")


if __name__ == "__main__":
    main()
