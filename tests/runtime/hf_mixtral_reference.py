#!/usr/bin/env python3
"""Independent check of `dirmoe export hf`: loads the exported Mixtral checkpoint with numpy only
(config.json, model.safetensors.index.json, the safetensors shards parsed from the format) and runs
the forward pass as transformers' modeling_mixtral defines it (RMSNorm, rotate_half RoPE, repeat_kv
grouped-query causal attention, softmax router -> top-k -> renormalised weights, SwiGLU experts
w2(silu(w1 x) * w3 x)), in float64. Compares its logits with dirmoe's.

usage: hf_mixtral_reference.py MODEL_DIR TOKENS.bin LOGITS.bin B S [--tol T]
  TOKENS.bin: int32 [B, S]; LOGITS.bin: float32 [B, S, vocab_size] from dirmoe's forward.
Prints the max abs difference; exit status 1 when it exceeds --tol (default 1e-4).
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np

DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I32": np.int32, "I64": np.int64}


def load_safetensors(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        out[name] = np.frombuffer(data[b:e], dtype=DTYPES[t["dtype"]]).reshape(t["shape"]).astype(np.float64)
    return out


def load_model(model_dir):
    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    weights = {}
    for shard in sorted(set(index["weight_map"].values())):
        weights.update(load_safetensors(model_dir / shard))
    assert set(weights) == set(index["weight_map"]), "index and shards disagree"
    return cfg, weights


def rms_norm(x, w, eps):
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def forward(cfg, W, tokens):
    B, S = tokens.shape
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    eps, k, E = cfg["rms_norm_eps"], cfg["num_experts_per_tok"], cfg["num_local_experts"]
    inv_freq = 1.0 / (cfg["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    freqs = np.outer(np.arange(S, dtype=np.float64), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb)[None, None], np.sin(emb)[None, None]  # [1,1,S,hd]
    mask = np.triu(np.full((S, S), -np.inf), k=1)
    x = W["model.embed_tokens.weight"][tokens]  # [B,S,H]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = (h @ W[p + "self_attn.q_proj.weight"].T).reshape(B, S, nh, hd).transpose(0, 2, 1, 3)
        kk = (h @ W[p + "self_attn.k_proj.weight"].T).reshape(B, S, nkv, hd).transpose(0, 2, 1, 3)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(B, S, nkv, hd).transpose(0, 2, 1, 3)
        q = q * cos + rotate_half(q) * sin
        kk = kk * cos + rotate_half(kk) * sin
        kk = np.repeat(kk, nh // nkv, axis=1)  # repeat_kv
        v = np.repeat(v, nh // nkv, axis=1)
        s = q @ kk.transpose(0, 1, 3, 2) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(0, 2, 1, 3).reshape(B, S, nh * hd)
        x = x + a @ W[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps).reshape(B * S, H)
        logits = h @ W[p + "block_sparse_moe.gate.weight"].T
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        wts = np.take_along_axis(probs, top, axis=-1)
        wts /= wts.sum(-1, keepdims=True)
        y = np.zeros_like(h)
        for e in range(E):
            ep = p + f"block_sparse_moe.experts.{e}."
            rows, slot = np.nonzero(top == e)
            if len(rows) == 0:
                continue
            xe = h[rows]
            g = xe @ W[ep + "w1.weight"].T
            out = ((g / (1 + np.exp(-g))) * (xe @ W[ep + "w3.weight"].T)) @ W[ep + "w2.weight"].T
            y[rows] += out * wts[rows, slot][:, None]
        x = x + y.reshape(B, S, H)
    x = rms_norm(x, W["model.norm.weight"], eps)
    return x @ W["lm_head.weight"].T


def main():
    args = sys.argv[1:]
    tol = 1e-4
    if "--tol" in args:
        i = args.index("--tol")
        tol = float(args[i + 1])
        del args[i:i + 2]
    model_dir, tok_path, logit_path, B, S = args[0], args[1], args[2], int(args[3]), int(args[4])
    cfg, W = load_model(model_dir)
    for key in ("model_type", "num_local_experts", "num_experts_per_tok", "tie_word_embeddings"):
        assert key in cfg, f"config.json lacks {key}"
    assert cfg["model_type"] == "mixtral" and cfg["tie_word_embeddings"] is False
    tokens = np.fromfile(tok_path, dtype=np.int32).reshape(B, S)
    ours = np.fromfile(logit_path, dtype=np.float32).reshape(B, S, cfg["vocab_size"]).astype(np.float64)
    ref = forward(cfg, W, tokens)
    diff = float(np.max(np.abs(ref - ours)))
    print(f"mixtral reference vs dirmoe logits: max abs difference {diff:.3e} "
          f"(logits max abs {float(np.max(np.abs(ref))):.3f}, {B}x{S}x{cfg['vocab_size']}, tol {tol:g})")
    sys.exit(0 if diff <= tol else 1)


if __name__ == "__main__":
    main()
