#!/usr/bin/env python3
"""Make the transformers fixtures: small randomly initialised LlamaForCausalLM (GQA, Llama-3.1 RoPE
scaling, bf16 weights, sharded with an index) and Qwen2ForCausalLM (GQA, q/k/v biases, tied embeddings,
f32 weights), saved with save_pretrained, plus their logits computed by transformers in float64.

Usage: python3 scripts/hf_reference.py OUT_DIR      (needs torch, transformers, tokenizers)
Writes OUT_DIR/hf-llama-tiny/ and OUT_DIR/hf-qwen2-tiny/, each a loadable HF model directory with
reference.json ({"ids": [...], "logits": [[...]], "transformers": version}).
"""
import json
import os
import sys

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

VOCAB = 320


def tokenizer_json(path):
    # Byte-level BPE with the 256 byte symbols and no merges, plus two specials; enough to load.
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|im_start|>"] = len(vocab)
    vocab["<|im_end|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(path)


def rope_kwargs(theta, scaling):
    """transformers 5 nests RoPE settings under rope_parameters; 4.x used rope_theta + rope_scaling."""
    if int(transformers.__version__.split(".")[0]) >= 5:
        return {"rope_parameters": {"rope_type": "default", **(scaling or {}), "rope_theta": theta}}
    return {"rope_theta": theta, **({"rope_scaling": scaling} if scaling else {})}


def make(kind, out):
    torch.manual_seed(0 if kind == "llama" else 1)
    if kind == "llama":
        scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 32}
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
                          num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256,
                          rms_norm_eps=1e-5, tie_word_embeddings=False, eos_token_id=VOCAB - 1,
                          **rope_kwargs(500000.0, scaling))
        model = LlamaForCausalLM(cfg)
        save_dtype = torch.bfloat16
    else:
        cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          rms_norm_eps=1e-6, tie_word_embeddings=True, eos_token_id=VOCAB - 1,
                          **rope_kwargs(1000000.0, None))
        model = Qwen2ForCausalLM(cfg)
        save_dtype = torch.float32
    print(kind, {k: v for k, v in cfg.to_dict().items() if "rope" in k}, file=sys.stderr)
    # Random init is tiny (std 0.02): scale up so that logits are not all near zero.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(4.0)
            else:
                p.add_(torch.randn_like(p) * 0.1)
    model = model.to(save_dtype)
    os.makedirs(out, exist_ok=True)
    shard = "100KB" if kind == "llama" else "50MB"
    model.save_pretrained(out, max_shard_size=shard, safe_serialization=True)
    tokenizer_json(os.path.join(out, "tokenizer.json"))
    # Reference: the saved (possibly bf16-rounded) weights, evaluated in float64.
    ref = (LlamaForCausalLM if kind == "llama" else Qwen2ForCausalLM).from_pretrained(out, dtype=torch.float64)
    ref.eval()
    g = torch.Generator().manual_seed(42)
    ids = torch.randint(0, VOCAB, (1, 48), generator=g)
    with torch.no_grad():
        logits = ref(ids).logits[0]
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({"ids": ids[0].tolist(), "logits": logits.tolist(), "transformers": transformers.__version__,
                   "torch": torch.__version__, "save_dtype": str(save_dtype)}, f)
    print(kind, out, sorted(os.listdir(out)), file=sys.stderr)


if __name__ == "__main__":
    root = sys.argv[1]
    make("llama", os.path.join(root, "hf-llama-tiny"))
    make("qwen2", os.path.join(root, "hf-qwen2-tiny"))
