"""Shared fixtures: a runner for the real ``ploutos`` command and small bar files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def ploutos(tmp_path: Path):
    """Run the installed ``ploutos`` command in a scratch working directory, as a user would."""

    def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300) -> Completed:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "ploutos", *args],
            cwd=cwd or tmp_path,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Completed(proc.returncode, proc.stdout, proc.stderr)

    return run


def interrupt_at_first_checkpoint(
    command: list[str], cwd: Path, checkpoint: Path, signum: int, env: dict[str, str]
) -> tuple[int, str, str]:
    """Start a training command, send ``signum`` once ``checkpoint`` exists; its exit code, stdout, stderr."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert checkpoint.exists(), "no checkpoint written"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


def assert_one_line_error(result: Completed, *fragments: str) -> None:
    """A user error: non-zero exit, one line on stderr naming what and where, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ploutos: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="session", autouse=True)
def no_segment_outlives_the_suite():
    """`ploutos shm list` must be empty after the suite: every store a test made is gone."""
    shm_dir = Path(os.environ.get("PLOUTOS_SHM_DIR", "/dev/shm"))
    before = {p.name for p in shm_dir.glob("ploutos_*")}
    yield
    deadline = time.monotonic() + 10  # reapers of killed owners need a moment
    while (left := sorted({p.name for p in shm_dir.glob("ploutos_*")} - before)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"segments left in {shm_dir} after the test suite: {left}"


@pytest.fixture(scope="session")
def quickstart_arrays(tmp_path_factory: pytest.TempPathFactory):
    """The quickstart config (its store in a temporary folder) and its EURUSD bars as observation arrays."""
    from ploutos.config import load
    from ploutos.data.build import build_dataset
    from ploutos.features.pipeline import load_bars, observation_arrays

    store = tmp_path_factory.mktemp("quickstart-data") / "store"
    config = load("quickstart", [f"data.store={store}"])
    build_dataset(config.data, progress=False)
    return config, observation_arrays(load_bars(config), config)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart trained for 512 steps on its latest fold (fold 0 here), both members: a run folder to read,
    backtest and paper-trade (tests add files beside its results, never change them)."""
    root = tmp_path_factory.mktemp("paper_run")
    sets = [f"--set=data.store={root / 'data'}", f"--set=results_dir={root / 'results'}"]
    subprocess.run(
        [sys.executable, "-m", "ploutos", "data", "build", "--no-progress", *sets],
        check=True,
        cwd=root,
        capture_output=True,
        timeout=120,
    )
    train = ["--set=ppo.total_timesteps=512", "--set=walkforward.max_folds=1"]
    # an untrained policy's targets move little: a band of 0 keeps it trading; spacing and the change limit still apply
    train += ["--set=env.rebalance_band=0", "--set=env.decide_every=2", "--set=env.max_weight_change=0.5"]
    subprocess.run(
        [sys.executable, "-m", "ploutos", "run", "--no-progress", *sets, *train],
        check=True,
        cwd=root,
        capture_output=True,
        timeout=300,
    )
    return root / "results" / "quickstart"
