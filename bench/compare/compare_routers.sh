#!/usr/bin/env bash
# Router comparison at one active-expert budget: trains the same model on the same data and token
# budget with each router (topk, remoe, dirmoe, probmoe exact and dynamic) and prints one table
# (compare_table.py). Rerun the table alone on existing runs: python3 bench/compare/compare_table.py OUT.
#   bash bench/compare/compare_routers.sh [--np 2] [--k 1] [--steps 150] [--config configs/tiny.yaml]
#        [--out runs/compare] [--routers "topk remoe dirmoe probmoe_exact probmoe_dynamic"]
#        [--bin build/bin/dirmoe] [--skip-existing] [-- extra dirmoe train arguments for every run]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
np=2 k=1 steps=150 config=configs/tiny.yaml out=runs/compare bin="${DIRMOE_BIN:-build/bin/dirmoe}"
routers="topk remoe dirmoe probmoe_exact probmoe_dynamic"
extra=()
skip=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --np) np="$2"; shift 2 ;;
    --k) k="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --routers) routers="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --skip-existing) skip=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n 2,7p "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "compare_routers.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ -x "$bin" ]] || { echo "compare_routers.sh: no executable '$bin' (build it, or pass --bin)" >&2; exit 2; }
[[ -f "$config" ]] || { echo "compare_routers.sh: no config '$config'" >&2; exit 2; }
if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
oversub=()
(( np > $(nproc) )) && oversub=(--oversubscribe)

# The router settings at budget k, one key=value per line (everything else comes from the config).
router_args() {
  case "$1" in
    topk) printf '%s\n' moe.router.type=topk moe.router.k=$k ;;
    # ReMoE: lambda_init 1e-4 so that the controller settles within a short run (see README).
    remoe) printf '%s\n' moe.router.type=remoe moe.router.k=$k moe.router.remoe.lambda_init=1e-4 ;;
    # DirMoE: the steered settings of configs/tiny-dirmoe.yaml.
    dirmoe) printf '%s\n' moe.router.type=dirmoe moe.router.k=$k moe.router.aux_loss_coef=0.1 \
      moe.router.dirmoe.r_min=0.3 moe.router.dirmoe.lambda_sparsity=0.3 \
      'moe.router.dirmoe.tau={rate: 0.98, floor: 0.03}' ;;
    probmoe_exact) printf '%s\n' moe.router.type=probmoe moe.router.k=$k moe.router.probmoe.mode=exact ;;
    probmoe_dynamic) printf '%s\n' moe.router.type=probmoe moe.router.k=$k \
      moe.router.probmoe.mode=dynamic moe.router.probmoe.k_min=$k moe.router.probmoe.k_max=$((k + 1)) ;;
    *) echo "compare_routers.sh: unknown router '$1'" >&2; return 2 ;;
  esac
}

mkdir -p "$out"
dirs=()
for r in $routers; do
  dirs+=("$out/$r")
done
for r in $routers; do
  args=()
  kvs=$(router_args "$r") || exit 2
  while IFS= read -r kv; do args+=(--set "$kv"); done <<< "$kvs"
  dir="$out/$r"
  if (( skip )) && grep -q '"eval_loss"' "$dir/metrics.jsonl" 2>/dev/null && tail -1 "$out/$r.log" | grep -q '^done'; then
    echo "== $r: kept (--skip-existing)"; continue
  fi
  echo "== $r: ${args[*]}"
  mpirun -np "$np" "${oversub[@]}" "$bin" train --config "$config" --set parallel.ep="$np" \
    --set train.steps="$steps" --set train.eval_interval="$steps" --set checkpoint.at_end=false \
    "${args[@]}" "${extra[@]}" --run-dir "$dir" > "$out/$r.log" 2>&1 ||
    { echo "compare_routers.sh: $r failed, see $out/$r.log" >&2; tail -5 "$out/$r.log" >&2; exit 1; }
  tail -2 "$out/$r.log"
done
python3 "$here/compare_table.py" --k "$k" "${dirs[@]}"
