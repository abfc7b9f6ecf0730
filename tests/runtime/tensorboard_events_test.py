#!/usr/bin/env python3
"""TensorBoard event files of real dirmoe runs, read by an independent decoder: TFRecord framing
with every CRC checked by a bitwise CRC-32C written here, Event/Summary/SessionLog classes built
with Python's protobuf library from a descriptor written here (event.proto and summary.proto field
numbers), and the values held against metrics.jsonl step by step (tb_metrics.py derives them by
the README's tag scheme). Runs: a dirmoe-router run on 2 ranks (EP=2) with evaluations,
profiled steps and a skipped non-finite step; a run whose writing rank is SIGKILLed in step 4,
resumed from its step-2 checkpoint (a second file whose SessionLog START makes TensorBoard drop
the orphaned step 3); output.tensorboard=false; and the first run's file cut at every byte, which
must still give every whole record before the cut.

usage: tensorboard_events_test.py --bin DIRMOE --mpiexec MPIEXEC --source SRC_DIR --work DIR
"""

import argparse
import math
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tb_metrics  # noqa: E402

try:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
except ImportError:
    sys.exit("tensorboard_events_test: Python's protobuf library is missing "
             "(Debian python3-protobuf, installed by launch/setup.sh); interpreter: " +
             sys.executable)

FAILURES = []


def check(cond, msg):
    if not cond:
        FAILURES.append(msg)
        print("FAIL: " + msg)
    return cond


# ---- CRC-32C, bit by bit (reflected Castagnoli polynomial), and the TFRecord mask ----

CRC_SEEN = {}


def crc32c(data):
    if data in CRC_SEEN:  # the truncation checks read the same records many times
        return CRC_SEEN[data]
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    CRC_SEEN[bytes(data)] = crc ^ 0xFFFFFFFF
    return crc ^ 0xFFFFFFFF


def masked(crc):
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# ---- message classes from a hand-written descriptor ----

def build_classes():
    F = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(name="dirmoe_check/event.proto", package="check",
                                           syntax="proto3")

    def field(msg, name, number, ftype, type_name=None, label=F.LABEL_OPTIONAL, oneof=None):
        fd = msg.field.add(name=name, number=number, type=ftype, label=label)
        if type_name:
            fd.type_name = type_name
        if oneof is not None:
            fd.oneof_index = oneof

    summary = f.message_type.add(name="Summary")
    value = summary.nested_type.add(name="Value")
    value.oneof_decl.add(name="value")
    field(value, "node_name", 7, F.TYPE_STRING)
    field(value, "tag", 1, F.TYPE_STRING)
    field(value, "simple_value", 2, F.TYPE_FLOAT, oneof=0)
    field(value, "obsolete_old_style_histogram", 3, F.TYPE_BYTES, oneof=0)
    field(summary, "value", 1, F.TYPE_MESSAGE, ".check.Summary.Value", F.LABEL_REPEATED)

    log = f.message_type.add(name="SessionLog")
    status = log.enum_type.add(name="SessionStatus")
    for name, number in (("STATUS_UNSPECIFIED", 0), ("START", 1), ("STOP", 2), ("CHECKPOINT", 3)):
        status.value.add(name=name, number=number)
    field(log, "status", 1, F.TYPE_ENUM, ".check.SessionLog.SessionStatus")
    field(log, "checkpoint_path", 2, F.TYPE_STRING)
    field(log, "msg", 3, F.TYPE_STRING)

    source = f.message_type.add(name="SourceMetadata")
    field(source, "writer", 1, F.TYPE_STRING)

    event = f.message_type.add(name="Event")
    event.oneof_decl.add(name="what")
    field(event, "wall_time", 1, F.TYPE_DOUBLE)
    field(event, "step", 2, F.TYPE_INT64)
    field(event, "file_version", 3, F.TYPE_STRING, oneof=0)
    field(event, "graph_def", 4, F.TYPE_BYTES, oneof=0)
    field(event, "summary", 5, F.TYPE_MESSAGE, ".check.Summary", oneof=0)
    field(event, "session_log", 7, F.TYPE_MESSAGE, ".check.SessionLog", oneof=0)
    field(event, "meta_graph_def", 9, F.TYPE_BYTES, oneof=0)
    field(event, "source_metadata", 10, F.TYPE_MESSAGE, ".check.SourceMetadata")

    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    desc = pool.FindMessageTypeByName("check.Event")
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(desc), desc
    return message_factory.MessageFactory(pool).GetPrototype(desc), desc


