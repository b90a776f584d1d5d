"""Permutation importance: block permutations, a policy whose answer is known, batched equals one env at a time."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from conftest import assert_one_line_error
from ploutos.bench.env import synthetic_arrays
from ploutos.config import EnvConfig
from ploutos.train.evaluate import run_policy
from ploutos.train.importance import (
    PORTFOLIO_INPUTS,
    Permutation,
    block_permutation,
    permuted_values,
    plan_permutations,
    policy_paths,
    run_permutations,
    window_arrays,
)

BARS_PER_YEAR = 252 * 7
CFG = replace(EnvConfig(), lookback=4, obs_layout="flat", rebalance_band=0.0, decide_every=1, max_weight_change=None)
ARRAYS = synthetic_arrays(300, 3, 4, seed=3)
WINDOW = window_arrays(ARRAYS, slice(100, 220))


class ReadsOne:
    """Long asset 0 with a weight that is a smooth function of feature ``feature`` of asset 0 at the last bar;
    every other input is ignored."""

    def __init__(self, n_assets: int, n_features: int, lookback: int, feature: int = 1) -> None:
        self.shape = (lookback, n_assets, n_features)
        self.feature, self.n_assets = feature, n_assets
        self.calls = 0

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        self.calls += 1
        obs = np.atleast_2d(np.asarray(observation, dtype=np.float64))
        window = obs[:, : int(np.prod(self.shape))].reshape(len(obs), *self.shape)
        weight = 0.5 + 0.5 * np.tanh(window[:, -1, 0, self.feature])
        actions = np.zeros((len(obs), self.n_assets))
        actions[:, 0] = weight
        return actions.astype(np.float32).reshape(np.shape(observation)[:-1] + (self.n_assets,)), state


def actor() -> ReadsOne:
    _, n_assets, n_features = WINDOW.values.shape
    return ReadsOne(n_assets, n_features, CFG.lookback)


def test_block_permutation_is_a_permutation_of_intact_circular_blocks():
    rng = np.random.default_rng(0)
    for n, block in ((100, 7), (64, 8), (5, 10), (1, 3)):
        order = block_permutation(n, block, rng)
        assert sorted(order.tolist()) == list(range(n))
        # consecutive entries step by +1 (mod n) except where one block ends: at most ceil(n / block) breaks
        breaks = int((np.diff(order) % n != 1).sum())
        assert breaks <= -(-n // block)
    assert not np.array_equal(block_permutation(100, 5, np.random.default_rng(1)), np.arange(100))


def test_the_read_feature_matters_and_every_other_input_changes_nothing():
    policy = actor()
    width = WINDOW.values.shape[0]
    baseline = policy_paths(policy, WINDOW, [WINDOW.values], CFG, BARS_PER_YEAR)
    _, n_assets, n_features = WINDOW.values.shape
    plan = plan_permutations(n_features, n_assets, width, width - CFG.lookback, repeats=3, block=6, seed=1)
    drops, changes = run_permutations(policy, WINDOW, CFG, BARS_PER_YEAR, plan, baseline)
    for p, drop, change in zip(plan, drops, changes, strict=True):
        if (p.kind, p.index) in (("feature", 1), ("asset", 0)):
            assert change > 0.01 and drop != 0.0
        else:
            assert change == 0.0 and drop == 0.0, (p.kind, p.index)
    assert {p.kind for p in plan} == {"feature", "asset", "portfolio"}
    assert sum(p.kind == "portfolio" for p in plan) == 3 * len(PORTFOLIO_INPUTS)


def test_batched_paths_equal_one_env_at_a_time():
    policy = actor()
    width = WINDOW.values.shape[0]
    rng = np.random.default_rng(5)
    chunk = [Permutation("feature", f, block_permutation(width, 6, rng)) for f in range(4)]
    chunk += [Permutation("asset", a, block_permutation(width, 6, rng)) for a in range(3)]
    copies = [permuted_values(WINDOW, p) for p in chunk]
    batched = policy_paths(policy, WINDOW, copies, CFG, BARS_PER_YEAR)
    calls = policy.calls
    assert calls == width - CFG.lookback  # one call per step for the whole batch
    for k, values in enumerate(copies):
        alone = run_policy(policy, replace(WINDOW, values=values), CFG, slice(0, width), BARS_PER_YEAR)
        np.testing.assert_allclose(batched.equity[k], alone.equity, rtol=0, atol=1e-12 * alone.equity[0])
        single = policy_paths(policy, WINDOW, [values], CFG, BARS_PER_YEAR)
        np.testing.assert_array_equal(batched.targets[k], single.targets[0])


def test_the_command_writes_importance_h5_and_the_report_charts_it(trained_run, tmp_path, ploutos):
    import shutil

    import h5py

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    done = ploutos("importance", "--run", str(run), "--fold", "0", "--repeats", "2", cwd=trained_run.parent.parent)
    assert done.returncode == 0, done.stderr
    assert "fold 0:" in done.stdout and " s (baseline return" in done.stdout
    with h5py.File(run / "importance.h5", "r") as h5:
        group = h5["fold0"]
        n_inputs = len(group["names"])
        assert group["return_drop"].shape == group["action_change"].shape == (n_inputs, 2)
        assert group.attrs["seconds"] > 0
    assert ploutos("report", str(run), cwd=trained_run.parent.parent).returncode == 0
    assert (run / "report" / "importance.png").exists() and (run / "report" / "importance_stability.png").exists()
    assert "## Feature importance" in (run / "report" / "summary.md").read_text()


def test_one_line_errors(trained_run, tmp_path, ploutos):
    done = ploutos("importance", "--run", str(trained_run), "--fold", "7", cwd=trained_run.parent.parent)
    assert_one_line_error(done, "fold 7 has no trained model")
    done = ploutos("importance", "--run", str(tmp_path / "nothing"))
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1


def test_a_fold_without_validation_window_is_one_line(trained_run, tmp_path, ploutos):
    import shutil

    import h5py

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for task in (run / "tasks").glob("fold0_*.h5"):
        with h5py.File(task, "a") as h5:
            h5["fold"].attrs["validation_rows"] = [0, 0]
    done = ploutos("importance", "--run", str(run), "--fold", "0")
    assert_one_line_error(done, "fold 0: no validation window")


def test_writing_one_fold_keeps_the_others(tmp_path):
    from ploutos.results.importance import FoldImportance, read_importance, write_importance

    def result(fold: int, shift: float) -> FoldImportance:
        drops = np.arange(6.0).reshape(3, 2) + shift
        return FoldImportance(fold, ("a", "b", "asset:X"), ("feature", "feature", "asset"), drops, drops / 10,
                              0.01, 2, 5, (10, 20), 1.5, 7)  # fmt: skip

    path = tmp_path / "importance.h5"
    write_importance(path, [result(0, 0.0), result(1, 1.0)])
    write_importance(path, [result(1, 5.0)])
    folds = read_importance(path)
    assert [f.fold for f in folds] == [0, 1]
    np.testing.assert_array_equal(folds[0].return_drop, result(0, 0.0).return_drop)
    np.testing.assert_array_equal(folds[1].return_drop, result(1, 5.0).return_drop)
    assert folds[1].ranked()[0][0] == "asset:X" and folds[1].names == ("a", "b", "asset:X")
