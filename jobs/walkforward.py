"""Submit a whole walk-forward run, wait with progress, aggregate and report.

    python jobs/walkforward.py --config configs/full.yaml --executor slurm
    python jobs/walkforward.py --config quickstart --executor local --set ppo.total_timesteps=50000

Executors: slurm (submitit job array, one node per fold x member, requeued on time limits),
local (this machine, every core and GPU, one task at a time: RunPod mode), debug (in this
process). Edit the defaults below for your site; the config's `slurm:` section holds partition,
account and time limit.
"""

import argparse
import sys

from ploutos.config import load
from ploutos.errors import PloutosError
from ploutos.launch import launch

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--config", default="quickstart", help="YAML file or embedded config name")
parser.add_argument("--executor", default="slurm", choices=["slurm", "local", "debug"])
parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
args = parser.parse_args()
try:
    sys.exit(launch(load(args.config, args.overrides), args.executor))
except PloutosError as err:
    sys.exit(f"walkforward: error: {err}")
