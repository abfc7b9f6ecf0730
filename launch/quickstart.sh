#!/usr/bin/env bash
# The default job: set up (launch/setup.sh), then train configs/tiny.yaml with its experts sharded
# over 2 MPI ranks (EP=2) on the CPU. Extra arguments go to `dirmoe train` (e.g. --set train.steps=50).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun -np 2 --oversubscribe build/bin/dirmoe train --config configs/tiny.yaml "$@"
