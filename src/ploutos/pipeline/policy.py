"""A trained run's models as one policy, and the features it must see: what backtests and paper trading load.

:func:`load_policy` takes a fold's models (its ensemble, or one member) from ``RUN_DIR/models``
with the fold's normalization statistics from its task file (never refitted), after checking that
``config.yaml`` is the one the run wrote (:func:`run_config`). :func:`normalized_features` computes
features by the training code path (:func:`ploutos.features.pipeline.observation_arrays`, then
:func:`ploutos.features.normalize.transform`) in the model's asset order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import polars as pl

from ploutos.config import Config
from ploutos.data.sources.retry import one_line
from ploutos.errors import ConfigError, PloutosError, first_line
from ploutos.features.arrays import FeatureArrays
from ploutos.features.normalize import NormStats, transform
from ploutos.features.pipeline import observation_arrays
from ploutos.results.layout import RunLayout
from ploutos.results.recorded import run_config
from ploutos.train.artifacts import load_policy as load_model_policy
from ploutos.train.evaluate import Ensemble

MODEL_NAME = re.compile(r"fold(\d+)_member(\d+)\.zip$")


@dataclass
class Policy:
    """The latest fold's ensemble of a run, with what it needs to see."""

    config: Config
    run_hash: str
    fold: int
    members: list[int]
    actor: Any
    stats: NormStats
    names: tuple[str, ...]
    """Observation feature names of the task file, in order."""
    tickers: tuple[str, ...]
    """The traded symbols in the model's asset order (the task file's, mapped through ``--set data.tickers``)."""
    test_rows: tuple[int, int]
    test_start: np.datetime64


def load_policy(
    run_dir: Path, overrides: Sequence[str] = (), *, fold: int | None = None, member: int | None = None
) -> Policy:
    """The members of ``fold`` (default: the highest fold in ``RUN_DIR/models``), combined as
    ``config.ensemble.combine``; only ``member`` when given."""
    layout = RunLayout(Path(run_dir))
    checked = run_config(run_dir, overrides)
    config, base = checked.config, checked.base
    found = [(int(m[1]), int(m[2]), p) for p in layout.models.glob("*.zip") if (m := MODEL_NAME.search(p.name))]
    if not found:
        raise PloutosError(f"{layout.models}: no trained models (fold<F>_member<M>.zip); train the run first")
    trained = sorted({f for f, _, _ in found})
    if fold is None:
        fold = trained[-1]
    elif fold not in trained:
        raise PloutosError(f"{layout.models}: fold {fold} has no trained model; folds with models: {trained}")
    chosen = sorted((m, p) for f, m, p in found if f == fold)
    if member is not None:
        if member not in [m for m, _ in chosen]:
            raise PloutosError(
                f"{layout.models}: fold {fold} has no model of member {member}; members: {[m for m, _ in chosen]}"
            )
        chosen = [(m, p) for m, p in chosen if m == member]
    task = read_task(layout.result(fold, chosen[0][0]))  # before the models: a damaged file fails fast
    try:
        tickers = _traded(task.tickers, base.data.tickers, config.data.tickers)
    except ConfigError as err:
        sets = [t for t in overrides if t.split("=", 1)[0].strip() == "data.tickers"]
        raise ConfigError(f"--set {sets[-1]}: {err}" if sets else str(err)) from None
    run_hash = layout.recorded_hash() or ""
    actor = Ensemble([load_model_policy(p, run_hash) for _, p in chosen], config.ensemble.combine)
    stats = NormStats(config.features.normalize, task.center, task.scale, ())
    members = [m for m, _ in chosen]
    return Policy(config, run_hash, fold, members, actor, stats, task.names, tickers, task.test_rows, task.test_start)


@dataclass(frozen=True)
class TaskFile:
    """What paper trading reads from a fold's task file (``RUN_DIR/tasks/fold<F>_member<M>.h5``)."""

    tickers: tuple[str, ...]
    names: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray
    test_rows: tuple[int, int]
    test_start: np.datetime64


