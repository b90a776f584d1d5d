#!/usr/bin/env bash
# Set up a fresh machine: system packages (apt, when root), a virtual environment, and Ploutos
# installed in it with its test tools. Safe to run again; it only installs what is missing.
#   PLOUTOS_VENV        where the virtual environment lives (default: <repo>/.venv)
#   PLOUTOS_TORCH_SPEC  the torch requirement installed first (default: torch==2.13.0, a CPU build here)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PLOUTOS_VENV:-$repo/.venv}"
say() { printf '[setup] %s\n' "$*" >&2; }

apt_packages=(python3 python3-venv python3-dev)
missing=()
if command -v dpkg >/dev/null 2>&1; then
  for pkg in "${apt_packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
fi
# A pyenv or conda Python already brings venv and headers; apt is needed only without one.
if ! python3 -c 'import venv, sysconfig, os; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' 2>/dev/null \
   && [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    say "apt-get install ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    say "missing system packages: ${missing[*]} (run as root or install them)"; exit 1
  fi
fi
# Open MPI for multi-rank nodes and the cluster tests (mpirun -n 2); conda environments bring their own.
if ! command -v mpirun >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "apt-get install openmpi-bin libopenmpi-dev"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null
  else
    say "no mpirun: MPI runs and the cluster tests need Open MPI (openmpi-bin libopenmpi-dev, or conda's openmpi)"
  fi
fi
# Slurm and munge for the one-machine cluster of slurm/local/ (the cluster tests run on it).
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "apt-get install slurm-wlm munge"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
  else
    say "no slurmctld: the cluster tests need Slurm (slurm-wlm munge as root, see slurm/local/start.sh)"
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  say "creating virtual environment $venv"
  python3 -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
stamp="$venv/.ploutos-installed"
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ] \
   || ! "$venv/bin/python" -c 'import mpi4py' 2>/dev/null; then
  # The CPU build of torch first: a bare torch requirement would pull a multi-GB CUDA build.
  if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    say "installing torch (CPU build)"
    "${pip[@]}" install "${PLOUTOS_TORCH_SPEC:-torch==2.13.0}"
  fi
  say "installing ploutos and its dependencies"
  "${pip[@]}" install -e "$repo[dev,mpi]"
  # numba compiles the feature, rollout and loss kernels on first use and caches the machine code beside
  # them: pay it here, once, with a message, rather than as a silent pause in the first run.
  say "compiling the feature, rollout and loss kernels (numba, cached; about 50 s, once)"
  "$venv/bin/python" -c 'from ploutos.bench.features import synthetic_bars; from ploutos.features import compute
compute(synthetic_bars(2, 300).with_columns(macro_VIX=20.0))
from ploutos.train import rollout, update; rollout.compile_kernels(); update.compile_kernels()'
  touch "$stamp"
fi
if command -v mpirun >/dev/null 2>&1; then
  check='from mpi4py import MPI; print(MPI.Get_library_version().replace("\0", "").split(",")[0])'
  if mpi="$("$venv/bin/python" -c "$check" 2>&1)"; then
    say "mpi4py uses $mpi"
  else
    say "mpi4py does not load with this MPI: ${mpi##*$'\n'}"
  fi
fi
say "ready: $venv"
