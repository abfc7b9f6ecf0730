#!/usr/bin/env python3
"""transformers' MixtralForCausalLM on a `dirmoe export hf` directory against dirmoe's logits, for
a machine with PyTorch and transformers (the figure the numpy reference stands in for elsewhere).

usage: hf_mixtral_transformers.py MODEL_DIR TOKENS.bin LOGITS.bin B S [--tol 1e-3] [--device cuda]
  TOKENS.bin int32 [B, S] and LOGITS.bin float32 [B, S, vocab]: test_checkpoint leaves the export
  and both files in build/tests/runtime/ckpt_np1/hf/mixtral/ (B=2, S=6), e.g.
    d=build/tests/runtime/ckpt_np1/hf/mixtral
    python3 tests/runtime/hf_mixtral_transformers.py $d $d/tokens.bin $d/logits.bin 2 6
"""
import sys

import numpy as np
import torch
from transformers import MixtralForCausalLM


def main():
    args = sys.argv[1:]
    opts = {"--tol": "1e-3", "--device": "cuda" if torch.cuda.is_available() else "cpu"}
    for k in list(opts):
        if k in args:
            i = args.index(k)
            opts[k] = args[i + 1]
            del args[i:i + 2]
    model_dir, tok_path, logit_path, B, S = args[0], args[1], args[2], int(args[3]), int(args[4])
    model = MixtralForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.to(opts["--device"]).eval()
    tokens = torch.from_numpy(np.fromfile(tok_path, dtype=np.int32).reshape(B, S).astype(np.int64))
    with torch.no_grad():
        ref = model(tokens.to(opts["--device"])).logits.double().cpu().numpy()
    ours = np.fromfile(logit_path, dtype=np.float32).reshape(ref.shape).astype(np.float64)
    diff = float(np.max(np.abs(ref - ours)))
    print(f"transformers {__import__('transformers').__version__} MixtralForCausalLM vs dirmoe: "
          f"max abs logit difference {diff:.3e} (tol {opts['--tol']})")
    sys.exit(0 if diff <= float(opts["--tol"]) else 1)


if __name__ == "__main__":
    main()
