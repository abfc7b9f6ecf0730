#!/usr/bin/env bash
# Two "nodes" on one machine: network namespaces joined by a veth pair, each entered with its own
# hostname (unshare --uts). launch/mpirun.sh starts `dirmoe topology` across them, 2 ranks each,
# with Open MPI restricted to TCP on the veth subnet (an rsh agent script replaces ssh). Checks:
# node ids and local ranks, a verified all-to-all whose cross-node pairs are counted inter-node,
# and the veth's own byte counters, which must carry at least the inter-node payload.
# Usage: test_netns_mpirun.sh DIRMOE_BIN. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN). Everything it
# creates (namespaces, veth, processes, temp dir) is removed on exit, failure included.
set -euo pipefail

fail() { echo "FAIL: $*" >&2; exit 1; }
[ $# -eq 1 ] || fail "usage: $0 DIRMOE_BIN"
bin="$(realpath "$1")"
src="$(cd "$(dirname "$0")/../.." && pwd)"
[ -x "$bin" ] || fail "dirmoe executable '$bin' not found"
for tool in ip unshare mpirun timeout; do
  command -v "$tool" >/dev/null || fail "'$tool' is not installed (launch/setup.sh installs it)"
done

tag="dm$$"
ns=("${tag}h0" "${tag}h1")
hosts=(h0 h1)
addrs=(10.77.0.1 10.77.0.2)
veth=("${tag}v0" "${tag}v1")
bytes_per_peer=$((4 << 20))
iters=2
work="$(mktemp -d "${TMPDIR:-/tmp}/dirmoe_netns.XXXXXX")"

cleanup() {
  local rc=$?
  set +e
  for n in "${ns[@]}"; do
    if ip netns list 2>/dev/null | grep -qw "$n"; then
      for pid in $(ip netns pids "$n" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
      ip netns del "$n" 2>/dev/null || true   # takes its end of the veth pair, and so the pair
    fi
  done
  rm -rf "$work"
  [ $rc -eq 0 ] && echo "PASS" || echo "netns test failed (rc $rc); namespaces and temp dir removed" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The machine must let us make namespaces; say so plainly if it does not.
if ! err=$(ip netns add "${ns[0]}" 2>&1); then
  fail "cannot create a network namespace ('ip netns add' said: $err); this test needs root with CAP_NET_ADMIN and CAP_SYS_ADMIN"
fi
ip netns add "${ns[1]}"
ip link add "${veth[0]}" type veth peer name "${veth[1]}" ||
  fail "cannot create a veth pair (is the veth module available?)"
for i in 0 1; do
  ip link set "${veth[$i]}" netns "${ns[$i]}"
  ip -n "${ns[$i]}" addr add "${addrs[$i]}/24" dev "${veth[$i]}"
  ip -n "${ns[$i]}" link set "${veth[$i]}" up
  ip -n "${ns[$i]}" link set lo up
done
# The rsh agent: "ssh" to a host = enter its namespace with its own hostname.
cat > "$work/agent.sh" <<EOF
#!/bin/sh
while [ \$# -gt 0 ]; do case "\$1" in -*) shift ;; *) break ;; esac; done
host="\$1"; shift
case "\$host" in
  ${addrs[0]}|h0) n=${ns[0]}; h=h0 ;;
  ${addrs[1]}|h1) n=${ns[1]}; h=h1 ;;
  *) echo "agent: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$n" unshare --uts sh -c "hostname \$h; \$*"
EOF
chmod +x "$work/agent.sh"
printf '%s slots=2\n%s slots=2\n' "${addrs[0]}" "${addrs[1]}" > "$work/hostfile"

counter() { ip netns exec "${ns[0]}" cat "/sys/class/net/${veth[0]}/statistics/$1"; }
tx0=$(counter tx_bytes); rx0=$(counter rx_bytes)

# mpirun itself runs on "h0". btl self,tcp: shared memory would otherwise join the "hosts".
launch="bash $src/launch/mpirun.sh --bin $bin --hostfile $work/hostfile --ranks-per-node 2 \
  --bind none --net 10.77.0.0/24 --mca plm rsh --mca plm_rsh_agent $work/agent.sh \
  --mca pml ob1 --mca btl self,tcp \
  -- topology --bytes-per-peer $bytes_per_peer --iters $iters"
set +e
timeout -s KILL 120 ip netns exec "${ns[0]}" unshare --uts sh -c "hostname h0; $launch" \
  > "$work/out.txt" 2> "$work/err.txt"
rc=$?
set -e
cat "$work/out.txt"
[ $rc -ne 137 ] || { cat "$work/err.txt" >&2; fail "mpirun across the namespaces did not finish within 120 s"; }
[ $rc -eq 0 ] || { cat "$work/err.txt" >&2; fail "mpirun across the namespaces exited with $rc"; }
tx=$(( $(counter tx_bytes) - tx0 )); rx=$(( $(counter rx_bytes) - rx0 ))

out="$work/out.txt"
# Topology: ranks 0,1 on node 0 (h0), ranks 2,3 on node 1 (h1), local ranks 0,1 on each.
for r in 0 1 2 3; do
  line="topology rank=$r world=4 local_rank=$((r % 2)) local_size=2 node=$((r / 2)) nodes=2 host=h$((r / 2)) launcher=mpirun"
  grep -qxF "$line" "$out" || fail "expected '$line'"
done
# Every pair classed by node: same rank self, same namespace intra, across the veth inter.
sent=$((bytes_per_peer * iters))
for s in 0 1 2 3; do
  for d in 0 1 2 3; do
    if [ $s -eq $d ]; then kind=self; elif [ $((s / 2)) -eq $((d / 2)) ]; then kind=intra; else kind=inter; fi
    line="traffic src=$s dst=$d src_node=$((s / 2)) dst_node=$((d / 2)) kind=$kind bytes=$sent"
    grep -qxF "$line" "$out" || fail "expected '$line'"
  done
done
summary=$(grep '^all-to-all ' "$out") || fail "no all-to-all summary"
for kv in ranks=4 nodes=2 wrong=0 "self_bytes=$((4 * sent))" "intra_bytes=$((4 * sent))" \
          "inter_bytes=$((8 * sent))"; do
  [[ " $summary " == *" $kv "* ]] || fail "all-to-all summary lacks $kv: $summary"
done
# What h0's ranks send to h1's (4 pairs) must have crossed h0's veth, and as much come back; the
# rest (launch, handshakes, TCP/IP headers) stays under a quarter on top.
need=$((4 * sent))
echo "veth ${veth[0]} in h0: tx $tx bytes, rx $rx bytes; inter-node payload each way $need bytes"
[ "$tx" -ge "$need" ] || fail "h0's veth sent $tx bytes, less than the $need inter-node bytes: the all-to-all did not cross the veth"
[ "$rx" -ge "$need" ] || fail "h0's veth received $rx bytes, less than the $need inter-node bytes"
[ "$tx" -le $((need + need / 4)) ] || fail "h0's veth sent $tx bytes, far more than the $need inter-node bytes"
[ "$rx" -le $((need + need / 4)) ] || fail "h0's veth received $rx bytes, far more than the $need inter-node bytes"
