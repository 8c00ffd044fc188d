#!/usr/bin/env bash
# Start a one-node SLURM cluster (slurmctld + slurmd + munged) in a private folder, for tests and
# local trials. Everything (config, state, logs, pid files, munge key and socket) lives in DIR.
#   slurm/local/start.sh DIR [CPUS]      then: export SLURM_CONF=DIR/slurm.conf
#   slurm/local/stop.sh DIR
# Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge) and root (SlurmUser=root).
set -euo pipefail
DIR=$(realpath -m "${1:?usage: start.sh DIR [CPUS]}")
CPUS=${2:-$(nproc)}
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
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
NodeName=$NODE CPUs=$CPUS State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF

export SLURM_CONF="$DIR/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 1 100); do                      # wait until the node takes jobs
  if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.2
done
echo "start.sh: the node did not become idle; see $DIR/log" >&2
exit 4
