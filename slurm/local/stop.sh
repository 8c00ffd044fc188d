#!/usr/bin/env bash
# Stop the daemons of a cluster started by start.sh, by the pids in their pid files (never by name).
set -uo pipefail
DIR=$(realpath -m "${1:?usage: stop.sh DIR}")
for pidfile in "$DIR"/slurmd*.pid "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
done
