#!/usr/bin/env bash
# GPU test recipe: `--pack` (build machine) copies the GPU test binaries into two carry folders, each
# under the device tool's 64 MiB: build-gpu/carry (the op, check and NCCL tests) and
# build-gpu/carry-model (the whole-model test and `dirmoe` for `bench train`, with the CPU libraries
# they need). With no argument (GPU
# machine) it runs the binaries found in $CARRY directly, no CTest, in under ~9.5 minutes, writing
# to $OUT summary.txt (verdicts, failed tests, worst error per op, TFLOP/s, model parity), env.txt
# and one log per run.
set -u
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD
CARRY=${CARRY:-build-gpu/carry}
KERNEL_BINS="test_kernels_cuda test_cuda_check test_comm_nccl"
MODEL_BINS="test_model_cuda dirmoe"
# Shared libraries of the build machine that the GPU machine lacks: carried in <carry>/lib.
CARRY_LIBS="libyaml-cpp libopenblas libgfortran libquadmath"

if [ "${1:-}" = "--help" ]; then
  cat <<'EOF'
Build (build machine, repository root):
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DDIRMOE_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DDIRMOE_BUILD_TESTS=ON
  ninja -C build-gpu -j2 test_kernels_cuda test_cuda_check test_comm_nccl test_model_cuda dirmoe
  tests/gpu/run_on_gpu.sh --pack          # -> build-gpu/carry (38 MB), build-gpu/carry-model (55 MB)
Run (GPU machine, repository root), one call per carry folder:
  tests/gpu/run_on_gpu.sh                                   # carry build-gpu/carry
  CARRY=build-gpu/carry-model tests/gpu/run_on_gpu.sh       # carry build-gpu/carry-model
Logs under $OUT (default ./gpu-logs).
EOF
  exit 0
fi

# pack DIR BINS...: the binaries and the carried libraries they load.
pack() {
  local dir=$1 b so want
  shift
  rm -rf "$dir" && mkdir -p "$dir/lib" || exit 1
  for b in "$@"; do
    cp "build-gpu/bin/$b" "$dir/" || { echo "missing build-gpu/bin/$b: build it first" >&2; exit 1; }
  done
  for b in "$@"; do
    ldd "$dir/$b" | awk '$3 ~ /^\// {print $3}'
  done | sort -u | while read -r so; do
    for want in $CARRY_LIBS; do
      case "$(basename "$so")" in "$want".so*) cp -L "$so" "$dir/lib/" ;; esac
    done
  done
  ls -l "$dir" "$dir/lib"
  du -sh "$dir"
}

if [ "${1:-}" = "--pack" ]; then
  pack build-gpu/carry $KERNEL_BINS
  pack build-gpu/carry-model $MODEL_BINS
  exit 0
fi

OUT=${OUT:-$ROOT/gpu-logs}
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
ENV=$OUT/env.txt
: >"$SUMMARY"
START=$(date +%s)
BUDGET=${BUDGET:-570}  # seconds for the whole script (the device run limit is 600)

note() { echo "$*" | tee -a "$SUMMARY"; }
remaining() { echo $((BUDGET - ($(date +%s) - START))); }
# step_timeout MAX: MAX, or less when the budget is running out (0 = skip).
step_timeout() {
  local left
  left=$(remaining)
  if [ "$left" -lt 20 ]; then echo 0; elif [ "$left" -lt "$1" ]; then echo $((left - 10)); else echo "$1"; fi
}

BINS=""
for b in $KERNEL_BINS $MODEL_BINS; do
  [ -x "$CARRY/$b" ] && BINS="$BINS $b"
done
[ -n "$BINS" ] || { note "FATAL: no test binary in $CARRY (carry a folder made by --pack)"; exit 2; }
has() { [ -x "$CARRY/$1" ]; }

# ---- environment and shared libraries ------------------------------------------------------------
{
  echo "== date: $(date -u)"
  echo "== host: $(uname -a)"
  echo "== nvidia-smi"
  nvidia-smi 2>&1 || echo "(nvidia-smi failed)"
  echo "== mpirun: $(command -v mpirun || echo none) $(mpirun --version 2>/dev/null | head -1)"
} >"$ENV" 2>&1