def read_task(path: Path) -> TaskFile:
    """The task file's assets, normalization statistics and test window, each checked (one-line errors)."""
    if not path.exists():
        raise PloutosError(f"{path}: missing; the fold's normalization statistics live there")
    field = "the file"
    try:
        with h5py.File(path, "r", locking=False) as h5:
            field = "tickers"
            tickers = _strings(_dataset(h5, field))
            field = "normalization/names"
            names = _strings(_dataset(h5, field))
            field = "normalization/center"
            center = _floats(_dataset(h5, field), len(names))
            field = "normalization/scale"
            scale = _floats(_dataset(h5, field), len(names))
            if (scale <= 0).any():
                raise ValueError("a scale <= 0")
            field = "fold.attrs.test_rows"
            rows = np.asarray(_attribute(h5, "test_rows"))
            if rows.shape != (2,) or rows.dtype.kind not in "iu" or not 0 <= rows[0] < rows[1]:
                raise ValueError("expected [start, stop) with 0 <= start < stop")
            field = "fold.attrs.test_start"
            raw = _attribute(h5, "test_start")
            start = np.datetime64(str(raw.decode() if isinstance(raw, bytes) else raw).rstrip("Z"), "us")
            if np.isnat(start):
                raise ValueError("not a time")
    except (OSError, KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError) as err:
        problem = one_line(first_line(err), 160) if isinstance(err, (OSError, KeyError)) else first_line(err)
        raise PloutosError(
            f"{path}: {field}: {problem}; the task file is damaged or not written by Ploutos "
            "(train the run again to rewrite it)"
        ) from None
    return TaskFile(tickers, names, center, scale, (int(rows[0]), int(rows[1])), start)


def _dataset(h5: h5py.File, name: str) -> np.ndarray:
    if name not in h5 or not isinstance(h5[name], h5py.Dataset):
        raise KeyError("missing")
    return np.asarray(h5[name][()])


def _attribute(h5: h5py.File, name: str) -> Any:
    if "fold" not in h5 or name not in h5["fold"].attrs:
        raise KeyError("missing")
    return h5["fold"].attrs[name]


def _strings(values: np.ndarray) -> tuple[str, ...]:
    if values.ndim != 1 or not len(values):
        raise ValueError("expected a non-empty list of names")
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)


def _floats(values: np.ndarray, n: int) -> np.ndarray:
    if values.shape != (n,) or values.dtype.kind not in "fiu":
        raise ValueError(f"expected {n} numbers, got shape {values.shape} of {values.dtype}")
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("not all finite")
    return values


def _traded(trained: tuple[str, ...], run: Sequence[str], now: Sequence[str]) -> tuple[str, ...]:
    """The symbols to trade in the model's asset order: ``data.tickers`` overrides map by position."""
    if list(run) == list(now):
        return trained
    if len(now) != len(trained) or sorted(trained) != sorted(run):
        raise ConfigError(f"data.tickers {list(now)}: the model trades {len(trained)} asset(s) {list(trained)}")
    return tuple(now[list(run).index(t)] for t in trained)


def normalized_features(bars: pl.DataFrame, policy: Policy) -> FeatureArrays:
    """The training code path: observation features of ``bars``, scaled with the fold's statistics."""
    config = policy.config
    arrays = observation_arrays(bars, config)
    if arrays.names != policy.names:
        raise PloutosError(f"features {list(arrays.names)} differ from the model's {list(policy.names)}")
    if set(arrays.tickers) != set(policy.tickers):
        raise PloutosError(f"bars hold {list(arrays.tickers)}, the policy trades {list(policy.tickers)}")
    order = [arrays.tickers.index(t) for t in policy.tickers]  # the model's asset order
    arrays = replace(
        arrays,
        tickers=policy.tickers,
        values=arrays.values[:, order],
        valid=arrays.valid[:, order],
        present=arrays.present[:, order],
        prices=arrays.prices[:, order],
    )
    if config.features.normalize == "none":
        return arrays
    return transform(arrays, policy.stats, config.features.clip)
