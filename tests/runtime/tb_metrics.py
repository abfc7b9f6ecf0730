"""The scalars a dirmoe run's TensorBoard event files must hold, derived from its metrics.jsonl by
the tag scheme of the README (section TensorBoard), independently of the C++ writer. Shared by
tensorboard_events_test.py (CTest) and tensorboard_check.py (TensorBoard's own loader)."""

import json
import math
import os
import struct


def as_float32(v):
    """v rounded to float32 as C++ static_cast<float> does (round to nearest even, overflow to
    infinity); None (a non-finite value that JSON wrote as null) becomes NaN."""
    if v is None:
        return math.nan
    v = float(v)
    if not math.isfinite(v):
        return v
    try:
        return struct.unpack("<f", struct.pack("<f", v))[0]
    except OverflowError:
        return math.copysign(math.inf, v)


def _scalar(v):
    """(True, value) for what the scheme exports: numbers, booleans (0/1) and null (a NaN or
    infinity written by the JSON library as null)."""
    if isinstance(v, bool):
        return True, 1.0 if v else 0.0
    if v is None:
        return True, None
    if isinstance(v, (int, float)):
        return True, v
    return False, None


def record_scalars(rec):
    """tag -> value (float64 or None) for one metrics.jsonl record."""
    out = {}
    for key, v in rec.items():
        if key == "step":
            continue
        ok, x = _scalar(v)
        if not ok:
            continue
        tag = "eval/" + key[len("eval_"):] if key.startswith("eval_") else "train/" + key
        out[tag] = x
    layers = rec.get("layers")
    if isinstance(layers, list):
        width = max(2, len(str(len(layers) - 1)))
        for i, layer in enumerate(layers):
            if not isinstance(layer, dict):
                continue
            for key, v in layer.items():
                ok, x = _scalar(v)
                if key != "layer" and ok:
                    out["layer_%0*d/%s" % (width, i, key)] = x
    return out


def read_metrics(run_dir):
    """The records of RUN_DIR/metrics.jsonl in file order. A last line cut short (a run killed
    while writing it) is left out and reported; any other unreadable line is an error."""
    path = os.path.join(run_dir, "metrics.jsonl")
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    records, note = [], None
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as e:
            if i == len(lines) - 1:
                note = "%s:%d: truncated last line left out" % (path, i + 1)
                continue
            raise ValueError("%s:%d: not JSON: %s" % (path, i + 1, e))
    return records, note


def expected_series(run_dir):
    """tag -> {step: float32 value (NaN for null)} over the run, and the steps in order."""
    records, note = read_metrics(run_dir)
    series, steps = {}, []
    for rec in records:
        step = rec["step"]
        if step in steps:
            raise ValueError("%s: step %d appears twice in metrics.jsonl" % (run_dir, step))
        steps.append(step)
        for tag, v in record_scalars(rec).items():
            series.setdefault(tag, {})[step] = as_float32(v)
    return series, steps, note


def same_value(a, b):
    """Equal float32 values. metrics.jsonl writes NaN and infinities alike as null (read as NaN),
    so a NaN on one side matches any non-finite value on the other."""
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return not math.isfinite(a) and not math.isfinite(b)
    return a == b