# Resolve libraries ldd cannot find (CUDA runtime, cuBLAS, NCCL may sit in CUDA or pip folders).
missing_libs() { for b in $BINS; do LD_LIBRARY_PATH="$ROOT/$CARRY/lib" ldd "$CARRY/$b" 2>/dev/null | awk '/not found/ {print $1}'; done | sort -u; }
extra=""
for lib in $(missing_libs); do
  dir=$(timeout 60 find /usr/local /usr/lib /opt / -xdev -name "$lib" -print 2>/dev/null \
        | head -1 | xargs -r dirname)
  if [ -n "$dir" ]; then extra="$extra:$dir"; echo "found $lib in $dir" >>"$ENV"; fi
done
export LD_LIBRARY_PATH="$ROOT/$CARRY/lib:${extra#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{
  echo "== LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  for b in $BINS; do echo "== ldd $b"; ldd "$CARRY/$b"; done
} >>"$ENV" 2>&1
still=$(missing_libs | tr '\n' ' ')

note "dirmoe GPU tests on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
[ -n "$still" ] && note "WARNING: unresolved shared libraries: $still (see env.txt)"

# ---- runs ------------------------------------------------------------------------------------------
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-8}
GTEST="--gtest_color=no --gtest_print_time=1"

# run NAME LOG MAX_SECONDS CMD...: runs under timeout -s KILL, records the verdict.
run() {
  local name=$1 log=$2 max=$3 t rc
  shift 3
  t=$(step_timeout "$max")
  if [ "$t" -eq 0 ]; then note "SKIP  $name (time budget spent)"; return; fi
  echo "== $name (timeout ${t}s): $*" >"$log"
  timeout -s KILL "$t" "$@" >>"$log" 2>&1
  rc=$?
  local passed failed skipped
  passed=$(grep -ac '^\[       OK \]' "$log")
  failed=$(grep -a '^\[  FAILED  \] .*(' "$log" | sed 's/^\[  FAILED  \] //; s/ (.*//' | sort -u)
  skipped=$(grep -ac '^\[  SKIPPED \] .*(' "$log")
  if [ "$rc" -eq 0 ]; then
    note "PASS  $name: $passed tests passed, $skipped skipped ($(basename "$log"))"
  else
    [ "$rc" -eq 137 ] && note "FAIL  $name: killed after ${t}s (hang or too slow)" \
                      || note "FAIL  $name: exit $rc, $passed passed ($(basename "$log"))"
    [ -n "$failed" ] && echo "$failed" | sed 's/^/        failed: /' | tee -a "$SUMMARY"
  fi
}

has test_cuda_check && run "test_cuda_check" "$OUT/check.log" 60 "$CARRY/test_cuda_check" $GTEST
has test_kernels_cuda && run "test_kernels_cuda" "$OUT/kernels.log" 300 "$CARRY/test_kernels_cuda" $GTEST

MPIENV="OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1 NCCL_DEBUG=WARN"
# mpi_run NAME LOG MAX NP BIN: NP ranks sharing the GPU, each with its own NCCL_HOSTID.
mpi_run() {
  run "$1" "$2" "$3" env $MPIENV mpirun -np "$4" --oversubscribe --bind-to none -x LD_LIBRARY_PATH \
    sh -c "NCCL_HOSTID=h\$OMPI_COMM_WORLD_RANK exec $5 $GTEST"
}
if command -v mpirun >/dev/null 2>&1; then
  if has test_comm_nccl; then
    mpi_run "test_comm_nccl np1" "$OUT/nccl_np1.log" 90 1 "$ROOT/$CARRY/test_comm_nccl"
    mpi_run "test_comm_nccl np2 (one GPU shared, NCCL_HOSTID per rank)" "$OUT/nccl_np2.log" 150 2 \
      "$ROOT/$CARRY/test_comm_nccl"
  fi
  if has test_model_cuda; then
    mpi_run "test_model_cuda np1 (GPU model against the CPU model)" "$OUT/model_np1.log" 150 1 \
      "$ROOT/$CARRY/test_model_cuda"
    mpi_run "test_model_cuda np2 (EP=2 through NCCL)" "$OUT/model_np2.log" 200 2 \
      "$ROOT/$CARRY/test_model_cuda"
    mpi_run "test_model_cuda np4 (EP=4 through NCCL)" "$OUT/model_np4.log" 200 4 \
      "$ROOT/$CARRY/test_model_cuda"
  fi
  if has dirmoe; then
    for r in topk dirmoe probmoe; do
      run "bench train llama185m-e8-$r" "$OUT/bench_$r.log" 150 env $MPIENV mpirun -np 1 \
        --bind-to none -x LD_LIBRARY_PATH "$ROOT/$CARRY/dirmoe" bench train \
        --config "configs/llama185m-e8-$r.yaml" --steps 10 --warmup 3
    done
  fi
