#!/usr/bin/env python3
"""Independent float64 reference for hierspec's fidelity tests.

Reads a GGUF with the `gguf` package (its own dequantizers), tokenizes with a small byte-level BPE
written here (not the `tokenizers` library the engine uses), runs a Llama/Qwen2 forward in float64
numpy, and writes a fixture that the Rust tests compare against:

    assets/fixtures/<alias>.json         token ids, top-20 logits at every position, greedy tokens
    assets/fixtures/<alias>.last.f32     full last-position logits of prompt 0 (little-endian f32)

Usage: python3 scripts/reference_gguf.py <alias> <path.gguf> [--greedy 32]
Needs only numpy, regex and gguf (pip install numpy regex gguf).
"""
import argparse
import hashlib
import json
import os
import sys
import unicodedata

import numpy as np
import regex
from gguf import GGUFReader
from gguf.quants import dequantize

PROMPTS = [
    ("chat", "What is the capital of France? Answer in one sentence."),
    ("code", "Write a Python function `is_prime(n)` that returns True when n is prime."),
    ("math", "If a train travels 120 km in 1.5 hours, what is its average speed in km/h?"),
    ("raw", "The quick brown fox jumps over the lazy dog. Numbers: 12345, 3.14159; unicode: café, naïve, 東京."),
]

QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def field(r, key):
    f = r.fields.get(key)
    if f is None:
        return None
    if len(f.data) == 1 and f.types[0] != 8 and f.types[0] != 9:  # scalar
        return f.parts[f.data[0]][0].item()
    if f.types[0] == 8:  # string
        return bytes(f.parts[f.data[0]]).decode()
    # array
    if f.types[-1] == 8:
        return [bytes(f.parts[i]).decode() for i in f.data]
    return [f.parts[i][0].item() for i in f.data]


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class Bpe:
    def __init__(self, r):
        self.tokens = field(r, "tokenizer.ggml.tokens")
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        merges = field(r, "tokenizer.ggml.merges")
        self.ranks = {tuple(m.split(" ", 1)): i for i, m in enumerate(merges)}
        types = field(r, "tokenizer.ggml.token_type")
        self.special = sorted([t for t, ty in zip(self.tokens, types) if ty in (3, 4)], key=len, reverse=True)
        self.pre = field(r, "tokenizer.ggml.pre")
        self.b2u = bytes_to_unicode()

    def bpe(self, word):
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), 1 << 60), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == 1 << 60:
                break
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
        return [self.ids[p] for p in parts]

    def pieces(self, text):
        if self.pre == "qwen2":
            return regex.findall(QWEN2_SPLIT, unicodedata.normalize("NFC", text))
        if self.pre == "smollm":
            out = []
            for chunk in regex.split(r"(\p{N})", text):  # individual digits first
                if chunk:
                    out += [chunk] if regex.fullmatch(r"\p{N}", chunk) else regex.findall(GPT2_SPLIT, chunk)
            return out
        raise SystemExit(f"pre-tokenizer {self.pre} not handled by the reference")

    def encode(self, text):
        ids = []
        pattern = "(" + "|".join(regex.escape(s) for s in self.special) + ")"
        for seg in regex.split(pattern, text):
            if not seg:
                continue
            if seg in self.ids and seg in self.special:
                ids.append(self.ids[seg])
                continue
            for piece in self.pieces(seg):
                ids += self.bpe("".join(self.b2u[b] for b in piece.encode("utf-8")))
        return ids


def chat(r, user):
    tmpl = field(r, "tokenizer.chat_template") or ""
    m = regex.search(r"<\|im_start\|>system(?:\n|\\n)([^'{<]+?)<\|im_end\|>", tmpl)
    system = m.group(1) if m else None
    s = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return s + f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


