#!/usr/bin/env bash
# A one-machine Slurm cluster (munged, slurmctld, slurmd from Debian's slurm-wlm; every file in a
# temporary directory, ports chosen free, two fake GPUs as gres) runs the real launch scripts:
#  1. launch/slurm/train.sbatch submitted with sbatch on 2 tasks trains the tiny model (shortened);
#     exit code, console loss lines and metrics.jsonl are checked;
#  2. `srun --mpi=pmix dirmoe topology`: Slurm's rank, local rank and node agree with MPI's;
#  3. train.sbatch's time-limit path with dirmoe itself: SIGUSR1 reaches both ranks, the
#     job requeues itself and its restart resumes from the checkpoint dirmoe wrote (`--resume auto`).
# Usage: test_slurm.sh DIRMOE_BIN. Needs root. Daemons, jobs and files are removed on exit,
# failure included; every wait is bounded.
set -euo pipefail

fail() { echo "FAIL: $*" >&2; exit 1; }
[ $# -eq 1 ] || fail "usage: $0 DIRMOE_BIN"
bin="$(realpath "$1")"
src="$(cd "$(dirname "$0")/../.." && pwd)"
[ -x "$bin" ] || fail "dirmoe executable '$bin' not found"
[ "$(id -u)" = 0 ] || fail "this test starts Slurm's daemons and must run as root"
for tool in munged munge unmunge slurmctld slurmd sbatch srun scontrol sinfo scancel setpriv ss mknod timeout; do
  command -v "$tool" >/dev/null ||
    fail "'$tool' is not installed (launch/setup.sh installs munge slurmctld slurmd slurm-client)"
done
id munge >/dev/null 2>&1 || fail "no 'munge' user (the munge package creates it)"
corpus="$src/data/brown/brown_gpt2"
[ -f "$corpus.idx" ] || fail "bundled corpus missing at $corpus.idx (launch/data/build_default_corpus.sh)"

work="$(mktemp -d "${TMPDIR:-/tmp}/dirmoe_slurm.XXXXXX")"
chmod 755 "$work"
export SLURM_CONF="$work/slurm.conf"
daemon_pids=()
jobs_submitted=()

show_logs() {
  for f in "$work"/*.log "$work"/munge/munged.log; do
    [ -f "$f" ] && { echo "--- last lines of $f"; tail -n 15 "$f"; }
  done >&2
}
cleanup() {
  local rc=$?
  set +e
  [ $rc -eq 0 ] || show_logs
  if [ ${#jobs_submitted[@]} -gt 0 ]; then
    timeout 10 scancel "${jobs_submitted[@]}" >/dev/null 2>&1 || true
  fi
  # Daemons: ask, then insist.
  for pid in "${daemon_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for pid in "${daemon_pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.2
  done
  for pid in "${daemon_pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  # Anything still running from this cluster's jobs (slurmstepd, srun, ranks) carries our SLURM_CONF.
  for env_file in /proc/[0-9]*/environ; do
    pid="${env_file#/proc/}"; pid="${pid%/environ}"
    [ "$pid" = $$ ] && continue
    if { tr '\0' '\n' < "$env_file"; } 2>/dev/null | grep -qxF "SLURM_CONF=$work/slurm.conf"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$work"
  [ $rc -eq 0 ] && echo "PASS" || echo "Slurm test failed (rc $rc); daemons stopped, $work removed" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.2 s.
wait_for() {
  local seconds="$1" what="$2"
  shift 2
  local tries=$((seconds * 5))
  for _ in $(seq "$tries"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  fail "timed out after ${seconds} s waiting for $what"
}
alive() { kill -0 "$1" 2>/dev/null || fail "$2 exited at start-up"; }

free_port() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 40000))
    [ -z "$(ss -Htan "sport = :$p")" ] && [ "$p" != "${1:-}" ] && { echo "$p"; return; }
  done
  fail "no free TCP port found"
}

# --- munge: own key, socket and files, run as the munge user.
mkdir -p "$work/munge"
head -c 1024 /dev/urandom > "$work/munge/munge.key"
chown -R munge:munge "$work/munge"
chmod 755 "$work/munge"
chmod 600 "$work/munge/munge.key"
sock="$work/munge/munge.socket"
setpriv --reuid=munge --regid=munge --init-groups munged -F --socket="$sock" \
  --key-file="$work/munge/munge.key" --pid-file="$work/munge/munged.pid" \
  --log-file="$work/munge/munged.log" --seed-file="$work/munge/munged.seed" \
  > "$work/munged.stdout.log" 2>&1 &
daemon_pids+=($!)
wait_for 15 "munged to answer on $sock" sh -c "munge -n --socket='$sock' | unmunge --socket='$sock'"

