#!/usr/bin/env bash
# Print the slurm.conf of the local cluster: render_conf.sh DIR HOST NODES CPUS MEM_MB PORT_BASE
set -euo pipefail
dir="$1" host="$2" nodes="$3" cpus="$4" mem_mb="$5" port_base="$6"
cat <<EOF
# Rendered by slurm/local/render_conf.sh for a one-machine test cluster.
ClusterName=ploutos-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$((port_base - 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds before it starts again: Slurm's 120 is for real clusters.
AuthInfo=cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobRequeue=1
ReturnToService=2
SlurmdParameters=config_overrides
MpiDefault=none
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=60
KillWait=10
SchedulerParameters=defer_batch
EOF
for i in $(seq "$nodes"); do
  echo "NodeName=ploutos-n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((port_base + i)) CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
done
echo "PartitionName=debug Nodes=ploutos-n[1-$nodes] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
