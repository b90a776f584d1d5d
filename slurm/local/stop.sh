#!/usr/bin/env bash
# Stop the local cluster started by slurm/local/start.sh (munged is left running).
set -uo pipefail
dir="${PLOUTOS_SLURM_DIR:-/tmp/ploutos-slurm}"
for pidfile in "$dir"/slurmd-*.pid "$dir"/slurmctld.pid; do
  [ -f "$pidfile" ] || continue
  pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
  rm -f "$pidfile"
done
rm -f "$dir/env.sh"
echo "slurm/local: stopped"
