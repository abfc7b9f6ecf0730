#!/usr/bin/env python3
"""One table from dirmoe run directories (metrics.jsonl): final train loss (mean of the last 10
steps) and eval loss, active experts per token (mean and per layer, last 10 steps; and the mean
over the whole run), the share of tokens without an expert, the worst layer's load max/mean and
CV (mean of the last 10 steps), dead experts at the end, median tokens/s.
  python3 bench/compare/compare_table.py [--k K] RUN_DIR...   (a directory of run directories too)
"""
import argparse
import json
import os
import statistics
import sys


def records(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"compare_table: {path}:{n}: unreadable line skipped", file=sys.stderr)
    return out


def summary(run_dir, last=10):
    recs = records(run_dir)
    steps = [r for r in recs if "loss" in r]
    if not steps:
        raise SystemExit(f"compare_table: {run_dir}: no training step in metrics.jsonl")
    tail = steps[-last:]
    evals = [r["eval_loss"] for r in recs if "eval_loss" in r]
    L = len(tail[-1]["layers"])
    per_layer = [statistics.fmean(r["layers"][l]["active_experts"] for r in tail) for l in range(L)]
    worst = [max(r["layers"], key=lambda x: x["load_max_over_mean"]) for r in tail]
    router = os.path.basename(os.path.normpath(run_dir))
    return {
        "router": router,
        "steps": steps[-1]["step"],
        "train": statistics.fmean(r["loss"] for r in tail),
        "eval": evals[-1] if evals else float("nan"),
        "active": statistics.fmean(r["active_experts"] for r in tail),
        "active_run": statistics.fmean(r["active_experts"] for r in steps),
        "per_layer": per_layer,
        "no_expert": statistics.fmean(
            statistics.fmean(l.get("no_expert", 0.0) for l in r["layers"]) for r in tail),
        "load": statistics.fmean(w["load_max_over_mean"] for w in worst),
        "cv": statistics.fmean(w.get("load_cv", float("nan")) for w in worst),
        "dead": steps[-1].get("dead_experts", 0),
        "tok_s": statistics.median(r["tokens_per_s"] for r in steps),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=None, help="the active-expert budget, for the title")
    ap.add_argument("runs", nargs="+")
    a = ap.parse_args()
    dirs = []
    for d in a.runs:
        if os.path.exists(os.path.join(d, "metrics.jsonl")):
            dirs.append(d)
        elif os.path.isdir(d):
            dirs += sorted(os.path.join(d, x) for x in os.listdir(d)
                           if os.path.exists(os.path.join(d, x, "metrics.jsonl")))
        else:
            raise SystemExit(f"compare_table: {d}: no metrics.jsonl")
    rows = [summary(d) for d in dirs]
    if a.k is not None:
        print(f"budget k = {a.k}; train loss and figures: mean of the last 10 steps (whole run: every"
              " step); eval: last")
    print("| router | steps | train loss | eval loss | experts/token | per layer | whole run |"
          " no expert |"
          " load max/mean | load CV | dead experts | tokens/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['router']} | {r['steps']} | {r['train']:.3f} | {r['eval']:.3f} |"
              f" {r['active']:.2f} | {' / '.join(f'{v:.2f}' for v in r['per_layer'])} |"
              f" {r['active_run']:.2f} |"
              f" {100 * r['no_expert']:.1f}% | {r['load']:.2f} | {r['cv']:.2f} | {r['dead']} |"
              f" {r['tok_s']:.0f} |")


if __name__ == "__main__":
    main()
