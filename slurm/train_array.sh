#!/bin/bash
# Submit a whole walk-forward run to Slurm:
#
#   sbatch slurm/train_array.sh CONFIG [--set section.key=value ...] [--no-wait]
#
# This small job (1 core) builds the dataset, plans the folds, renders the training array (one
# task per fold x member, each on its own node with --exclusive, R MPI ranks via srun, thread
# caps, --signal before the time limit, checkpoint and requeue, one log per task in
# RUN_DIR/logs/slurm/) to RUN_DIR/slurm/train_array.sbatch and the aggregation to
# RUN_DIR/slurm/aggregate.sbatch, submits the array, then the aggregation with an afterany
# dependency, so the aggregation and the report run even when tasks failed. It then follows the run until the aggregation has ended (its log shows progress),
# so `sbatch --wait slurm/train_array.sh CONFIG` returns when summary.h5 exists; pass --no-wait
# to end at once and free the core. Partition, account, qos, time limit: the config's `slurm:`
# section (or --set slurm.partition=...), never this file. Run it from the directory the config's
# relative paths start from; activate the environment first (or set PLOUTOS_PYTHON).
#SBATCH --job-name=ploutos-submit
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --output=ploutos-submit-%j.log
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: sbatch slurm/train_array.sh CONFIG [--set section.key=value ...] [--no-wait]" >&2
  exit 2
fi
config="$1"
shift
exec "${PLOUTOS_PYTHON:-python3}" -m ploutos launch --executor sbatch --config "$config" "$@"