# --- Slurm: one node "localhost" with 4 CPUs and 2 fake GPUs (character devices).
mkdir -p "$work/state" "$work/spool" "$work/tmp" "$work/dev"
mknod "$work/dev/nvidia0" c 1 3 && mknod "$work/dev/nvidia1" c 1 3 ||
  fail "cannot create character devices for the fake GPUs (mknod)"
ctld_port=$(free_port)
slurmd_port=$(free_port "$ctld_port")
cat > "$work/slurm.conf" <<EOF
ClusterName=dirmoetest
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock,cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
TmpFS=$work/tmp
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
MpiDefault=pmix
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=4 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
echo "Name=gpu File=$work/dev/nvidia[0-1]" > "$work/gres.conf"
slurmctld -D -f "$work/slurm.conf" > "$work/slurmctld.stdout.log" 2>&1 &
daemon_pids+=($!)
slurmd -D -f "$work/slurm.conf" -N localhost > "$work/slurmd.stdout.log" 2>&1 &
daemon_pids+=($!)
sleep 0.5
alive "${daemon_pids[1]}" slurmctld
alive "${daemon_pids[2]}" slurmd
wait_for 30 "node localhost to be idle" sh -c '[ "$(sinfo -h -n localhost -o %t)" = idle ]'
echo "Slurm up: slurmctld port $ctld_port, slurmd port $slurmd_port, in $work"

