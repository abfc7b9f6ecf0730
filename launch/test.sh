#!/usr/bin/env bash
# The whole test suite: set up (launch/setup.sh), run every CTest test (unit, multi-rank through
# mpiexec, end-to-end), then a short bounded libFuzzer pass over the file readers and tokenizer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir build --output-on-failure -j2
if [ -x tests/fuzz/run_fuzzers.sh ] || [ -f tests/fuzz/run_fuzzers.sh ]; then
  bash tests/fuzz/run_fuzzers.sh "${DIRMOE_FUZZ_SECONDS:-20}"
fi