else
  note "SKIP  MPI runs: no mpirun on this machine; single processes without mpirun instead"
  has test_comm_nccl && run "test_comm_nccl singleton" "$OUT/nccl_np1.log" 90 "$CARRY/test_comm_nccl" $GTEST
  has test_model_cuda && run "test_model_cuda singleton" "$OUT/model_np1.log" 150 "$CARRY/test_model_cuda" $GTEST
fi

if grep -q 'GPU available: no' "$OUT/check.log" 2>/dev/null; then
  note "WARNING: the tests saw NO GPU (cudaGetDeviceCount failed or returned 0): every GPU test skipped"
fi

# compute-sanitizer on the small cases (out-of-bounds, uninitialised reads, shared-memory races).
SMALL='Grid/*RouterCuda.*N7_*:TopKRouterKernels.*:Grid/*one*:Grid/*odd*:Grid/*small*:Grid/*single*:Grid/*gqa_s67*:Grid/*hd32_s130*:Grid/*hd96*:Grid/*hd128_s200*:Grid/*padded*:Grid/*contiguous_ep2*:Grid/*uneven*:Grid/*capacity*:Grid/*no_tokens*:Grid/*rows_not*:Grid/*misaligned*:MoeCudaRegroup.*:*Edge*:AdamW*:GradNorm*'
if has test_kernels_cuda && command -v compute-sanitizer >/dev/null 2>&1; then
  run "compute-sanitizer memcheck (small cases)" "$OUT/memcheck.log" 150 \
    compute-sanitizer --tool memcheck --error-exitcode 9 "$CARRY/test_kernels_cuda" $GTEST \
    "--gtest_filter=$SMALL"
  run "compute-sanitizer racecheck (attention, rmsnorm, moe)" "$OUT/racecheck.log" 120 \
    compute-sanitizer --tool racecheck --error-exitcode 9 "$CARRY/test_kernels_cuda" $GTEST \
    '--gtest_filter=Grid/AttentionCuda.*gqa_s67_f32:Grid/AttentionCuda.*hd32_s130_bf16:Grid/RmsNormCuda.*rows_not*:Grid/MoeCuda.*uneven*:Grid/CrossEntropyCuda.*padded_64*'
  grep -a "ERROR SUMMARY" "$OUT/memcheck.log" "$OUT/racecheck.log" 2>/dev/null | sed 's/^/        /' | tee -a "$SUMMARY"
elif has test_kernels_cuda; then
  note "SKIP  compute-sanitizer: not installed"
fi

# ---- digest: worst error per op (from the [ gpu-cpu ] lines) and throughput ----------------------
{
  echo
  echo "== worst error per op over the grid (n, max abs, max rel, tolerance, bad):"
  grep -ah '^\[ gpu-cpu \]' "$OUT/kernels.log" 2>/dev/null | sed 's/^\[ gpu-cpu \] //' | awk '
    { split($1, p, "/"); key = p[1] "/" p[3]; a = ""; b = "";
      for (i = 2; i <= NF; ++i) { if ($i ~ /^max_abs=/) a = substr($i, 9); if ($i ~ /^bad=/ || $i ~ /^mismatches=/) b = $i }
      if (!(key in worst) || a + 0 > worst[key] + 0) { worst[key] = a; line[key] = $0 }
      if (b !~ /=0$/) bad[key] = bad[key] " " p[2] }
    END { for (k in line) printf "  %s%s\n", line[k], (k in bad ? "   <-- BAD in:" bad[k] : "") }' | sort
  echo
  echo "== throughput:"
  grep -ah '^\[ perf    \]' "$OUT/kernels.log" 2>/dev/null | sed 's/^\[ perf    \] /  /'
  echo
  echo "== GPU model against the CPU model:"
  grep -ah '^\[ model   \]' "$OUT"/model_np*.log 2>/dev/null | sed 's/^/  /'
  echo
  echo "== bench train:"
  for f in "$OUT"/bench_*.log; do [ -f "$f" ] && sed 's/^/  /' "$f"; done
  echo
  echo "== watchdog message seen by the NCCL test:"
  grep -ah 'watchdog message' "$OUT/nccl_np2.log" 2>/dev/null | head -2 | cut -c1-300
  echo
  echo "elapsed $(( $(date +%s) - START )) s; logs in $OUT"
} | tee -a "$SUMMARY"

grep -q '^FAIL' "$SUMMARY" && exit 1
exit 0
