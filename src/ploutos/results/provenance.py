"""Where a result came from: code, packages, data, machine and Slurm job."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from ploutos import __version__

PACKAGES = ("numpy", "polars", "torch", "gymnasium", "stable-baselines3", "sb3-contrib", "h5py", "mpi4py")
SLURM_VARIABLES = {
    "slurm_job_id": "SLURM_JOB_ID",
    "slurm_array_job_id": "SLURM_ARRAY_JOB_ID",
    "slurm_array_task_id": "SLURM_ARRAY_TASK_ID",
    "slurm_restart_count": "SLURM_RESTART_COUNT",
}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "ploutos": __version__}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_revision(path: Path | None = None) -> tuple[str, bool]:
    """The commit of the source tree this package runs from and whether it has local changes;
    ``("unknown", False)`` for an installed wheel or without git."""
    source = path or Path(__file__).resolve().parents[3]
    try:
        revision = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return revision, bool(status.strip())


def dataset_hash(store: str | Path) -> str:
    """sha256 over the manifest's file hashes: two datasets with equal bars have equal hashes."""
    manifest = json.loads((Path(store) / "manifest.json").read_text())
    files = {name: entry["sha256"] for name, entry in sorted(manifest.get("files", {}).items())}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def provenance(store: str | Path, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Versions, git revision, dataset hash, host and Slurm ids of this process."""
    environ = dict(os.environ) if environ is None else environ
    revision, dirty = git_revision()
    record: dict[str, Any] = {
        "ploutos": __version__,
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "git_revision": revision,
        "git_dirty": dirty,
        "dataset_hash": dataset_hash(store),
        "host": socket.gethostname(),
    }
    record.update({key: environ.get(variable, "") for key, variable in SLURM_VARIABLES.items()})
    return record
