#!/usr/bin/env python3
"""The transformers peer on real models: AR greedy (dynamic cache, and static cache which transformers
compiles itself) and assisted generation (a smaller model of the same tokenizer drafting), bf16 on
CUDA, on the Spec-Bench questions `bench` runs (first N per category, turn 1, the model's chat
template). Weights come from the same GGUF files hierspec reads (transformers dequantizes them).

Decode tokens/s per prompt = (new tokens - 1) / (time of the full generate - time of a 1-token
generate): prefill excluded, as in hierspec's bench. Prints a table and writes JSON.

Usage: python3 scripts/hf_real_speed.py --target T.gguf --draft D.gguf --questions question.jsonl \
         --categories coding,math_reasoning --per-category 1 --max-new-tokens 128 --json out.json
"""
import argparse
import collections
import json
import os
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_ar_speed import timed  # same directory: the synced timer


def load(path):
    d, f = os.path.split(os.path.abspath(path))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.bfloat16).cuda().eval()
    return model


def questions(path, categories, per_category):
    by_cat = collections.defaultdict(list)
    with open(path) as fh:
        for line in fh:
            q = json.loads(line)
            if q["category"] in categories and len(by_cat[q["category"]]) < per_category:
                by_cat[q["category"]].append(q)
    return [q for c in categories for q in by_cat[c]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--questions", required=True)
    ap.add_argument("--categories", default="writing,roleplay,reasoning,math,coding,extraction")
    ap.add_argument("--per-category", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--modes", default="ar,ar_static,assisted")
    ap.add_argument("--json")
    a = ap.parse_args()
    d, f = os.path.split(os.path.abspath(a.target))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    t0 = time.time()
    target = load(a.target)
    draft = load(a.draft) if "assisted" in a.modes else None
    print(f"loaded in {time.time() - t0:.0f} s", flush=True)
    qs = questions(a.questions, a.categories.split(","), a.per_category)
    eos = [tok.eos_token_id] + ([tok.convert_tokens_to_ids("<|im_end|>")] if "<|im_end|>" in tok.get_vocab() else [])

    def prompt(q):
        enc = tok.apply_chat_template([{"role": "user", "content": q["turns"][0]}], add_generation_prompt=True, return_tensors="pt")
        ids = enc["input_ids"] if hasattr(enc, "keys") else enc  # transformers 5 returns a BatchEncoding
        return ids.to("cuda")

    def gen(ids, mode, n):
        extra = {}
        if mode == "ar_static":
            extra["cache_implementation"] = "static"
        if mode == "assisted":
            extra["assistant_model"] = draft
        return target.generate(ids, do_sample=False, max_new_tokens=n, eos_token_id=eos, pad_token_id=eos[0], **extra)

    records, summary = [], {}
    for mode in a.modes.split(","):
        try:
            first = prompt(qs[0])
            gen(first, mode, a.max_new_tokens)  # warm-up (compiles in static mode)
            gen(first, mode, a.max_new_tokens)
            rates = []
            for q in qs:
                ids = prompt(q)
                t1, _ = timed(lambda: gen(ids, mode, 1))
                tn, out = timed(lambda: gen(ids, mode, a.max_new_tokens))
                new = out.shape[1] - ids.shape[1]
                rate = (new - 1) / max(tn - t1, 1e-9)
                rates.append(rate)
                records.append({"mode": mode, "category": q["category"], "question_id": q["question_id"], "new_tokens": new,
                                "prefill_ms": t1 * 1e3, "decode_s": tn - t1, "tok_s": rate, "tokens": out[0, ids.shape[1]:].tolist()})
                print(f"[{mode} {q['category']} q{q['question_id']}] {new} tokens, {rate:.1f} tok/s", flush=True)
            summary[mode] = {"tok_s": statistics.mean(rates), "prompts": len(rates)}
        except Exception as e:  # report, don't hide
            import traceback
            traceback.print_exc()
            summary[mode] = {"error": repr(e)[:500]}
            print(mode, summary[mode], flush=True)
    ar = summary.get("ar", {}).get("tok_s")
    for s in summary.values():
        if ar and "tok_s" in s:
            s["speedup_vs_ar"] = s["tok_s"] / ar
    # Greedy agreement with plain AR, token for token.
    ar_tokens = {r["question_id"]: r["tokens"] for r in records if r["mode"] == "ar"}
    for s_mode, s in summary.items():
        if "tok_s" in s:
            s["same_tokens_as_ar"] = sum(r["tokens"] == ar_tokens.get(r["question_id"]) for r in records if r["mode"] == s_mode)
    print("| mode | prompts | tok/s | x ar | same tokens as ar |")
    print("|---|---|---|---|---|")
    for m, s in summary.items():
        if "tok_s" in s:
            print(f"| {m} | {s['prompts']} | {s['tok_s']:.1f} | {s.get('speedup_vs_ar', float('nan')):.2f} | {s['same_tokens_as_ar']} |")
    report = {"target": a.target, "draft": a.draft, "categories": a.categories, "per_category": a.per_category,
              "max_new_tokens": a.max_new_tokens, "dtype": "bf16", "transformers": transformers.__version__,
              "torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "summary": summary, "records": records}
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
