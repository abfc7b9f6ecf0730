#!/usr/bin/env bash
# The Mixtral export against transformers' MixtralForCausalLM, in two steps:
#   hf_transformers_check.sh prepare [BUILD_DIR]  here: four checkpoint kinds (EP=1 and EP=2, each
#       exported in several shards and in one), each beside dirmoe's own logits for the same
#       tokens, into BUILD_DIR/hf_check/{ep1,ep2}_{sharded,single}/ (about 0.3 MB in all); needs
#       BUILD_DIR/bin/test_checkpoint (default BUILD_DIR: build).
#   hf_transformers_check.sh run [DIR]  on a machine with PyTorch and transformers 5 (DIR default
#       build/hf_check, carried there): tests/runtime/hf_mixtral_transformers.py on the four cases;
#       exit 1 when any fails. PYTHON picks the interpreter (default /opt/torch/.venv/bin/python3
#       when present, else python3).
set -euo pipefail
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
die() { echo "hf_transformers_check.sh: $*" >&2; exit 2; }

case "${1:-}" in
  prepare)
    build="$(cd "${2:-build}" && pwd)" || die "no build directory ${2:-build}"
    bin="$build/bin/test_checkpoint"
    [ -x "$bin" ] || die "$bin missing: ninja -C $build test_checkpoint"
    mpiexec="$(command -v mpiexec)" || die "mpiexec not found"
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
    export DIRMOE_SOURCE_DIR="$src"
    # The numpy reference inside the test needs the system python's numpy.
    [ -x /usr/bin/python3 ] && export PATH="/usr/bin:$PATH"
    out="$build/hf_check"
    rm -rf "$out"
    mkdir -p "$out"
    work="$build/tests/runtime"
    mkdir -p "$work"
    for np in 1 2; do
      (cd "$work" && timeout -s KILL 300 "$mpiexec" -n "$np" --oversubscribe "$bin" \
        --gtest_filter=HfExport.MixtralCheckpointGivesTheReferenceLogits) \
        || die "test_checkpoint on $np rank(s) failed"
      hf="$work/ckpt_np$np/hf"
      for kind in sharded single; do
        model="$hf/mixtral"
        [ "$kind" = single ] && model="$hf/mixtral_single"
        case_dir="$out/ep${np}_$kind"
        mkdir -p "$case_dir"
        cp -r "$model" "$case_dir/model"
        cp "$hf/tokens.bin" "$hf/logits.bin" "$hf/inputs.json" "$case_dir/"
      done
    done
    echo "wrote $(ls "$out" | tr '\n' ' ')under $out ($(du -sh "$out" | cut -f1)); on the GPU machine:"
    echo "  bash tests/runtime/hf_transformers_check.sh run ${out#"$src"/}"
    ;;
  run)
    dir="${2:-build/hf_check}"
    [ -d "$dir" ] || die "no $dir: run 'hf_transformers_check.sh prepare' first and carry it"
    python="${PYTHON:-}"
    if [ -z "$python" ]; then
      python=python3
      [ -x /opt/torch/.venv/bin/python3 ] && python=/opt/torch/.venv/bin/python3
    fi
    cases=()
    for c in ep1_sharded ep1_single ep2_sharded ep2_single; do
      [ -d "$dir/$c" ] || die "$dir/$c missing"
      cases+=("$dir/$c")
    done
    exec "$python" "$src/tests/runtime/hf_mixtral_transformers.py" "${cases[@]}" --tol 1e-4
    ;;
  *)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
