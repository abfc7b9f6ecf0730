#!/usr/bin/env bash
# Overhead of load monitoring (every step) and profiling (default rate, every 10th step) on the
# default job: runs configs/tiny.yaml on 2 ranks for STEPS steps, interleaving
#   base:     BASE_BIN (a dirmoe built without the monitor and the profiler), if given
#   monitor:  this dirmoe with profile.every=0 (monitor on, profiling off)
#   default:  this dirmoe with the defaults (monitor on, profile.every=10, trace on)
# REPS times each, and prints per variant the median over runs of the median step_time_s, of the
# training wall time (the "done: N steps in X s" line) and of the CPU time (user + sys of the whole
# job). NP ranks (default 2; with NP=1 the job is one process with parallel.ep=1, whose CPU time
# is the least disturbed by other load on the machine: no rank waits in MPI polling).
#   [NP=1] bash bench/observe/bench_overhead.sh build/bin/dirmoe [BASE_BIN] [STEPS] [REPS]
set -euo pipefail
BIN=${1:?usage: bench_overhead.sh DIRMOE_BIN [BASE_BIN] [STEPS] [REPS]}
BASE=${2:-}
STEPS=${3:-40}
REPS=${4:-3}
NP=${NP:-2}
cd "$(dirname "$0")/../.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
common=(train --config configs/tiny.yaml --set train.steps="$STEPS" --set train.eval_interval=0
        --set train.eval_batches=1)
[ "$NP" = 1 ] && common+=(--set parallel.ep=1)
variants=(monitor default)
[ -n "$BASE" ] && variants=(base "${variants[@]}")
for rep in $(seq 1 "$REPS"); do
  for v in "${variants[@]}"; do
    case $v in
      base) cmd=("$BASE" "${common[@]}") ;;
      monitor) cmd=("$BIN" "${common[@]}" --set profile.every=0) ;;
      default) cmd=("$BIN" "${common[@]}") ;;
    esac
    dir="$WORK/$v.$rep"
    cpu=$(python3 -c "
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], stdout=open('$dir.log', 'w'), stderr=subprocess.STDOUT)
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print('%.2f' % (u.ru_utime + u.ru_stime)); sys.exit(r.returncode)" \
      mpirun -np "$NP" "${cmd[@]}" --run-dir "$dir")
    wall=$(sed -n 's/.*done: [0-9]* steps in \([0-9.]*\) s.*/\1/p' "$dir.log")
    step=$(python3 -c "
import json, statistics, sys
t = [json.loads(l)['step_time_s'] for l in open('$dir/metrics.jsonl') if '\"loss\"' in l]
print('%.4f' % statistics.median(t))")
    echo "$v $rep $step $wall $cpu" | tee -a "$WORK/results"
  done
done
python3 - "$WORK/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for v, _, step, wall, cpu in rows:
    by.setdefault(v, []).append((float(step), float(wall), float(cpu)))
ref = None
print("variant   median step_time_s   median training wall s   median CPU s (user+sys)")
for v in ("base", "monitor", "default"):
    if v not in by: continue
    m = [statistics.median(x[i] for x in by[v]) for i in range(3)]
    if ref is None: ref = m
    print("%-8s  %.4f (%+.1f%%)      %.2f (%+.1f%%)           %.2f (%+.1f%%)" % (
        v, m[0], 100 * (m[0] / ref[0] - 1), m[1], 100 * (m[1] / ref[1] - 1), m[2], 100 * (m[2] / ref[2] - 1)))
PY
