"""The package, the conda environment and the repository layout agree."""

from __future__ import annotations

import re
import subprocess
import sys

import tomllib
import yaml

from conftest import REPO

CONDA_NAMES = {"torch": "pytorch"}
"""PyPI names that conda-forge spells differently."""
NOT_PYTHON_PACKAGES = {"python", "pip", "openmpi"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {_name(r) for r in project["dependencies"] + extras["mpi"] + extras["dev"]}
    wanted = {CONDA_NAMES.get(name, name) for name in wanted}

    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_name(d) for d in conda} | {_name(d) for d in pip if not d.startswith("-e")}

    assert "conda-forge" in env["channels"]
    assert {"openmpi", "mpi4py"} <= listed
    assert listed - NOT_PYTHON_PACKAGES == wanted


def test_requirements_are_ranges_not_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        assert "==" not in requirement, requirement
        assert "<" in requirement and ">=" in requirement, f"{requirement}: give a lower and an upper bound"


def test_layout_matches_the_design():
    for folder in ("jobs", "src/ploutos", "slurm", "configs", "env", "tests", "results"):
        assert (REPO / folder).is_dir(), folder
    for module in ("config", "data", "cli.py"):
        assert (REPO / "src/ploutos" / module).exists(), module
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "results/some_run/summary.h5"], cwd=REPO, check=False
    ).returncode
    kept = subprocess.run(["git", "check-ignore", "-q", "results/README.md"], cwd=REPO, check=False).returncode
    assert ignored == 0 and kept == 1


def test_console_script_and_version():
    out = subprocess.run([sys.executable, "-m", "ploutos", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("ploutos ")


def test_readme_opens_with_the_two_commands_that_ci_runs():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)
    first = [line for line in commands[0].splitlines() if line.strip() and not line.startswith("#")]
    assert first == ["bash scripts/quickstart.sh", "bash scripts/test.sh"]
    ci = (REPO / ".ci/run").read_text()
    assert "bash scripts/test.sh" in ci
