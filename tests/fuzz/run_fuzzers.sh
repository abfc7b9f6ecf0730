#!/usr/bin/env bash
# Builds the libFuzzer targets (data pipeline, config loader, checkpoint reader) with clang (ASan +
# UBSan, UB is fatal) in their own directory and runs each for SECONDS; fails on any crash,
# sanitizer report, leak or timeout.
# Usage: tests/fuzz/run_fuzzers.sh [SECONDS=20]   (env: DIRMOE_FUZZ_DIR, default ROOT/build-fuzz;
#        DIRMOE_FUZZ_TOKENIZER, default ROOT/third_party/gpt2 when present)
set -euo pipefail
seconds="${1:-20}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${DIRMOE_FUZZ_DIR:-$root/build-fuzz}"
cxx="${CXX_FUZZ:-clang++}"
command -v "$cxx" >/dev/null || { echo "SKIP: $cxx not found"; exit 77; }
if [[ -z "${DIRMOE_FUZZ_TOKENIZER:-}" && -f "$root/third_party/gpt2/encoder.json" ]]; then
  export DIRMOE_FUZZ_TOKENIZER="$root/third_party/gpt2"
fi

blas_inc="$(ls -d /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/openblas 2>/dev/null | head -1 || true)"
flags=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=all -I"$root" ${blas_inc:+-I"$blas_inc"} $(pkg-config --cflags libpcre2-8))
libs=($(pkg-config --libs libpcre2-8) $(pkg-config --libs yaml-cpp) -lopenblas -lpthread)
# Library sources per target (the config loader validates routers, so it needs their code).
data_srcs=(runtime/core/error.cpp runtime/data/file_util.cpp runtime/data/tokenizer.cpp
           runtime/data/indexed_dataset.cpp runtime/data/dataset.cpp)
config_srcs=(runtime/core/error.cpp runtime/core/tensor.cpp runtime/core/logging.cpp
             runtime/config.cpp experts/placement.cpp
             $(cd "$root" && ls router/*.cpp kernels/cpu/*.cpp))
safetensors_srcs=(runtime/core/error.cpp runtime/core/tensor.cpp runtime/safetensors.cpp)
declare -A target_srcs=([indexed_dataset]=data [token_shard]=data [tokenizer]=data
                        [config]=config [safetensors]=safetensors)
targets=(indexed_dataset token_shard tokenizer config safetensors)

mkdir -p "$out/obj" "$out/artifacts"
# Objects of the library sources, rebuilt when a source or header is newer.
newest_header="$(ls -t "$root"/runtime/core/*.h "$root"/runtime/*.h "$root"/runtime/data/*.h \
                 "$root"/runtime/data/*.inc "$root"/router/*.h "$root"/experts/*.h \
                 "$root"/kernels/cpu/*.h | head -1)"
object_of() { local s="$1"; s="${s%.cpp}"; echo "$out/obj/${s//\//_}.o"; }
compile() {
  local src="$1" obj
  obj="$(object_of "$src")"
  if [[ ! -f "$obj" || "$root/$src" -nt "$obj" || "$newest_header" -nt "$obj" ]]; then
    echo "compiling $src"
    "$cxx" "${flags[@]/-fsanitize=fuzzer,address,undefined/-fsanitize=fuzzer-no-link,address,undefined}" \
      -c "$root/$src" -o "$obj"
  fi
}

status=0
for t in "${targets[@]}"; do
  case "${target_srcs[$t]}" in
    data) srcs=("${data_srcs[@]}") ;;
    config) srcs=("${config_srcs[@]}") ;;
    safetensors) srcs=("${safetensors_srcs[@]}") ;;
  esac
  objs=()
  for s in "${srcs[@]}"; do
    compile "$s"
    objs+=("$(object_of "$s")")
  done
  src="$root/tests/fuzz/fuzz_$t.cpp"
  bin="$out/fuzz_$t"
  if [[ ! -f "$bin" || "$src" -nt "$bin" || "$root/tests/fuzz/fuzz_util.h" -nt "$bin" ]] ||
     [[ -n "$(find "${objs[@]}" -newer "$bin")" ]]; then
    echo "linking fuzz_$t"
    "$cxx" "${flags[@]}" "$src" "${objs[@]}" "${libs[@]}" -o "$bin"
  fi
  mkdir -p "$out/corpus/$t"
  echo "== fuzz_$t for ${seconds}s"
  if "$bin" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -max_len=8192 \
       -print_final_stats=1 -artifact_prefix="$out/artifacts/$t-" "$out/corpus/$t" \
       >"$out/$t.log" 2>&1; then
    grep -E "^(stat::number_of_executed_units|stat::new_units_added)" "$out/$t.log" | tr '\n' ' '
    echo "OK"
  else
    status=1
    echo "FAILED: fuzz_$t (log $out/$t.log, artifacts $out/artifacts/$t-*)"
    grep -E "ERROR|runtime error|SUMMARY|==[0-9]+==" "$out/$t.log" | head -20 || true
  fi
done
exit $status