job_state() { scontrol show job "$1" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
job_field() { scontrol show job "$1" | grep -o "$2=[^ ]*" | cut -d= -f2; }

# --- 1. the tiny job through train.sbatch, 2 tasks, 2 GPUs per node.
run="$work/run"
steps=4
set +e
submitted=$(cd "$src" && DIRMOE_BIN="$bin" timeout -s KILL 400 sbatch --parsable --wait \
  --nodes=1 --ntasks-per-node=2 --gpus-per-node=2 --cpus-per-task=1 --time=10 \
  --output="$work/train-%j.out" launch/slurm/train.sbatch \
  --config configs/tiny.yaml --set "data.paths=[$corpus]" --set model.seq_len=32 \
  --set train.micro_batch=2 --set train.steps=$steps --set train.eval_interval=0 \
  --set train.eval_batches=1 --set train.log_interval=2 --set checkpoint.at_end=false \
  --run-dir "$run")
rc=$?
set -e
id="${submitted%%;*}"
[ -n "$id" ] && jobs_submitted+=("$id")
out="$work/train-$id.out"
[ -f "$out" ] && cat "$out"
[ $rc -ne 137 ] || fail "the sbatch job did not finish within 400 s"
[ $rc -eq 0 ] || fail "sbatch --wait returned $rc for job $id"
[ "$(job_state "$id")" = COMPLETED ] || fail "job $id ended in state $(job_state "$id")"
[ "$(job_field "$id" ExitCode)" = 0:0 ] || fail "job $id exit code $(job_field "$id" ExitCode)"
grep -qxF "train.sbatch: job $id (restart 0) on 1 node(s) [localhost], 2 task(s), GPUs per node: 2" "$out" ||
  fail "train.sbatch's header line is missing or wrong"
grep -q '^dirmoe: 2 rank(s), ep 2,' "$out" || fail "dirmoe did not start on 2 ranks with ep 2"
for s in 1 2 4; do
  grep -Eq "^step +$s/$steps \| loss [0-9]+\.[0-9]{4} \|" "$out" || fail "no console loss line for step $s"
done
grep -q "^done: $steps steps" "$out" || fail "no 'done: $steps steps' line"
grep -qxF "train.sbatch: srun exited with 0" "$out" || fail "srun did not exit 0"
[ -f "$run/config.resolved.yaml" ] || fail "no $run/config.resolved.yaml"
[ -f "$run/metrics.jsonl" ] || fail "no $run/metrics.jsonl"
for s in $(seq 1 $steps); do
  grep -Eq "\"loss\":[0-9]+\.[0-9]+.*\"step\":$s[,}]" "$run/metrics.jsonl" ||
    fail "metrics.jsonl has no finite loss for step $s"
done
n=$(grep -c '"loss":' "$run/metrics.jsonl")
[ "$n" -eq $steps ] || fail "metrics.jsonl has $n loss records, expected $steps"
echo "job 1 (train.sbatch, tiny model, $steps steps on 2 tasks): COMPLETED, exit 0:0, $n loss records"

# --- 2. srun's view of the ranks against MPI's (the start-up check, then the table).
set +e
timeout -s KILL 120 srun --mpi=pmix --kill-on-bad-exit=1 -N1 -n2 --cpus-per-task=1 \
  "$bin" topology --bytes-per-peer 65536 --iters 1 > "$work/topology.out" 2>&1
rc=$?
set -e
cat "$work/topology.out"
[ $rc -eq 0 ] || fail "srun dirmoe topology exited with $rc"
host=$(hostname)
for r in 0 1; do
  line="topology rank=$r world=2 local_rank=$r local_size=2 node=0 nodes=1 host=$host launcher=srun"
  grep -qxF "$line" "$work/topology.out" || fail "expected '$line'"
done
grep -q ' wrong=0 ' "$work/topology.out" || fail "the all-to-all under srun was not verified"
# And a rank told the wrong local id by its environment is stopped before any work, by name.
set +e
timeout -s KILL 120 srun --mpi=pmix -N1 -n2 --cpus-per-task=1 \
  sh -c 'SLURM_LOCALID=0 exec "$0" topology' "$bin" > "$work/mismatch.out" 2>&1
rc=$?
set -e
[ $rc -ne 0 ] || fail "a rank with a wrong SLURM_LOCALID was not refused"
grep -qF "rank 1 (host $host): SLURM_LOCALID=0, but it is local rank 1 of 2 on its node" "$work/mismatch.out" ||
  { cat "$work/mismatch.out"; fail "the SLURM_LOCALID mismatch message is missing"; }
grep -q '^traffic ' "$work/mismatch.out" && fail "the mismatched job went on to do work"
echo "srun: ranks, local ranks and node agree with MPI; a wrong SLURM_LOCALID is refused (exit $rc)"

# --- 3. time limit near: SIGUSR1 to the batch shell -> srun -> the dirmoe ranks, which checkpoint
# and stop; the job requeues itself and its restart resumes from that checkpoint. The restart is
# cut short with train.stop_at (added by a wrapper only when SLURM_RESTART_COUNT > 0) so that the
# test does not wait for the whole schedule.
cat > "$work/dirmoe_wrapper.sh" <<EOF
#!/bin/bash
if [ "\${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then
  exec "$bin" "\$@" --set train.stop_at=\$(( \$(cat "$work/stopped_at") + 2 ))
fi
exec "$bin" "\$@"
EOF
chmod +x "$work/dirmoe_wrapper.sh"
run="$work/requeue_run"
id=$(cd "$src" && DIRMOE_BIN="$work/dirmoe_wrapper.sh" sbatch --parsable --nodes=1 --ntasks-per-node=2 \
  --gpus-per-node=0 --cpus-per-task=1 --time=10 --output="$work/requeue-%j.out" \
  launch/slurm/train.sbatch --config configs/tiny.yaml --set "data.paths=[$corpus]" \
  --set model.seq_len=32 --set train.micro_batch=2 --set train.steps=2000 \
  --set train.eval_interval=0 --set train.eval_batches=1 --set train.log_interval=1 \
  --set checkpoint.at_end=false --run-dir "$run")
id="${id%%;*}"
jobs_submitted+=("$id")
out="$work/requeue-$id.out"
wait_for 120 "job $id to train 2 steps" \
  sh -c "[ \$(grep -c '\"loss\":' '$run/metrics.jsonl' 2>/dev/null || echo 0) -ge 2 ]"
scancel --batch --signal=USR1 "$id"
wait_for 120 "job $id to requeue itself" \
  sh -c "[ \"\$(scontrol show job $id | grep -o 'Restarts=[0-9]*')\" = Restarts=1 ]"
stopped=$(sed -n 's/^signal [0-9]* received: stopping after step \([0-9]*\) with its checkpoint$/\1/p' "$out" | head -1)
[ -n "$stopped" ] || { cat "$out"; fail "dirmoe did not report stopping on the signal with a checkpoint"; }
echo "$stopped" > "$work/stopped_at"
[ -d "$run/checkpoints/step_$stopped" ] || fail "no checkpoint $run/checkpoints/step_$stopped"
# The requeued job starts again by itself once its old credential has expired (cred_expire=10 in
# AuthInfo above; 120 s by default).
wait_for 180 "requeued job $id to finish" \
  sh -c "scontrol show job $id | grep -Eq 'JobState=(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL)'"
[ "$(job_state "$id")" = COMPLETED ] || { cat "$out"; fail "requeued job $id ended in state $(job_state "$id")"; }
cat "$out"
grep -qxF "train.sbatch: requeueing job $id" "$out" || fail "train.sbatch did not requeue job $id"
grep -qF "train.sbatch: job $id (restart 1)" "$out" || fail "job $id did not restart"
grep -q "resumed from .*step_$stopped at step $stopped" "$out" ||
  fail "the restart did not resume from step_$stopped"
last=$((stopped + 2))
n=$(grep -c '"loss":' "$run/metrics.jsonl")
[ "$n" -eq "$last" ] || fail "metrics.jsonl has $n loss records after the restart, expected $last"
[ "$(job_field "$id" ExitCode)" = 0:0 ] || fail "the restarted job's exit code is $(job_field "$id" ExitCode)"
echo "job 3 (SIGUSR1 near the time limit): dirmoe checkpointed step $stopped and stopped, the job" \
     "requeued, the restart resumed from step_$stopped and ran to step $last ($n loss records)"
