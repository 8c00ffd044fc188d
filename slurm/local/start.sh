#!/usr/bin/env bash
# Start a SLURM cluster (slurmctld + slurmd + munged) in a private folder, for tests and local
# trials. Everything (config, state, logs, pid files, munge key and socket) lives in DIR.
#   slurm/local/start.sh DIR [CPUS] [NODES]      then: export SLURM_CONF=DIR/slurm.conf
#   slurm/local/stop.sh DIR
# NODES > 1 runs that many slurmd on this host (`slurmd -N n1`, one port each: SLURMD_PORT, +1, ...),
# named n1..nN with CPUS each: real multi-node jobs (srun across nodes, array tasks per node) on
# one machine; jobs reach each other over 127.0.0.1 (set MASTER_ADDR=127.0.0.1 for torch).
# Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge) and root (SlurmUser=root).
set -euo pipefail
DIR=$(realpath -m "${1:?usage: start.sh DIR [CPUS] [NODES]}")
CPUS=${2:-$(nproc)}
NODES=${3:-1}
NODE=$(hostname -s)
for bin in slurmctld slurmd munged sinfo; do
  command -v "$bin" >/dev/null || { echo "start.sh: $bin not found (apt-get install slurm-wlm munge)" >&2; exit 3; }
done
mkdir -p "$DIR"/{state,spool,log,munge}
chmod 755 "$DIR/munge"                      # munged refuses a socket folder others can write to

# munge: its own key, socket and pid file
[ -f "$DIR/munge/munge.key" ] || { dd if=/dev/urandom bs=1 count=1024 of="$DIR/munge/munge.key" status=none; chmod 400 "$DIR/munge/munge.key"; }
munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
       --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munge.seed"

cat > "$DIR/slurm.conf" <<CONF
ClusterName=qanchor-local
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
StateSaveLocation=$DIR/state
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmctldPort=${SLURMCTLD_PORT:-6817}
CONF
SLURMD_PORT=${SLURMD_PORT:-6818}
if [ "$NODES" -eq 1 ]; then
  cat >> "$DIR/slurm.conf" <<CONF
SlurmdSpoolDir=$DIR/spool
SlurmdPidFile=$DIR/slurmd.pid
SlurmdLogFile=$DIR/log/slurmd.log
SlurmdPort=$SLURMD_PORT
NodeName=$NODE CPUs=$CPUS State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
  NAMES=("")
else
  cat >> "$DIR/slurm.conf" <<CONF
SlurmdSpoolDir=$DIR/spool-%n
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmdLogFile=$DIR/log/slurmd-%n.log
CONF
  NAMES=()
  for i in $(seq 1 "$NODES"); do
    NAMES+=("n$i")
    echo "NodeName=n$i NodeHostname=$NODE NodeAddr=127.0.0.1 Port=$((SLURMD_PORT + i - 1)) CPUs=$CPUS State=UNKNOWN" >> "$DIR/slurm.conf"
  done
  echo "PartitionName=local Nodes=n[1-$NODES] Default=YES MaxTime=INFINITE State=UP" >> "$DIR/slurm.conf"
fi

export SLURM_CONF="$DIR/slurm.conf"
slurmctld -f "$SLURM_CONF"
for name in "${NAMES[@]}"; do
  if [ -z "$name" ]; then slurmd -f "$SLURM_CONF"; else slurmd -f "$SLURM_CONF" -N "$name"; fi
done
for _ in $(seq 1 100); do                      # wait until every node takes jobs
  if [ "$(sinfo -h -N -o %T 2>/dev/null | grep -cE '^(idle|mixed|allocated)')" -ge "$NODES" ]; then
    echo "SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.2
done
echo "start.sh: the node did not become idle; see $DIR/log" >&2
exit 4
