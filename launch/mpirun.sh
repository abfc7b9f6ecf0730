#!/usr/bin/env bash
# Starts dirmoe under Open MPI's mpirun, on this machine or on the hosts of a hostfile, with a fixed
# number of ranks per node, ranks placed node by node and bound to NUMA domains, and the NCCL_*,
# DIRMOE_*, thread-count and library-path variables passed to every rank.
#
#   launch/mpirun.sh [options] [--] COMMAND [ARGS...]        COMMAND: a dirmoe subcommand
#
#   launch/mpirun.sh -- train --config configs/tiny.yaml                       # this machine, 2 ranks
#   launch/mpirun.sh --hostfile hosts --ranks-per-node 8 -- train --config big.yaml
#   launch/mpirun.sh --hostfile hosts --ranks-per-node 4 --net eth1 -- topology
#
# Options:
#   --hostfile FILE       Open MPI hostfile ("host [slots=N]" per line); without it: this machine
#   --ranks-per-node R    ranks on each node (default: GPUs seen by nvidia-smi, else 2)
#   --net IFACE|CIDR      restrict MPI's TCP traffic and out-of-band channel to this interface/subnet
#   --bind numa|core|none process binding (default numa; none when ranks exceed this host's cores)
#   --oversubscribe       allow more ranks than slots
#   --env NAME            pass one more variable to every rank (repeatable)
#   --mca KEY VALUE       one more Open MPI MCA parameter (repeatable)
#   --bin PATH            the dirmoe executable (default: $DIRMOE_BIN, else build/bin/dirmoe)
#   --dry-run             print the mpirun command instead of running it
# The world size is (nodes in the hostfile) x R. Every rank checks at start-up that what mpirun
# told it (OMPI_COMM_WORLD_*) agrees with MPI's own topology.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "launch/mpirun.sh: $*" >&2; exit 2; }

root="$(cd "$(dirname "$0")/.." && pwd)"
hostfile="" ranks_per_node="" net="" bind="" oversubscribe=0 dry_run=0
bin="${DIRMOE_BIN:-$root/build/bin/dirmoe}"
extra_env=() mca=()
while [ $# -gt 0 ]; do
  case "$1" in
    --hostfile) [ $# -ge 2 ] || die "--hostfile needs a file"; hostfile="$2"; shift 2 ;;
    --ranks-per-node) [ $# -ge 2 ] || die "--ranks-per-node needs a number"; ranks_per_node="$2"; shift 2 ;;
    --net) [ $# -ge 2 ] || die "--net needs an interface or subnet"; net="$2"; shift 2 ;;
    --bind) [ $# -ge 2 ] || die "--bind needs numa, core or none"; bind="$2"; shift 2 ;;
    --oversubscribe) oversubscribe=1; shift ;;
    --env) [ $# -ge 2 ] || die "--env needs a variable name"; extra_env+=("$2"); shift 2 ;;
    --mca) [ $# -ge 3 ] || die "--mca needs KEY VALUE"; mca+=(--mca "$2" "$3"); shift 3 ;;
    --bin) [ $# -ge 2 ] || die "--bin needs a path"; bin="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option '$1' (see --help; dirmoe's own options go after --)" ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || die "no dirmoe command given (e.g. -- train --config configs/tiny.yaml)"
[ -x "$bin" ] || die "dirmoe executable '$bin' not found or not executable (build it, or pass --bin)"

if [ -z "$ranks_per_node" ]; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  ranks_per_node=$([ "${gpus:-0}" -gt 0 ] && echo "$gpus" || echo 2)
fi
[[ "$ranks_per_node" =~ ^[1-9][0-9]*$ ]] || die "--ranks-per-node must be a positive integer, got '$ranks_per_node'"

nodes=1
if [ -n "$hostfile" ]; then
  [ -r "$hostfile" ] || die "hostfile '$hostfile' not found or not readable"
  # Distinct host names, comments and blank lines skipped.
  nodes=$(sed 's/#.*//' "$hostfile" | awk 'NF { print $1 }' | sort -u | wc -l)
  [ "$nodes" -gt 0 ] || die "hostfile '$hostfile' names no host"
fi
ranks=$((nodes * ranks_per_node))

cores=$(nproc)
if [ -z "$bind" ]; then
  bind=numa
  if [ "$ranks_per_node" -gt "$cores" ]; then
    bind=none
    if [ -z "$hostfile" ]; then
      oversubscribe=1
      echo "launch/mpirun.sh: $ranks_per_node ranks on $cores cores: oversubscribed, not bound" >&2
    fi
  fi
fi
case "$bind" in numa|core|none) ;; *) die "--bind must be numa, core or none, got '$bind'" ;; esac

# CPU runs: OpenBLAS threads share a node's cores between its ranks unless the user chose.
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-$(( cores / ranks_per_node > 0 ? cores / ranks_per_node : 1 ))}"

pass=()
while IFS= read -r name; do pass+=(-x "$name"); done < <(
  env | sed -n 's/^\(\(NCCL\|DIRMOE\)_[A-Za-z0-9_]*\)=.*/\1/p' | sort -u)
for name in OPENBLAS_NUM_THREADS OMP_NUM_THREADS LD_LIBRARY_PATH PATH "${extra_env[@]}"; do
  if [ -n "${!name+x}" ]; then pass+=(-x "$name"); elif printf '%s\n' "${extra_env[@]}" | grep -qx "$name"; then
    die "--env $name: the variable is not set"
  fi
done

cmd=("${MPIRUN:-mpirun}" -np "$ranks" --map-by "ppr:$ranks_per_node:node" --rank-by slot
     --bind-to "$bind")
[ -n "$hostfile" ] && cmd+=(--hostfile "$hostfile")
[ "$oversubscribe" = 1 ] && cmd+=(--oversubscribe)
[ -n "$net" ] && cmd+=(--mca btl_tcp_if_include "$net" --mca oob_tcp_if_include "$net")
[ "$(id -u)" = 0 ] && cmd+=(--allow-run-as-root)
cmd+=("${mca[@]}" "${pass[@]}" "$bin" "$@")

if [ "$dry_run" = 1 ]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
echo "launch/mpirun.sh: $ranks ranks on $nodes node(s), $ranks_per_node per node, bind-to $bind" >&2
exec "${cmd[@]}"
