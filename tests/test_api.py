"""The Python API (``ploutos.load_run``, ``ploutos.make_env``): the README's example runs, the tables are the files."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from tests.conftest import REPO


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S)
    assert found, "README.md lost its <!-- api-example --> block"
    return found.group(1)


def test_the_readme_example_runs_on_a_trained_run(trained_run: Path) -> None:
    code = readme_example()
    assert len(code.strip().splitlines()) == 3  # "load the run in a Python session in three lines"
    done = subprocess.run([sys.executable, "-c", code], cwd=trained_run.parents[1], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "sharpe_low" in done.stdout and done.stdout.count("\n") >= 4  # a header and three tasks


def test_import_ploutos_stays_light() -> None:
    """The API's names are imported when used: `import ploutos` (the command's startup) pays for no torch."""
    code = "import sys, ploutos; ploutos.load_run; print('torch' in sys.modules)"
    light = "import sys, ploutos; ploutos.__version__; print('torch' in sys.modules, 'polars' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", light], capture_output=True, text=True).stdout.split() == [
        "False", "False"]  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == ["False"]


def test_the_tables_are_the_task_files(trained_run: Path) -> None:
    import ploutos

    run = ploutos.load_run(trained_run)
    assert run.config.name == "quickstart" and run.config.ppo.total_timesteps == 512
    assert run.tasks[["fold", "member", "status"]].values.tolist() == [[0, 0, "ok"], [0, 1, "ok"], [0, -1, "ok"]]
    with h5py.File(trained_run / "tasks" / "fold0_member1.h5", "r") as h5:
        metrics = dict(h5["metrics/policy"].attrs)
        boot = dict(h5["bootstrap"].attrs)
        equity = h5["test/equity"][()]
        fold = dict(h5["fold"].attrs)
    row = run.metrics.set_index(["fold", "member"]).loc[(0, 1)]
    assert row["sharpe"] == metrics["sharpe"] and row["total_return"] == metrics["total_return"]
    assert (row["sharpe_low"], row["sharpe_high"]) == (boot["sharpe_low"], boot["sharpe_high"])
    curve = run.equity(fold=0, member=1)
    np.testing.assert_array_equal(curve["equity"].to_numpy(), equity)
    assert str(curve["timestamp"].dt.tz) == "UTC"
    folds = run.folds.iloc[0]
    assert folds["test_bars"] == fold["test_rows"][1] - fold["test_rows"][0]
    assert folds["test_start"].isoformat().startswith(fold["test_start"].rstrip("Z"))
    strategies = run.fold_metrics["strategy"].tolist()
    assert strategies == ["policy", "buy_and_hold", "equal_weight", "flat", "random_turnover"]
    oos = run.oos  # `ploutos run` aggregated it
    assert oos is not None and oos["ensemble"].iloc[0] == pytest.approx(1.0)


def test_a_task_without_its_file_is_a_row_not_an_error(trained_run: Path, tmp_path: Path) -> None:
    import ploutos

    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(trained_run), str(copy)], check=True)
    (copy / "tasks" / "fold0_member0.h5").unlink()
    (copy / "tasks" / "fold0_member1.h5").write_bytes(b"not hdf5")
    run = ploutos.load_run(copy)
    assert run.tasks["status"].tolist() == ["missing", "damaged (unreadable)", "ok"]
    assert run.metrics["member"].tolist() == [-1]


def test_make_env_trades_the_folds_windows(trained_run: Path) -> None:
    """The test env is the evaluation's: the ensemble stepped through it ends at the task file's final equity."""
    import ploutos

    run = ploutos.load_run(trained_run)
    with h5py.File(trained_run / "tasks" / "fold0_ensemble.h5", "r") as h5:
        equity = h5["test/equity"][()]
    env = ploutos.make_env(run.config, fold=0, split="test")
    policy = run.policy(fold=0)
    observation, info = env.reset(seed=0)
    done, state, steps = False, None, 0
    while not done:
        action, state = policy.predict(observation, state=state, deterministic=True)
        observation, _, terminated, truncated, info = env.step(action)
        done, steps = terminated or truncated, steps + 1
    assert steps == len(equity) - 1
    assert info["equity"] == pytest.approx(equity[-1], rel=1e-12)
    train = ploutos.make_env(run.config, fold=0, split="train")
    assert train.rows.stop <= env.rows.start  # training rows end before the test window's history starts
    with pytest.raises(ploutos.api.ConfigError, match="split 'tests'"):
        ploutos.make_env(run.config, fold=0, split="tests")
