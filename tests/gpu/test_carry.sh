#!/usr/bin/env bash
# The GPU suite as far as a machine without a GPU can take it: packs the carry folder from this
# build, checks its size against the device tool's 64 MiB and that every carried ELF resolves its
# libraries against the carry plus a minimal system; then runs run_on_gpu.sh for real in a mount
# namespace where this machine's Open MPI and every carried library are hidden (the carried,
# relocated Open MPI must run 2 ranks there), its dry run, and the bad inputs: a carry from other
# sources, a missing library, a GPU the binaries were not built for (a stand-in nvidia-smi).
#   tests/gpu/test_carry.sh BUILD_DIR          (CTest: gpu_carry; exit 77 = skipped)
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD=${1:-build}
WORK=$(mktemp -d /tmp/dirmoe-carry-test.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
# expect FILE REGEX WHAT: FILE holds a line matching REGEX.
expect() { if grep -qE "$2" "$1"; then ok "$3"; else bad "$3 (no line /$2/ in $(basename "$1")):"; sed 's/^/      /' "$1" | head -40; fi; }
expect_not() { if grep -qE "$2" "$1"; then bad "$3:"; grep -E "$2" "$1" | sed 's/^/      /' | head -5; else ok "$3"; fi; }

if ! unshare -m true 2>/dev/null; then
  echo "skipped: mount namespaces are not available here (unshare -m needs root)"
  exit 77
fi

# 1. Pack (fast compression: the size check holds a fortiori for the default level).
CARRY_XZ_LEVEL=1 bash tests/gpu/carry.sh pack "$BUILD" "$WORK/gpu-carry" >"$WORK/pack.log" 2>&1 \
  && ok "pack" || { bad "pack:"; cat "$WORK/pack.log"; exit 1; }
PK=$WORK/gpu-pack
expect "$WORK/pack.log" '^carry: OK' "size within 64 MiB and every ELF resolves against carry + minimal system"
grep -E '^carry: .*MiB of 64 MiB|ELF files resolve' "$WORK/pack.log" | sed 's/^/      /'
for b in dirmoe test_kernels_cuda test_cuda_check test_comm_nccl test_model_cuda test_comm_mpi; do
  [ -x "$WORK/gpu-carry/bin/$b" ] && ok "carried bin/$b" || bad "bin/$b not carried"
done
[ -x "$WORK/gpu-carry/mpi/bin/orterun" ] && ok "carried Open MPI (orterun)" || bad "no orterun carried"

# 2. The dry run: every step planned, nothing executed.
CARRY=$PK bash tests/gpu/run_on_gpu.sh --dry-run >"$WORK/dry.log" 2>&1
rc=$?
[ "$rc" -eq 0 ] && ok "dry run exits 0" || bad "dry run exit $rc"
n=$(grep -c '^PLAN' "$WORK/dry.log")
[ "$n" -ge 12 ] && ok "dry run plans $n steps" || bad "dry run plans only $n steps"
expect "$WORK/dry.log" '^PLAN .*bench train llama185m-e8-topk.*train.grad_accum=1' "bench train planned with grad_accum 1"
expect "$WORK/dry.log" '^PLAN .*test_model_cuda np4' "EP=4 model test planned"
expect "$WORK/dry.log" '^PLAN .*torch_reference.py' "PyTorch peers planned"
expect "$WORK/dry.log" '^PLAN .*bench a2a np4.*--ep 4' "bench a2a planned on 4 ranks"
expect "$WORK/dry.log" '^PENDING GPU dirmoe train' "pending figures named with their command"
CARRY=$PK bash tests/gpu/run_on_gpu.sh --dry-run --quick >"$WORK/dryq.log" 2>&1
n=$(grep -c '^PLAN' "$WORK/dryq.log")
[ "$n" -ge 3 ] && [ "$n" -le 5 ] && ok "quick dry run plans $n steps" || bad "quick dry run plans $n steps"
CARRY=$PK bash tests/gpu/run_on_gpu.sh --bogus >"$WORK/bogus.log" 2>&1
[ $? -eq 2 ] && ok "unknown argument refused" || bad "unknown argument accepted"

# 3. A real run where this machine's MPI and the carried libraries are hidden: no GPU here, so the
# GPU steps are skipped with one line, but the carried Open MPI must run test_comm_mpi on 2 ranks.
hide() { CARRY_DIR=$WORK/gpu-carry bash tests/gpu/carry.sh hide-mpi "$@"; }
export CARRY_UNPACK=$WORK/unpacked
hide env CARRY="$PK" OUT="$WORK/out1" bash tests/gpu/run_on_gpu.sh >"$WORK/run1.log" 2>&1
S=$WORK/out1/summary.txt
expect "$S" '^mpi: carried Open MPI 4\.[0-9.]+ ran test_comm_mpi on 2 ranks' "carried Open MPI runs 2 ranks with the system's hidden"
expect "$S" '^binaries that load: dirmoe .*test_kernels_cuda.*test_model_cuda' "every carried binary loads"
expect "$S" '^(FATAL: no GPU is visible|gpu: NVIDIA)' "the GPU line"
expect_not "$S" '^FAIL ' "no step fails for want of a GPU (they are skipped)"
expect_not "$S" 'cannot load|not found here' "no unresolved library"

# 4. Bad input, each one clear line. A carry from other sources:
rm -rf "$WORK/stale" && cp -r "$WORK/unpacked" "$WORK/stale"
sed -i '1s/^[0-9a-f]\{8\}/00000000/' "$WORK/stale/sources.sha256"
env CARRY="$WORK/stale" OUT="$WORK/out2" bash tests/gpu/run_on_gpu.sh >"$WORK/run2.log" 2>&1
rc=$?
expect "$WORK/out2/summary.txt" '^FATAL: the carry was built from other sources: 1 file\(s\) differ' "a stale carry is refused in one line"
[ "$rc" -eq 2 ] && ok "stale carry exits 2" || bad "stale carry exit $rc"
[ "$(grep -c '^FAIL' "$WORK/out2/summary.txt")" -eq 0 ] && ok "no cascade of failures" || bad "cascade after a stale carry"
# A library missing from the carry (and hidden on the system):
rm -rf "$WORK/nolib" && cp -r "$WORK/unpacked" "$WORK/nolib"
rm -f "$WORK/nolib/lib/libyaml-cpp.so"*
hide env CARRY="$WORK/nolib" OUT="$WORK/out3" bash tests/gpu/run_on_gpu.sh >"$WORK/run3.log" 2>&1
expect "$WORK/out3/summary.txt" '^FATAL: libraries not found here .*libyaml-cpp' "a missing library is named"
expect "$WORK/out3/summary.txt" "^SKIP .*dirmoe cannot load|^SKIP .*no usable GPU" "its binaries are skipped, not run"
# A GPU the binaries were not built for, and one they were (a stand-in nvidia-smi):
mkdir -p "$WORK/fakebin"
printf '#!/bin/sh\necho "NVIDIA B200, 10.0, 580.00, 183359 MiB"\n' >"$WORK/fakebin/nvidia-smi"
chmod +x "$WORK/fakebin/nvidia-smi"
env PATH="$WORK/fakebin:$PATH" CARRY="$WORK/unpacked" OUT="$WORK/out4" bash tests/gpu/run_on_gpu.sh --quick >"$WORK/run4.log" 2>&1
expect "$WORK/out4/summary.txt" '^FATAL: this GPU is sm_100 but the carried binaries hold sm_' "a GPU outside the build's targets is named"
expect_not "$WORK/out4/summary.txt" '^FAIL ' "and nothing runs on it"
printf '#!/bin/sh\necho "NVIDIA H200, 9.0, 580.159.04, 143771 MiB"\n' >"$WORK/fakebin/nvidia-smi"
env PATH="$WORK/fakebin:$PATH" CARRY="$WORK/unpacked" OUT="$WORK/out5" bash tests/gpu/run_on_gpu.sh --dry-run >"$WORK/run5.log" 2>&1
expect_not "$WORK/run5.log" '^FATAL: this GPU' "an sm_90 GPU is accepted"

# 5. --save names the summary by date and commit.
mkdir -p "$WORK/saved" && cp "$S" "$WORK/saved/summary.txt"
(cd "$WORK" && mkdir -p repo/bench/results && cp -r "$ROOT/tests" repo/ && cd repo &&
  bash tests/gpu/run_on_gpu.sh --save "$WORK/saved") >"$WORK/save.log" 2>&1
expect "$WORK/save.log" '^saved bench/results/gpu/20[0-9]{2}-[0-9]{2}-[0-9]{2}-[0-9a-f]{10}\.txt' "--save names the file by date and commit"

echo "$fails failure(s)"
[ "$fails" -eq 0 ]
