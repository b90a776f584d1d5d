"""Every case of ``tests/bad_inputs/`` (see its README) through the real ``ploutos`` command: one line
on stderr naming what and where, a non-zero exit, no traceback, and nothing that existed changed."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

CASES = REPO / "tests" / "bad_inputs"
FIXTURES = ("none", "dataset", "run")
RUN_SETTINGS = [
    "--set", "data.store=data", "--set", "results_dir=.", "--set", "name=run",
    "--set", "walkforward.max_folds=1", "--set", "ppo.total_timesteps=256", "--set", "ppo.n_steps=64",
    "--set", "hardware.n_envs=2", "--set", "hardware.envs_per_worker=2",
]  # fmt: skip
"""The tiny run of the ``run`` fixture: 1 fold x 2 members of the quickstart, 256 steps each."""


def _ploutos(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600):
    return subprocess.run(
        [sys.executable, "-m", "ploutos", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder per fixture: nothing; the built quickstart dataset; that dataset and a tiny trained run."""
    root = tmp_path_factory.mktemp("bad-input-fixtures")
    folders = {name: root / name for name in FIXTURES}
    for folder in folders.values():
        folder.mkdir()
    built = _ploutos("data", "build", "--no-progress", "--set", "data.store=data", cwd=folders["dataset"])
    assert built.returncode == 0, built.stderr
    shutil.copytree(folders["dataset"] / "data", folders["run"] / "data")
    trained = _ploutos("run", "--no-progress", *RUN_SETTINGS, cwd=folders["run"])
    assert trained.returncode == 0, trained.stdout + trained.stderr
    return folders


def _cases() -> list[Path]:
    return sorted(path.parent for path in CASES.glob("*/case.yaml"))


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def _fill(value: str, tmp: Path) -> str:
    return str(value).replace("{tmp}", str(tmp))


def test_the_corpus_is_not_empty_and_every_case_is_well_formed():
    cases = _cases()
    assert len(cases) >= 40, f"only {len(cases)} cases in {CASES}"
    for case in cases:
        spec = yaml.safe_load((case / "case.yaml").read_text())
        assert set(spec) <= {"why", "fixture", "command", "expect", "write", "truncate", "env", "exit"}, case
        assert spec.get("fixture", "none") in FIXTURES and spec["command"] and spec.get("why"), case


@pytest.mark.parametrize("case", _cases(), ids=lambda path: path.name)
def test_bad_input_is_refused_in_one_line_and_changes_nothing(case: Path, prepared, tmp_path: Path):
    spec = yaml.safe_load((case / "case.yaml").read_text())
    scratch = tmp_path / "scratch"
    shutil.copytree(prepared[spec.get("fixture", "none")], scratch)
    for item in case.iterdir():
        if item.name != "case.yaml":
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, scratch / item.name)
    for name, text in (spec.get("write") or {}).items():
        target = scratch / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_fill(text, scratch))
    for name, size in (spec.get("truncate") or {}).items():
        with open(scratch / name, "r+b") as handle:
            handle.truncate(size)
    before = _digests(scratch)
    env = {key: _fill(value, scratch) for key, value in (spec.get("env") or {}).items()}
    result = _ploutos(*(_fill(arg, scratch) for arg in spec["command"]), cwd=scratch, env=env, timeout=300)
    where = f"{case.name}: ploutos {' '.join(map(str, spec['command']))}"
    assert "Traceback" not in result.stderr + result.stdout, f"{where}\n{result.stderr}"
    assert result.returncode != 0, f"{where}: exit 0\n{result.stdout}"
    if "exit" in spec:
        assert result.returncode == spec["exit"], f"{where}: exit {result.returncode}\n{result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"{where}: {len(lines)} lines on stderr\n{result.stderr}"
    assert lines[0].startswith("ploutos: error: "), f"{where}: {lines[0]}"
    for fragment in spec.get("expect") or []:
        assert _fill(fragment, scratch) in lines[0], f"{where}: {fragment!r} not in {lines[0]!r}"
    after = _digests(scratch)
    changed = sorted(name for name, digest in before.items() if after.get(name) != digest)
    assert not changed, f"{where}: changed or removed {changed}"
