#!/usr/bin/env bash
# Start a one-machine Slurm cluster (Debian's slurm-wlm 22.05 and munge) for the tests and for
# trying the sbatch scripts before a real cluster.
#
#   bash slurm/local/start.sh          # installs the packages if missing (root), starts, waits
#   source "${PLOUTOS_SLURM_DIR:-/tmp/ploutos-slurm}/env.sh"   # SLURM_CONF for sbatch/squeue
#   bash slurm/local/stop.sh
#
# The cluster has PLOUTOS_SLURM_NODES (default 3) nodes named ploutos-n1..N, each one slurmd on
# this host with its own port and spool, each claiming all of this machine's cores: a
# submitter job and exclusive array tasks then have nodes of their own, as on a real cluster
# (the cores are shared underneath). No accounting (sacct fails, as on many small clusters),
# state and logs under PLOUTOS_SLURM_DIR. Running it again with the cluster up is a no-op.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${PLOUTOS_SLURM_DIR:-/tmp/ploutos-slurm}"
nodes="${PLOUTOS_SLURM_NODES:-3}"
port_base="${PLOUTOS_SLURM_PORT:-17800}"
say() { echo "slurm/local: $*"; }
fail() { echo "slurm/local: error: $*" >&2; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  [ "$(id -u)" = 0 ] || fail "slurm-wlm and munge are not installed; as root: apt-get install slurm-wlm munge"
  say "installing slurm-wlm and munge (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
[ "$(id -u)" = 0 ] || fail "run as root: slurmd starts job steps as their users"

mkdir -p "$dir"/{state,log,spool}
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"

# munge: one key, one daemon running as the munge user
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || fail "munged did not start (see /var/log/munge/munged.log)"
fi

if sinfo -h -o %T 2>/dev/null | grep -q idle && [ -f "$dir/env.sh" ]; then
  say "already running ($conf)"
  exit 0
fi

cpus="$(nproc)"
mem_mb="$(awk '/MemTotal/ {print int($2 / 1024 * 0.8 / '"$nodes"')}' /proc/meminfo)"
host="$(hostname -s)"
"$here/render_conf.sh" "$dir" "$host" "$nodes" "$cpus" "$mem_mb" "$port_base" > "$conf.tmp"
mv "$conf.tmp" "$conf"

slurmctld -f "$conf"
for i in $(seq "$nodes"); do
  slurmd -f "$conf" -N "ploutos-n$i"
done
for _ in $(seq 100); do
  idle="$(sinfo -h -N -o %T 2>/dev/null | grep -c idle || true)"
  [ "$idle" -ge "$nodes" ] && break
  sleep 0.2
done
[ "${idle:-0}" -ge "$nodes" ] || fail "nodes did not come up idle; see $dir/log (sinfo: $(sinfo -h -N -o '%N %T' 2>&1 | tr '\n' ' '))"
printf 'export SLURM_CONF=%q\n' "$conf" > "$dir/env.sh"
say "up: $nodes node(s) x $cpus cpus, partition debug; source $dir/env.sh"
