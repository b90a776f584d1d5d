"""``ploutos importance``: permutation importance of a trained fold's inputs on its validation window.

Each fold's ensemble (:func:`ploutos.pipeline.policy.load_policy`) trades the fold's validation
window (``validation_rows`` of its task file, with ``lookback`` rows of history) on features
computed by the training path with the fold's own normalization, once as it is (the baseline) and
once per (input, repeat) with that input block-permuted in time (:mod:`ploutos.train.importance`:
what is permuted and the two measures). All permuted paths of a fold are stepped as envs of one
core, the ensemble called once per step for a batch.

Results go to ``RUN_DIR/importance.h5`` (:mod:`ploutos.results.importance`: the layout), one group per
fold, rewritten for the folds computed (other folds' groups are kept).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ploutos.errors import PloutosError
from ploutos.features.pipeline import load_bars
from ploutos.pipeline.policy import load_policy, normalized_features
from ploutos.results.hdf5 import read_attrs
from ploutos.results.importance import FILE_NAME, FoldImportance, write_importance
from ploutos.results.layout import RunLayout
from ploutos.train.importance import (
    PORTFOLIO_INPUTS,
    plan_permutations,
    policy_paths,
    run_permutations,
    window_arrays,
)

Echo = Callable[[str], None]
DEFAULT_REPEATS = 10
TRADING_DAYS = 252


def trained_folds(run_dir: Path) -> list[int]:
    """The folds with a model in ``RUN_DIR/models``."""
    layout = RunLayout(Path(run_dir))
    folds = {int(p.name[4:].split("_")[0]) for p in layout.models.glob("fold*_member*.zip")}
    if not folds:
        raise PloutosError(f"{layout.models}: no trained models (fold<F>_member<M>.zip); train the run first")
    return sorted(folds)


def fold_importance(
    run_dir: Path, fold: int, *, repeats: int = DEFAULT_REPEATS, block: int | None = None, bars=None,
) -> FoldImportance:  # fmt: skip
    """Permutation importance of fold ``fold``'s ensemble on its validation window (see the module doc)."""
    if repeats < 1:
        raise PloutosError(f"--repeats {repeats}: at least 1")
    began = time.perf_counter()
    layout = RunLayout(Path(run_dir))
    policy = load_policy(layout.root, fold=fold)
    config = policy.config
    attrs = read_attrs(layout.result(policy.fold, policy.members[0]), "fold")
    start, stop = (int(v) for v in np.asarray(attrs.get("validation_rows", [0, 0])))
    if stop - start < 2:
        raise PloutosError(
            f"fold {fold}: no validation window (walkforward.validation_months is 0 for this run); importance is "
            "measured on the validation window"
        )
    lookback = config.env.lookback
    if start - lookback < 0:
        raise PloutosError(f"fold {fold}: lookback {lookback} reaches before row 0 (validation starts at row {start})")
    bars_per_year = config.data.bars_per_year
    block = max(1, round(bars_per_year / TRADING_DAYS)) if block is None else int(block)
    if block < 1:
        raise PloutosError(f"--block {block}: at least 1")
    arrays = normalized_features(load_bars(config) if bars is None else bars, policy)
    window = window_arrays(arrays, slice(start - lookback, stop))
    width, n_assets, n_features = window.values.shape
    baseline = policy_paths(policy.actor, window, [window.values], config.env, bars_per_year)
    plan = plan_permutations(
        n_features, n_assets, width, width - lookback, repeats=repeats, block=block, seed=config.seed * 1009 + fold
    )
    drops, changes = run_permutations(policy.actor, window, config.env, bars_per_year, plan, baseline)
    names = (
        *policy.names,
        *(f"asset:{t}" for t in policy.tickers),
        *(f"portfolio:{p}" for p in PORTFOLIO_INPUTS),
    )
    kinds = ("feature",) * n_features + ("asset",) * n_assets + ("portfolio",) * len(PORTFOLIO_INPUTS)
    return FoldImportance(
        fold=policy.fold,
        names=names,
        kinds=kinds,
        return_drop=drops.reshape(len(names), repeats),
        action_change=changes.reshape(len(names), repeats),
        baseline_return=float(baseline.total_return[0]),
        repeats=repeats,
        block=block,
        rows=(start, stop),
        seconds=time.perf_counter() - began,
        paths=len(plan) + 1,
    )


def importance(
    run_dir: Path, *, fold: int | None = None, repeats: int = DEFAULT_REPEATS, block: int | None = None,
    echo: Echo | None = None, top: int = 8,
) -> list[FoldImportance]:  # fmt: skip
    """Importance of every trained fold (or ``fold``), written to ``RUN_DIR/importance.h5``."""
    say = echo or (lambda _line: None)
    layout = RunLayout(Path(run_dir))
    folds = trained_folds(layout.root)
    if fold is not None:
        if fold not in folds:
            raise PloutosError(f"{layout.models}: fold {fold} has no trained model; folds with models: {folds}")
        folds = [fold]
    first = load_policy(layout.root, fold=folds[0])
    bars = load_bars(first.config)
    results = []
    for k in folds:
        result = fold_importance(layout.root, k, repeats=repeats, block=block, bars=bars)
        results.append(result)
        say(
            f"fold {k}: {result.paths} paths of {result.rows[1] - result.rows[0]} validation bars in "
            f"{result.seconds:.1f} s (baseline return {result.baseline_return:+.2%}, block {result.block} bars, "
            f"{result.repeats} repeats)"
        )
        for name, mean, lo, hi in result.ranked()[:top]:
            change = result.action_change[result.names.index(name)].mean()
            say(f"  {name:<28} return drop {mean:+.3%} [{lo:+.3%}, {hi:+.3%}]  action change {change:.3f}")
    target = layout.root / FILE_NAME
    write_importance(target, results)
    say(f"wrote {target}")
    return results
