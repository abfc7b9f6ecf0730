#!/usr/bin/env python3
"""PyTorch peers for the GPU suite, at the shapes dirmoe's own probes use (llama185m-e8 at
micro-batch 8 x 1024): causal GQA attention forward + backward (scaled_dot_product_attention), one
expert's SwiGLU GEMMs, the LM head with cross-entropy, and a whole eager training step of the topk
preset's model (bf16 autocast, fp32 master weights, fused AdamW).

Each figure prints as `[ torch   ] key=<key> <ms> ms <TFLOP/s> TFLOP/s`, with the keys and FLOP
conventions of tests/gpu/test_perf_cuda.cpp and `dirmoe bench train` (6 N_active + 6 L S d per
token, N_active without the input embedding, experts counted by the active experts per token), so
the suite's summary puts ours beside each.

  python3 bench/gpu/torch_reference.py [--only attn,gemm,lmhead,step] [--steps 5] [--tiny]
--tiny shrinks every shape (a check of the script itself, on the CPU where there is no GPU).
"""
import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F


def timed(fn, device, warmup=3, reps=10):
    """Mean milliseconds per call of fn after warm-up (CUDA events on the GPU)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) * 1e3 / reps


def report(key, flops, ms, extra=""):
    print(f"[ torch   ] key={key} {ms:.3f} ms {flops / (ms * 1e-3) / 1e12:.1f} TFLOP/s{extra}",
          flush=True)


def sdpa(q, k, v):
    """Causal attention with GQA: q [B,Hq,S,D], k/v [B,Hkv,S,D]."""
    if hasattr(F, "scaled_dot_product_attention"):
        try:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        except TypeError:  # before enable_gqa
            pass
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    S = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = torch.ones(S, S, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(mask, float("-inf")).softmax(-1) @ v


def bench_attention(dev, dt, s):
    B, S, Hq, Hkv, D = s["B"], s["S"], s["Hq"], s["Hkv"], s["hd"]
    g = torch.Generator(device="cpu").manual_seed(1)
    q = (torch.randn(B, Hq, S, D, generator=g) * 0.5).to(dev, dt).requires_grad_()
    k = (torch.randn(B, Hkv, S, D, generator=g) * 0.5).to(dev, dt).requires_grad_()
    v = torch.randn(B, Hkv, S, D, generator=g).to(dev, dt).requires_grad_()
    dout = torch.randn(B, Hq, S, D, generator=g).to(dev, dt)

    def step():
        out = sdpa(q, k, v)
        torch.autograd.grad(out, (q, k, v), dout)

    fwd = 2.0 * 2.0 * B * Hq * S * S * D / 2.0  # causal: half the score matrix
    report("attn_fwd_bwd", 3.5 * fwd, timed(step, dev))


def bench_expert_gemm(dev, dt, s):
    N, d, f = s["expert_tokens"], s["hidden"], s["ffn"]
    x = torch.randn(N, d, device=dev, dtype=dt)
    W1, W3 = torch.randn(f, d, device=dev, dtype=dt), torch.randn(f, d, device=dev, dtype=dt)
    W2 = torch.randn(d, f, device=dev, dtype=dt)
    a, b = x @ W1.t(), x @ W3.t()
    y = a @ W2.t()
    flops = 3 * 2.0 * N * d * f

    def fwd():
        (x @ W1.t(), x @ W3.t(), a @ W2.t())

    def bwd():  # dx and dW of each of the three GEMMs, as autograd computes them (bf16 GEMMs)
        (y @ W2, y.t() @ a)
        (a @ W1, a.t() @ x)
        (b @ W3, b.t() @ x)

    report("expert_gemm_fwd", flops, timed(fwd, dev))
    report("expert_gemm_bwd", 2 * flops, timed(bwd, dev))


def bench_lm_head(dev, dt, s):
    N, d, V, Vp = s["B"] * s["S"], s["hidden"], s["vocab"], s["vocab_padded"]
    g = torch.Generator(device="cpu").manual_seed(5)
    x = (torch.randn(N, d, generator=g) * 0.5).to(dev, dt).requires_grad_()
    W = (torch.randn(Vp, d, generator=g) * 0.02).to(dev, dt).requires_grad_()
    targets = (torch.arange(N) * 7919 % V).to(dev)

    def step():
        logits = x @ W.t()
        loss = F.cross_entropy(logits[:, :V].float(), targets)
        torch.autograd.grad(loss, (x, W))

    report("lm_head_ce_fwd_bwd", 3 * 2.0 * N * d * Vp, timed(step, dev))


# ---- the whole model (llama185m-e8-topk) --------------------------------------------------------
class RMSNorm(torch.nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight.to(x.dtype)


def rope(x, cos, sin):  # Hugging Face rotate_half layout, x [B,H,S,D]
    h = x.shape[-1] // 2
    rot = torch.cat((-x[..., h:], x[..., :h]), dim=-1)
    return x * cos + rot * sin


class MoE(torch.nn.Module):
    """Top-k softmax router with the Switch load-balancing loss and z-loss; experts run on the
    tokens routed to them (a loop over experts, as eager MoE code does)."""

    def __init__(self, d, f, E, k, aux, zc, std):
        super().__init__()
        self.E, self.k, self.aux, self.zc = E, k, aux, zc
        self.router = torch.nn.Linear(d, E, bias=False)
        self.w1 = torch.nn.Parameter(torch.randn(E, f, d) * std)
        self.w3 = torch.nn.Parameter(torch.randn(E, f, d) * std)
        self.w2 = torch.nn.Parameter(torch.randn(E, d, f) * std)

    def forward(self, x):
        T, d = x.shape
        logits = self.router(x).float()
        probs = logits.softmax(-1)
        w, idx = probs.topk(self.k, dim=-1)
        frac = F.one_hot(idx, self.E).float().sum(1).mean(0) / self.k
        loss = self.aux * self.E * (frac * probs.mean(0)).sum()
        loss = loss + self.zc * torch.logsumexp(logits, -1).pow(2).mean()
        out = torch.zeros_like(x)
        flat_idx, flat_w = idx.reshape(-1), w.reshape(-1)
        tok = torch.arange(T, device=x.device).repeat_interleave(self.k)
        order = flat_idx.argsort()
        counts = torch.bincount(flat_idx, minlength=self.E).tolist()
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            sel = order[start:start + n]
            start += n
            t = tok[sel]
            h = x[t]
            y = (F.silu(h @ self.w1[e].t().to(h.dtype)) * (h @ self.w3[e].t().to(h.dtype))) @ self.w2[e].t().to(h.dtype)
            out.index_add_(0, t, (y * flat_w[sel, None].to(y.dtype)).to(out.dtype))
        return out, loss


class Block(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        d, self.Hq, self.Hkv = c["hidden"], c["Hq"], c["Hkv"]
        self.hd = d // self.Hq
        std = c["init_std"]
        self.n1, self.n2 = RMSNorm(d, c["eps"]), RMSNorm(d, c["eps"])
        self.qkv = torch.nn.Linear(d, (self.Hq + 2 * self.Hkv) * self.hd, bias=False)
        self.o = torch.nn.Linear(self.Hq * self.hd, d, bias=False)
        self.moe = MoE(d, c["ffn"], c["experts"], c["k"], c["aux"], c["zloss"], std)

    def forward(self, x, cos, sin):
        B, S, d = x.shape
        q, k, v = self.qkv(self.n1(x)).split(
            [self.Hq * self.hd, self.Hkv * self.hd, self.Hkv * self.hd], dim=-1)
        q = rope(q.view(B, S, self.Hq, self.hd).transpose(1, 2), cos, sin)
        k = rope(k.view(B, S, self.Hkv, self.hd).transpose(1, 2), cos, sin)
        v = v.view(B, S, self.Hkv, self.hd).transpose(1, 2)
        a = sdpa(q, k, v).transpose(1, 2).reshape(B, S, d)
        x = x + self.o(a)
        m, loss = self.moe(self.n2(x).reshape(B * S, d))
        return x + m.view(B, S, d), loss


class Model(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed = torch.nn.Embedding(c["vocab_padded"], c["hidden"])
        self.blocks = torch.nn.ModuleList(Block(c) for _ in range(c["layers"]))
        self.norm = RMSNorm(c["hidden"], c["eps"])
        self.head = torch.nn.Linear(c["hidden"], c["vocab_padded"], bias=False)
        hd = c["hidden"] // c["Hq"]
        inv = 1.0 / (c["rope_base"] ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(c["S"]).float(), inv)
        self.register_buffer("cos", torch.cat((ang, ang), -1).cos(), persistent=False)
        self.register_buffer("sin", torch.cat((ang, ang), -1).sin(), persistent=False)

    def forward(self, tokens):
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        x = self.embed(inputs)
        aux = 0.0
        for b in self.blocks:
            x, l = b(x, self.cos.to(x.dtype), self.sin.to(x.dtype))
            aux = aux + l
        logits = self.head(self.norm(x))
        V = self.c["vocab"]
        ce = F.cross_entropy(logits[..., :V].float().reshape(-1, V), targets.reshape(-1))
        return ce, aux


def bench_step(dev, s, steps):
    c = s
    torch.manual_seed(0)
    model = Model(c).to(dev)
    total = sum(p.numel() for p in model.parameters())
    expert = sum(p.numel() for n, p in model.named_parameters() if ".moe.w" in n)
    embed = model.embed.weight.numel()
    n_active = total - embed - expert + expert * c["k"] / c["experts"]
    flops_per_token = 6 * n_active + 6 * c["layers"] * c["S"] * c["hidden"]
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            eps=1e-8, **({"fused": True} if dev.type == "cuda" else {}))
    B, S = c["B"], c["S"]
    g = torch.Generator(device="cpu").manual_seed(7)
    tokens = torch.randint(0, c["vocab"], (B, S + 1), generator=g).to(dev)
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            ce, aux = model(tokens)
        (ce + aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return ce

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ms = timed(step, dev, warmup=2, reps=steps)
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
    tok_s = B * S / (ms * 1e-3)
    report("step_topk", flops_per_token * B * S, ms,
           f" | {tok_s:.0f} tokens/s, peak {peak:.2f} GiB, {total / 1e6:.1f}M params "
           f"({n_active / 1e6:.1f}M active), eager, bf16 autocast, fused AdamW")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="attn,gemm,lmhead,step")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    s = dict(B=8, S=1024, Hq=12, Hkv=4, hd=64, hidden=768, ffn=3072, expert_tokens=1024,
             vocab=50257, vocab_padded=51200, layers=12, experts=8, k=1, aux=0.01, zloss=0.001,
             eps=1e-5, rope_base=1e6, init_std=0.01)
    if a.tiny:
        s.update(B=2, S=64, Hq=4, Hkv=2, hd=16, hidden=64, ffn=128, expert_tokens=64, vocab=500,
                 vocab_padded=512, layers=2)
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}"
          f"{' (tiny shapes)' if a.tiny else ''}", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    jobs = {"attn": lambda: bench_attention(dev, dt, s), "gemm": lambda: bench_expert_gemm(dev, dt, s),
            "lmhead": lambda: bench_lm_head(dev, dt, s), "step": lambda: bench_step(dev, s, a.steps)}
    failed = 0
    for name in a.only.split(","):
        try:
            jobs[name]()
        except Exception as e:  # one line per failed figure, the others still run
            print(f"[ torch   ] {name} FAILED: {type(e).__name__}: {e}", flush=True)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
