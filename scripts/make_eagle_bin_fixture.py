"""Write a tiny EAGLE head in the official EAGLE checkpoint layout (`pytorch_model.bin` from
torch.save, fp16, with an `embed_tokens.weight` the loader must ignore), the same weights as f32
safetensors, and its config.json, for the test that `.bin` heads load like safetensors heads.
Needs torch and safetensors (the GPU machine has them). Usage: python3 make_eagle_bin_fixture.py OUT
The base it fits: vocab 16, hidden 32, 4 heads / 2 KV heads, head dim 8, FFN 64 (the tests' tiny model)."""
import json
import os
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
g = torch.Generator().manual_seed(7)
h, ffn, kv, vocab = 32, 64, 16, 16
shapes = {
    "fc.weight": (h, 2 * h),
    "layers.0.self_attn.q_proj.weight": (h, h),
    "layers.0.self_attn.k_proj.weight": (kv, h),
    "layers.0.self_attn.v_proj.weight": (kv, h),
    "layers.0.self_attn.o_proj.weight": (h, h),
    "layers.0.post_attention_layernorm.weight": (h,),
    "layers.0.mlp.gate_proj.weight": (ffn, h),
    "layers.0.mlp.up_proj.weight": (ffn, h),
    "layers.0.mlp.down_proj.weight": (h, ffn),
    "embed_tokens.weight": (vocab, h),
}
sd = {k: (torch.randn(s, generator=g) * 0.2).half() for k, s in shapes.items()}
sd["layers.0.post_attention_layernorm.weight"] = (1 + 0.1 * torch.randn(h, generator=g)).half()
torch.save(sd, os.path.join(out, "pytorch_model.bin"))
save_file({k: v.float().contiguous() for k, v in sd.items() if k != "embed_tokens.weight"}, os.path.join(out, "model.safetensors"))
cfg = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": h,
    "intermediate_size": ffn, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 8, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64, "bias": False,
}
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)
print({k: tuple(v.shape) for k, v in sd.items()}, torch.__version__)
