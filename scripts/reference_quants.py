#!/usr/bin/env python3
"""Fixture for the GGML block dequantizers: random blocks of every supported type, dequantized by the
`gguf` package, written to assets/fixtures/quant_blocks.json. Usage: python3 scripts/reference_quants.py"""
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

rng = np.random.default_rng(0)
# (type, block bytes, byte offsets of f16 scale fields)
TYPES = [(T.F32, 4, []), (T.F16, 2, [0]), (T.BF16, 2, []), (T.Q4_0, 18, [0]), (T.Q4_1, 20, [0, 2]),
         (T.Q5_0, 22, [0]), (T.Q8_0, 34, [0]), (T.Q4_K, 144, [0, 2]), (T.Q6_K, 210, [208])]
out = {}
for ty, bb, scales in TYPES:
    nblocks = 2 if bb > 4 else 64
    raw = bytearray(rng.integers(0, 256, size=bb * nblocks, dtype=np.uint8).tobytes())
    for b in range(nblocks):
        for off in scales:  # sane scales: finite, moderate
            raw[b * bb + off: b * bb + off + 2] = np.float16(rng.uniform(-0.1, 0.1)).tobytes()
    if ty == T.F32:
        raw = bytearray(rng.standard_normal(nblocks, dtype=np.float32).tobytes())
    if ty == T.BF16:  # top halves of random f32s
        raw = bytearray((rng.standard_normal(nblocks).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes())
    vals = dequantize(np.frombuffer(bytes(raw), dtype=np.uint8), ty).astype(np.float32).reshape(-1)
    out[ty.name] = {"raw": bytes(raw).hex(), "values": [float(v) for v in vals]}
path = os.path.join(os.path.dirname(__file__), "..", "assets", "fixtures", "quant_blocks.json")
with open(path, "w") as f:
    json.dump(out, f)
print({k: len(v["values"]) for k, v in out.items()})
