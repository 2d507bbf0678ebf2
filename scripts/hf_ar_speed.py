#!/usr/bin/env python3
"""transformers AR greedy decode speed on a random-weight model at a published shape, bf16, on CUDA:
eager and static cache (which transformers compiles itself); prints and writes JSON.

Usage: python3 scripts/hf_ar_speed.py --shape qwen2.5-coder-1.5b --prompt-len 128 --new-tokens 256 --json out.json
"""
import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

SHAPES = {
    "qwen2.5-coder-1.5b": (Qwen2Config, Qwen2ForCausalLM, dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                            num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, rope_theta=1e6,
                            tie_word_embeddings=False)),
    "qwen2.5-coder-0.5b": (Qwen2Config, Qwen2ForCausalLM, dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                            num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, rope_theta=1e6,
                            tie_word_embeddings=True)),
    "llama3-8b": (LlamaConfig, LlamaForCausalLM, dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                   num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, rope_theta=5e5)),
}


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2.5-coder-1.5b")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    cfg_cls, model_cls, kw = SHAPES[a.shape]
    cfg = cfg_cls(max_position_embeddings=32768, **kw)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = model_cls(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, a.prompt_len), device="cuda")
    results = {}
    for mode in ("eager", "static"):
        extra = {"cache_implementation": "static"} if mode == "static" else {}
        gen = lambda n: model.generate(ids, do_sample=False, max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                                       pad_token_id=0, **extra)
        try:
            gen(a.new_tokens)  # warm-up (compiles in static mode)
            gen(a.new_tokens)
            rates, prefills = [], []
            for _ in range(a.repeats):
                t1, _ = timed(lambda: gen(1))
                tn, out = timed(lambda: gen(a.new_tokens))
                assert out.shape[1] == a.prompt_len + a.new_tokens
                prefills.append(t1 * 1e3)
                rates.append((a.new_tokens - 1) / (tn - t1))
            results[mode] = {"decode_tok_s": statistics.median(rates), "runs": rates, "prefill_ms": statistics.median(prefills)}
        except Exception as e:  # report, don't hide
            results[mode] = {"error": repr(e)[:500]}
        print(mode, results[mode], flush=True)
    best = max((r["decode_tok_s"] for r in results.values() if "decode_tok_s" in r), default=None)
    report = {"shape": a.shape, "prompt_len": a.prompt_len, "new_tokens": a.new_tokens, "dtype": "bf16",
              "transformers": transformers.__version__, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(), "modes": results, "best_tok_s": best}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