class Model:
    def __init__(self, r):
        arch = field(r, "general.architecture")
        g = lambda k, d=None: field(r, f"{arch}.{k}") if field(r, f"{arch}.{k}") is not None else d
        self.n_layer = g("block_count")
        self.n_head = g("attention.head_count")
        self.n_kv = g("attention.head_count_kv", self.n_head)
        self.hidden = g("embedding_length")
        self.hd = self.hidden // self.n_head
        self.eps = g("attention.layer_norm_rms_epsilon")
        self.theta = g("rope.freq_base", 10000.0)
        w = {}
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type).astype(np.float64)
            w[t.name] = a.reshape([int(x) for x in reversed(t.shape)])
        if arch == "llama":  # undo the GGUF Q/K permutation (models.md)
            for i in range(self.n_layer):
                for name, nh in ((f"blk.{i}.attn_q.weight", self.n_head), (f"blk.{i}.attn_k.weight", self.n_kv)):
                    d_out, d_in = w[name].shape
                    w[name] = w[name].reshape(nh, d_out // nh // 2, 2, d_in).swapaxes(1, 2).reshape(d_out, d_in)
        self.w = w
        self.out = w.get("output.weight", w["token_embd.weight"])
        inv = 1.0 / self.theta ** (np.arange(0, self.hd, 2, dtype=np.float64) / self.hd)
        self.inv = inv

    def norm(self, x, wt):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * wt

    def rope(self, x, pos):  # x [n, heads, hd], half-split layout
        a = pos[:, None] * self.inv[None, :]
        cos, sin = np.cos(a)[:, None, :], np.sin(a)[:, None, :]
        h = self.hd // 2
        x1, x2 = x[..., :h], x[..., h:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    def forward(self, ids, cache):
        """ids: new tokens; cache: list of (K, V) per layer, extended in place. Returns logits [n, vocab]."""
        w = self.w
        start = cache[0][0].shape[0] if cache[0] is not None else 0
        pos = np.arange(start, start + len(ids), dtype=np.float64)
        x = w["token_embd.weight"][ids]
        n = len(ids)
        for i in range(self.n_layer):
            p = f"blk.{i}."
            h = self.norm(x, w[p + "attn_norm.weight"])
            q = h @ w[p + "attn_q.weight"].T + w.get(p + "attn_q.bias", 0)
            k = h @ w[p + "attn_k.weight"].T + w.get(p + "attn_k.bias", 0)
            v = h @ w[p + "attn_v.weight"].T + w.get(p + "attn_v.bias", 0)
            q = self.rope(q.reshape(n, self.n_head, self.hd), pos)
            k = self.rope(k.reshape(n, self.n_kv, self.hd), pos)
            v = v.reshape(n, self.n_kv, self.hd)
            if cache[i] is not None:
                k = np.concatenate([cache[i][0], k], 0)
                v = np.concatenate([cache[i][1], v], 0)
            cache[i] = (k, v)
            t = k.shape[0]
            g = self.n_head // self.n_kv
            kk = np.repeat(k, g, axis=1)  # [t, heads, hd]
            vv = np.repeat(v, g, axis=1)
            s = np.einsum("nhd,thd->hnt", q, kk) / np.sqrt(self.hd)
            causal = (np.arange(t)[None, :] > (start + np.arange(n))[:, None])
            s = np.where(causal[None], -np.inf, s)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            o = np.einsum("hnt,thd->nhd", s, vv).reshape(n, self.n_head * self.hd)
            x = x + o @ w[p + "attn_output.weight"].T
            h = self.norm(x, w[p + "ffn_norm.weight"])
            gate = h @ w[p + "ffn_gate.weight"].T
            up = h @ w[p + "ffn_up.weight"].T
            x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
        x = self.norm(x, w["output_norm.weight"])
        return x @ self.out.T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("alias")
    ap.add_argument("gguf")
    ap.add_argument("--greedy", type=int, default=32)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "assets", "fixtures"))
    a = ap.parse_args()
    r = GGUFReader(a.gguf)
    sha = hashlib.sha256(open(a.gguf, "rb").read()).hexdigest()
    tok = Bpe(r)
    model = Model(r)
    fixture = {"alias": a.alias, "gguf_sha256": sha, "top_k": 20, "prompts": []}
    for pi, (kind, text) in enumerate(PROMPTS):
        full = chat(r, text) if kind != "raw" else text
        ids = tok.encode(full)
        cache = [None] * model.n_layer
        logits = model.forward(np.array(ids), cache)
        top = np.argsort(-logits, axis=-1)[:, :20]
        entry = {
            "kind": kind,
            "text": full,
            "ids": ids,
            "top_ids": top.tolist(),
            "top_logits": np.take_along_axis(logits, top, -1).round(6).tolist(),
        }
        if pi == 0:
            logits[-1].astype("<f4").tofile(os.path.join(a.out, f"{a.alias}.last.f32"))
            greedy = []
            nxt = int(np.argmax(logits[-1]))
            for _ in range(a.greedy):
                greedy.append(nxt)
                nxt = int(np.argmax(model.forward(np.array([nxt]), cache)[-1]))
            entry["greedy"] = greedy
        fixture["prompts"].append(entry)
        print(f"{a.alias} prompt {pi} ({kind}): {len(ids)} tokens", file=sys.stderr)
    with open(os.path.join(a.out, f"{a.alias}.json"), "w") as f:
        json.dump(fixture, f)


if __name__ == "__main__":
    main()
