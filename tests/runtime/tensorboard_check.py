#!/usr/bin/env python3
"""A dirmoe run directory as TensorBoard itself loads it, against its metrics.jsonl.

  python3 tests/runtime/tensorboard_check.py RUN_DIR [RUN_DIR ...]

Needs the `tensorboard` package (the GPU machine has it; the build machine and CI do not: there
tensorboard_events_test.py checks the same files with an independent decoder). For each run
directory: every event file is read with TensorBoard's EventFileLoader (its TFRecord reader: a
cut-off last record is skipped, as when a run was killed while writing) and must start with
file_version "brain.Event:2"; then the whole directory is loaded with TensorBoard's
EventAccumulator (the loader `tensorboard --logdir` uses without its Rust data server; it merges
the files in name order and, on a SessionLog START, drops what earlier files hold at later steps),
and each tag's (step, value) series must equal the one metrics.jsonl gives by the README's tag
scheme (tb_metrics.py), values rounded to float32. Prints one line per tag (OK or MISMATCH with
the first differing steps) and a summary; exits 1 on any mismatch, 2 when it cannot run.
"""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tb_metrics  # noqa: E402

try:
    from tensorboard.backend.event_processing import event_accumulator, event_file_loader
except ImportError as e:
    print("tensorboard_check: cannot import TensorBoard (%s) with %s; install the tensorboard "
          "package or use the interpreter that has it" % (e, sys.executable))
    sys.exit(2)


def load_files(run_dir):
    """[(name, [events])] with TensorBoard's own per-file loader; a problem is a message."""
    names = sorted(n for n in os.listdir(run_dir) if "tfevents" in n)
    out, problems = [], []
    for name in names:
        path = os.path.join(run_dir, name)
        try:
            events = list(event_file_loader.EventFileLoader(path).Load())
        except Exception as e:  # a loader error is a finding, not a crash of the check
            problems.append("%s: EventFileLoader failed: %r" % (name, e))
            continue
        if not events or events[0].WhichOneof("what") != "file_version" or \
                events[0].file_version != "brain.Event:2":
            problems.append("%s: first record is not file_version brain.Event:2" % name)
        out.append((name, events))
    if not names:
        problems.append("no events.out.tfevents.* file in %s" % run_dir)
    return out, problems


def accumulate(run_dir):
    """tag -> {step: value} as TensorBoard's EventAccumulator serves the directory."""
    acc = event_accumulator.EventAccumulator(
        run_dir, size_guidance={event_accumulator.SCALARS: 0})  # 0 = keep every point
    acc.Reload()
    series, dup = {}, []
    for tag in acc.Tags().get("scalars", []):
        points = {}
        for ev in acc.Scalars(tag):
            if ev.step in points:
                dup.append("%s step %d" % (tag, ev.step))
            points[ev.step] = ev.value
        series[tag] = points
    return series, dup


def same(a, b):
    # EventAccumulator hands simple_value back as a Python float of the stored float32.
    return tb_metrics.same_value(tb_metrics.as_float32(a), b)


def check_run(run_dir):
    want, steps, note = tb_metrics.expected_series(run_dir)
    files, problems = load_files(run_dir)
    got, dup = accumulate(run_dir)
    print("%s: %d event file(s) %s; metrics.jsonl: %d records, steps %s..%s%s" %
          (run_dir, len(files), [n for n, _ in files], len(steps), min(steps, default="-"),
           max(steps, default="-"), "; " + note if note else ""))
    for name, events in files:
        starts = [e.step for e in events if e.WhichOneof("what") == "session_log"]
        print("  %s: %d records read by EventFileLoader, SessionLog START at %s" %
              (name, len(events), starts))
    bad = len(problems)
    for p in problems:
        print("  PROBLEM " + p)
    for d in dup:
        print("  PROBLEM duplicate step after loading: " + d)
    bad += len(dup)
    for tag in sorted(set(want) | set(got)):
        w, g = want.get(tag, {}), got.get(tag, {})
        diff = [s for s in sorted(set(w) | set(g))
                if s not in w or s not in g or not same(w[s], g[s])]
        if not diff:
            last = max(w) if w else None
            print("  OK       %-36s %4d steps%s" %
                  (tag, len(w), "" if last is None else ", step %d = %.7g" % (last, w[last])))
            continue
        bad += 1
        where = ", ".join("step %d: metrics %s events %s" %
                          (s, w.get(s, "absent"), g.get(s, "absent")) for s in diff[:3])
        print("  MISMATCH %-36s %d of %d steps differ (%s)" %
              (tag, len(diff), len(set(w) | set(g)), where))
    print("  %s: %d tags, %d problem(s)" % ("PASS" if bad == 0 else "FAIL", len(want), bad))
    return bad


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2
    bad = 0
    for run_dir in argv[1:]:
        if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
            print("%s: no metrics.jsonl" % run_dir)
            bad += 1
            continue
        try:
            bad += check_run(run_dir)
        except Exception as e:  # name the run, then fail
            print("%s: check failed: %r" % (run_dir, e))
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
