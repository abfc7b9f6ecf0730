#!/usr/bin/env python3
"""transformers' MixtralForCausalLM on `dirmoe export hf` exports against dirmoe's own logits for the
same tokens, for a machine with PyTorch and transformers 5 (the figure the numpy reference
hf_mixtral_reference.py stands in for elsewhere).

usage: hf_mixtral_transformers.py CASE_DIR [CASE_DIR...] [--tol 1e-4] [--device cuda|cpu]
  CASE_DIR holds model/ (the export), tokens.bin (int32 [batch, seq]), logits.bin (float32
  [batch, seq, vocab] from dirmoe's forward) and inputs.json ({"batch", "seq", "vocab", "ep"}), as
  tests/runtime/hf_transformers_check.sh prepare writes them.

For each case: from_pretrained(dtype=float32, output_loading_info=True) must report no missing,
unexpected or mismatched keys and no error messages; the config must carry the exported RoPE base;
every exported tensor must equal the loaded parameter it becomes (transformers 5 fuses the experts:
gate_up_proj[e] = [w1; w3], down_proj[e] = w2); the max abs logit difference must be <= --tol.
Matmuls run in strict fp32 (no TF32) with eager attention and the eager experts loop (where
transformers 5 offers the choice; the default implementation's difference is printed too). Exit
status 1 when any case fails.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import MixtralForCausalLM

DTYPES = {"F32": np.float32, "F64": np.float64}


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
        out[name] = np.frombuffer(data[b:e], dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
    return out


def exported_tensors(model_dir):
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(load_safetensors(model_dir / shard))
    return out


def expected_parameters(exported, num_layers, num_experts):
    """The exported tensors under the names the loaded model may use: unchanged (transformers 4.x),
    or fused as transformers 5's conversion mapping does (router renamed to mlp.gate)."""
    plain = dict(exported)
    fused = {}
    for name, t in exported.items():
        if ".block_sparse_moe.experts." in name:
            continue
        fused[name.replace(".block_sparse_moe.gate.", ".mlp.gate.")] = t
    for i in range(num_layers):
        p = f"model.layers.{i}.block_sparse_moe.experts."
        w = {k: np.stack([exported[f"{p}{e}.{k}.weight"] for e in range(num_experts)]) for k in
             ("w1", "w2", "w3")}
        fused[f"model.layers.{i}.mlp.experts.gate_up_proj"] = np.concatenate([w["w1"], w["w3"]], axis=1)
        fused[f"model.layers.{i}.mlp.experts.down_proj"] = w["w2"]
    return plain, fused


def load(model_dir, experts):
    """from_pretrained in fp32 with eager attention and, where this transformers has the option
    (5.x), the given experts implementation; returns (model, loading info, experts implementation)."""
    kw = dict(dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    if experts is not None:
        try:
            model, info = MixtralForCausalLM.from_pretrained(model_dir, experts_implementation=experts, **kw)
            return model, info, getattr(model.config, "_experts_implementation", experts)
        except (TypeError, ValueError) as e:
            print(f"  (experts_implementation={experts!r} not accepted: {e}; using the default)")
    model, info = MixtralForCausalLM.from_pretrained(model_dir, **kw)
    return model, info, getattr(model.config, "_experts_implementation", "default")


def logits_of(model, tokens, device):
    model.to(device).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(tokens.astype(np.int64)).to(device)).logits
    return out.double().cpu().numpy()


def check_case(case, tol, device):
    case = Path(case)
    model_dir = case / "model"
    inputs = json.loads((case / "inputs.json").read_text())
    B, S, V = inputs["batch"], inputs["seq"], inputs["vocab"]
    cfg = json.loads((model_dir / "config.json").read_text())
    problems = []

    model, info, experts_impl = load(model_dir, "eager")
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        if info.get(key):
            problems.append(f"{key}: {sorted(map(str, info[key]))}")
    rope = getattr(model.config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(model.config, "rope_theta", None))
    if theta != cfg["rope_parameters"]["rope_theta"]:
        problems.append(f"RoPE base {theta} in the loaded config, {cfg['rope_parameters']['rope_theta']} exported")
    if model.config.vocab_size != V:
        problems.append(f"vocab_size {model.config.vocab_size}, logits have {V}")

    # Every exported tensor is the loaded parameter it becomes, exactly.
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    plain, fused = expected_parameters(exported_tensors(model_dir), cfg["num_hidden_layers"],
                                       cfg["num_local_experts"])
    expected = plain if all(k in state for k in plain) else fused
    for name, t in expected.items():
        if name not in state:
            problems.append(f"tensor {name} not in the loaded model")
        elif state[name].shape != t.shape or not np.array_equal(state[name], t.astype(np.float32)):
            problems.append(f"tensor {name} differs from the export (shape {state[name].shape} vs {t.shape})")

    tokens = np.fromfile(case / "tokens.bin", dtype=np.int32).reshape(B, S)
    ours = np.fromfile(case / "logits.bin", dtype=np.float32).reshape(B, S, V).astype(np.float64)

    def max_diff(ref):
        return float(np.max(np.abs(ref - ours))) if ref.shape == ours.shape else float("inf")

    ref = logits_of(model, tokens, device)
    diff = max_diff(ref)
    if not diff <= tol:
        problems.append(f"max abs logit difference {diff:.3e} > {tol:g}")
    layout = "per-expert (4.x) names" if expected is plain else "fused experts (5.x)"
    shards = len(set(json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"].values()))
    print(f"{case.name}: EP={inputs.get('ep')}, {shards} shard(s), {B}x{S}x{V} logits up to "
          f"{float(np.max(np.abs(ref))):.3f}: max abs difference {diff:.3e} (tol {tol:g}; experts "
          f"{experts_impl}); loaded as {layout}; " + ("PASS" if not problems else "FAIL"))
    # For information: the experts implementation transformers picks by default (grouped_mm on a
    # GPU in 5.x), whose own arithmetic may differ from the eager loop's.
    default_model, _, default_impl = load(model_dir, None)
    if default_impl != experts_impl:
        print(f"  {case.name}: default experts implementation {default_impl}: max abs difference "
              f"{max_diff(logits_of(default_model, tokens, device)):.3e} (not checked)")
    for p in problems:
        print(f"  {case.name}: {p}")
    return not problems


def main():
    args = sys.argv[1:]
    opts = {"--tol": "1e-4", "--device": "cuda" if torch.cuda.is_available() else "cpu"}
    for k in list(opts):
        if k in args:
            i = args.index(k)
            opts[k] = args[i + 1]
            del args[i:i + 2]
    if not args:
        sys.exit(__doc__)
    # Strict fp32: no TF32 in matmuls.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, device {opts['--device']}")
    ok = [check_case(c, float(opts["--tol"]), opts["--device"]) for c in args]
    print(f"{sum(ok)}/{len(ok)} cases pass")
    sys.exit(0 if all(ok) else 1)


if __name__ == "__main__":
    main()
