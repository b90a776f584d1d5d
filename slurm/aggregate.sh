#!/bin/bash
# Merge a run's task files into RUN_DIR/summary.h5 and write RUN_DIR/report/. Submitted by
# slurm/train_array.sh with --dependency=afterany:<array job>, so it runs when every task has
# ended, failed ones included (the aggregation lists them). By hand: sbatch slurm/aggregate.sh RUN_DIR
#SBATCH --job-name=ploutos-aggregate
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=00:30:00
set -euo pipefail
run_dir="${1:?usage: sbatch slurm/aggregate.sh RUN_DIR}"
python="${PLOUTOS_PYTHON:-python3}"
"$python" -m ploutos aggregate "$run_dir"
"$python" -m ploutos report "$run_dir"