Event, EVENT_DESC = build_classes()
START = EVENT_DESC.fields_by_name["session_log"].message_type.enum_types_by_name[
    "SessionStatus"].values_by_name["START"].number


# ---- TFRecord reader ----

def read_records(data, path):
    """[(offset, payload)] of the whole records, and None or a note on a cut-off tail. A CRC
    mismatch is a failure."""
    out, pos = [], 0
    while pos < len(data):
        if len(data) - pos < 12:
            return out, "%d-byte partial header at %d" % (len(data) - pos, pos)
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (hcrc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if not check(hcrc == masked(crc32c(header)), "%s@%d: length CRC" % (path, pos)):
            return out, "bad length CRC at %d" % pos
        end = pos + 12 + length + 4
        if end > len(data):
            return out, "record at %d cut off (%d of %d bytes)" % (pos, len(data) - pos,
                                                                 end - pos)
        payload = data[pos + 12:pos + 12 + length]
        (dcrc,) = struct.unpack("<I", data[end - 4:end])
        check(dcrc == masked(crc32c(payload)), "%s@%d: data CRC" % (path, pos))
        out.append((pos, payload))
        pos = end
    return out, None


def decode(payload, where):
    ev = Event()
    ev.ParseFromString(payload)
    # Re-encoding gives back the same bytes: no unknown or misnumbered field, canonical order.
    check(ev.SerializeToString(deterministic=True) == payload, "%s: re-encoding differs" % where)
    return ev


def event_files(run_dir):
    return sorted(n for n in os.listdir(run_dir) if "tfevents" in n)


def load_file(run_dir, name):
    path = os.path.join(run_dir, name)
    with open(path, "rb") as f:
        data = f.read()
    recs, tail = read_records(data, path)
    return data, [(off, decode(p, "%s@%d" % (path, off))) for off, p in recs], tail


def merged_like_tensorboard(run_dir):
    """tag -> {step: value} over the run's event files in name order, a SessionLog START at
    step s dropping what earlier files hold at steps >= s (TensorBoard's purge on restart)."""
    series = {}
    for name in event_files(run_dir):
        _, events, _ = load_file(run_dir, name)
        for _, ev in events:
            if ev.WhichOneof("what") == "session_log" and ev.session_log.status == START:
                for points in series.values():
                    for s in [s for s in points if s >= ev.step]:
                        del points[s]
            elif ev.WhichOneof("what") == "summary":
                for v in ev.summary.value:
                    check(v.WhichOneof("value") == "simple_value", "%s: not a simple_value" % v.tag)
                    check(ev.step not in series.get(v.tag, {}),
                          "%s: step %d twice in one file" % (v.tag, ev.step))
                    series.setdefault(v.tag, {})[ev.step] = v.simple_value
    return series


def compare_with_metrics(run_dir, label):
    want, steps, note = tb_metrics.expected_series(run_dir)
    got = merged_like_tensorboard(run_dir)
    check(note is None, "%s: %s" % (label, note))
    check(sorted(got) == sorted(want),
          "%s: tags differ: only in events %s, only in metrics.jsonl %s" %
          (label, sorted(set(got) - set(want)), sorted(set(want) - set(got))))
    points = equal = 0
    for tag in sorted(want):
        w, g = want[tag], got.get(tag, {})
        ok = sorted(w) == sorted(g) and all(tb_metrics.same_value(w[s], g[s]) for s in w)
        points += len(w)
        equal += sum(1 for s in w if s in g and tb_metrics.same_value(w[s], g[s]))
        check(ok, "%s: %s differs: metrics %s events %s" % (label, tag, w, g))
    print("%s: %d tags, %d points over steps %d..%d: %d equal to metrics.jsonl (float32)" %
          (label, len(want), points, min(steps), max(steps), equal))
    return want


def run(cmd, env=None, expect=0):
    t0 = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                       timeout=300)
    out = p.stdout.decode(errors="replace")
    if not check(p.returncode == expect if expect is not None else p.returncode != 0,
                 "exit %d (wanted %s): %s\n%s" % (p.returncode, "non-zero" if expect is None
                                                   else expect, " ".join(cmd), out)):
        raise SystemExit(1)
    return out, time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--mpiexec", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    corpus = os.path.join(a.source, "data", "brown", "brown_gpt2")
    if not os.path.exists(corpus + ".idx"):
        sys.exit("bundled corpus missing at %s.idx: run bash launch/data/build_default_corpus.sh"
                 % corpus)
    check(crc32c(b"123456789") == 0xE3069283, "bitwise CRC-32C check value")
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)

    def job(config, steps, run_dir, *sets, np=2):
        cmd = [a.mpiexec, "-n", str(np), "--oversubscribe", a.bin, "train", "--config",
               os.path.join(a.source, "configs", config), "--run-dir", run_dir]
        for s in ("data.paths=[%s]" % corpus, "model.hidden=64", "model.layers=2",
                  "model.ffn_hidden=128", "model.seq_len=32", "train.micro_batch=2",
                  "train.steps=%d" % steps, "train.eval_batches=1", "train.log_interval=1",
                  "train.warmup=2", "parallel.ep=%d" % np) + sets:
            cmd += ["--set", s]
        return cmd

    # 1. A dirmoe-router run: evaluations at 0, 3, 6; all-to-all profiled on steps 2, 4, 6; a NaN
    # gradient in step 5 (the step is skipped: grad_norm NaN, skipped true).
    plain = os.path.join(a.work, "plain")
    t_start = time.time()
    run(job("tiny-dirmoe.yaml", 6, plain, "train.eval_interval=3", "profile.every=2",
            "checkpoint.at_end=false"),
        env=dict(os.environ, DIRMOE_FAULT="nan:5:5:layers.1.attn.wq"))
    names = event_files(plain)
    host = socket.gethostname()
    check(len(names) == 1, "plain run: one event file, got %s" % names)
    m = re.fullmatch(r"events\.out\.tfevents\.(\d{10})\.(.+)", names[0])
    check(m is not None and m.group(2) == host,
          "file name %s is events.out.tfevents.<unix time>.%s" % (names[0], host))
    if m:
        check(int(t_start) - 1 <= int(m.group(1)) <= time.time(), "file time %s" % m.group(1))
    data, events, tail = load_file(plain, names[0])
    check(tail is None, "a normal exit leaves only whole records (%s)" % tail)
    kinds = [ev.WhichOneof("what") for _, ev in events]
    check(kinds[0] == "file_version" and events[0][1].file_version == "brain.Event:2",
          "first record is file_version brain.Event:2")
    check(events[0][1].source_metadata.writer == "dirmoe", "source_metadata.writer")
    check(kinds[1] == "session_log" and events[1][1].session_log.status == START and
          events[1][1].step == 0, "second record is SessionLog START at step 0")
    records, _ = tb_metrics.read_metrics(plain)
    summaries = [ev for _, ev in events if ev.WhichOneof("what") == "summary"]
    check(len(summaries) == len(records) and kinds[2:] == ["summary"] * len(records),
          "one summary event per metrics.jsonl line (%d vs %d)" % (len(summaries), len(records)))
    check([ev.step for ev in summaries] == [r["step"] for r in records], "steps in order")
    walls = [ev.wall_time for _, ev in events]
    check(all(x <= y for x, y in zip(walls, walls[1:])) and t_start - 1 <= walls[0] and
          walls[-1] <= time.time(), "wall times ordered and within the run")
    want = compare_with_metrics(plain, "plain run (dirmoe router, EP=2)")
    step5 = {v.tag: v.simple_value for ev in summaries if ev.step == 5 for v in ev.summary.value}
    check(math.isnan(step5.get("train/grad_norm", 0.0)) and step5.get("train/skipped") == 1.0,
          "step 5 (NaN gradient): train/grad_norm NaN and train/skipped 1, got %s / %s" %
          (step5.get("train/grad_norm"), step5.get("train/skipped")))
    for rec, ev in zip(records, summaries):
        got = {v.tag: v.simple_value for v in ev.summary.value}
        exp = {t: tb_metrics.as_float32(v) for t, v in tb_metrics.record_scalars(rec).items()}
        check(sorted(got) == sorted(exp) and
              all(tb_metrics.same_value(exp[t], got[t]) for t in exp),
              "step %d: the event equals its metrics.jsonl line" % rec["step"])
    print("tags (%d):" % len(want))
    for tag in sorted(want):
        pts = want[tag]
        print("  %-34s %d steps, step %d = %.7g" % (tag, len(pts), max(pts), pts[max(pts)]))
    offsets = [off for off, _ in events] + [len(data)]
    sizes = [offsets[i + 1] - offsets[i] for i in range(2, len(events))]
    train_rec = [n for n, ev in zip(sizes, summaries) if ev.step > 0]
    print("event file: %d bytes for %d records; %d-%d bytes per training step (%d scalars)" %
          (len(data), len(events), min(train_rec), max(train_rec),
           max(len(ev.summary.value) for ev in summaries)))

    # 2. The writing rank SIGKILLed in step 4 after the step-2 checkpoint, resumed to step 6.
    res = os.path.join(a.work, "resumed")
    env = dict(os.environ, DIRMOE_FAULT="kill:0:4")
    run(job("tiny.yaml", 6, res, "train.eval_interval=0", "checkpoint.interval=2", np=1),
        env=env, expect=None)
    first_files = event_files(res)
    _, ev1, tail1 = load_file(res, first_files[0])
    check(tail1 is None, "the killed run's file holds whole records only (%s)" % tail1)
    steps1 = sorted({ev.step for _, ev in ev1 if ev.WhichOneof("what") == "summary"})
    check(steps1 == [0, 1, 2, 3], "killed run's file holds steps 0-3, got %s" % steps1)
    time.sleep(1.1)  # a new second: the second file sorts after the first by name
    out, _ = run(job("tiny.yaml", 6, res, "train.eval_interval=0", "checkpoint.interval=2",
                     np=1) + ["--resume", "auto"])
    check("at step 2" in out, "resumed from step 2")
    files = event_files(res)
    check(len(files) == 2 and files[0] == first_files[0], "a second event file: %s" % files)
    _, ev2, tail2 = load_file(res, files[-1])
    check(tail2 is None, "resumed file whole")
    starts = [ev.step for _, ev in ev2 if ev.WhichOneof("what") == "session_log"]
    steps2 = [ev.step for _, ev in ev2 if ev.WhichOneof("what") == "summary"]
    check(starts == [3] and steps2 == [3, 4, 5, 6],
          "resumed file: START at 3 then steps 3-6, got %s / %s" % (starts, steps2))
    compare_with_metrics(res, "killed at step 4, resumed from step 2")
    print("resume: %s holds steps %s (step 3 orphaned), %s starts at %d with steps %s" %
          (files[0], steps1, files[1], starts[0] if starts else -1, steps2))

    # 3. output.tensorboard=false: no event file, metrics.jsonl as usual.
    off = os.path.join(a.work, "off")
    run(job("tiny.yaml", 1, off, "train.eval_interval=0", "checkpoint.at_end=false",
            "output.tensorboard=false", np=1))
    check(event_files(off) == [] and len(tb_metrics.read_metrics(off)[0]) == 2,
          "output.tensorboard=false: no event file, metrics.jsonl written")

    # 4. The plain run's file cut at every byte: each copy reads back to its last whole record.
    whole, _ = read_records(data, "plain")
    bounds = [off for off, _ in whole[1:]] + [len(data)]  # where each record ends
    whole_ok = 0
    for c in range(1, len(data)):
        recs, t = read_records(data[:c], "cut at %d" % c)
        n = sum(1 for b in bounds if b <= c)
        ok = (len(recs) == n and (t is not None) == (c not in bounds) and
              [p for _, p in recs] == [p for _, p in whole[:n]])
        whole_ok += check(ok, "cut at %d: %d whole records expected, got %d (%s)" %
                          (c, n, len(recs), t))
    print("truncated copies: the %d-byte file cut at each of its %d inner offsets reads back to "
          "its last whole record, the partial tail reported: %d/%d" %
          (len(data), len(data) - 1, whole_ok, len(data) - 1))

    if FAILURES:
        print("%d check(s) failed" % len(FAILURES))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
