"""A finished (or partly finished) run folder as pandas DataFrames (``ploutos.load_run`` adds its models).

Everything is read from the run's task files (``tasks/fold<F>_member<M>.h5``, ``fold<F>_ensemble.h5``)
and, for the stitched out-of-sample curve, from ``summary.h5`` once ``ploutos aggregate`` wrote it.
A missing or damaged task file is a row with its status, never an exception: a run that is still
training can be read. Tables are built when first asked for and kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from ploutos.config import Config
from ploutos.errors import PloutosError
from ploutos.results.layout import RunLayout
from ploutos.results.recorded import run_config

ENSEMBLE = -1
"""The ``member`` of a fold's ensemble in every table."""
STRATEGIES = ("policy", "buy_and_hold", "equal_weight", "flat", "random_turnover")
"""The strategies a task file evaluates; ``policy`` is the member or the ensemble itself."""
FOLD_BOUNDS = ("train_start", "validation_start", "test_start", "test_end")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _time(values: np.ndarray) -> pd.DatetimeIndex:
    return pd.to_datetime(np.asarray(values, dtype="datetime64[us]")).tz_localize("UTC")


@dataclass
class RunResults:
    """The results of the run in ``path``: config, fold plan, metrics and curves.

    Tables (pandas DataFrames; ``polars.from_pandas`` converts any of them):

    - :attr:`tasks`: one row per (fold, member), ``member`` -1 for the fold's ensemble: status, file.
    - :attr:`folds`: one row per fold: calendar bounds of training, validation and test, and rows.
    - :attr:`metrics`: one row per readable task: every test-window metric of the member or the
      ensemble, ``p_random``, and the bootstrap interval of each bootstrapped statistic
      (``sharpe_low``, ``sharpe_high``, ...).
    - :attr:`fold_metrics`: one row per (fold, strategy) of the ensembles: the ensemble
      (``policy``) beside buy and hold, equal weight, flat and the random policies' median.
    - :meth:`equity`: the test-window equity curves, long format.
    - :attr:`oos`: the stitched out-of-sample curves of ``summary.h5`` (None before aggregation).

    :class:`ploutos.api.Run` adds the models: ``policy(fold)`` and ``backtest(...)``.
    """

    path: Path
    config: Config
    run_hash: str
    _files: dict[tuple[int, int], Path] = field(default_factory=dict, repr=False)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.path)

    @property
    def n_folds(self) -> int:
        """Folds of the run's plan (``plan.json``), or the highest fold with a task file + 1."""
        plan = self.layout.plan_file
        if plan.exists():
            try:
                return int(json.loads(plan.read_text())["folds"])
            except (ValueError, KeyError, TypeError):
                pass
        return max((fold for fold, _ in self._files), default=-1) + 1

    @cached_property
    def tasks(self) -> pd.DataFrame:
        rows = []
        for fold in range(self.n_folds):
            for member in [*range(self.config.ensemble.members), ENSEMBLE]:
                file = self.layout.result(fold, None if member == ENSEMBLE else member)
                rows.append({"fold": fold, "member": member, "status": _status(file, self.run_hash), "file": file})
        return pd.DataFrame(rows, columns=["fold", "member", "status", "file"])

    def _ok(self) -> list[tuple[int, int, Path]]:
        done = self.tasks[self.tasks["status"] == "ok"]
        return [(int(f), int(m), Path(p)) for f, m, p in zip(done["fold"], done["member"], done["file"], strict=True)]

    @cached_property
    def folds(self) -> pd.DataFrame:
        rows: dict[int, dict[str, Any]] = {}
        for fold, _, file in self._ok():
            if fold in rows:
                continue
            with h5py.File(file, "r", locking=False) as h5:
                attrs = {k: _text(v) if not isinstance(v, np.ndarray) else v for k, v in h5["fold"].attrs.items()}
            row: dict[str, Any] = {"fold": fold}
            for key in FOLD_BOUNDS:
                text = str(attrs.get(key, "")).rstrip("Z")
                row[key] = pd.Timestamp(text, tz="UTC") if text else pd.NaT
            for key in ("train", "validation", "test"):
                start, stop = (int(x) for x in np.asarray(attrs.get(f"{key}_rows", [0, 0])))
                row[f"{key}_bars"] = stop - start
            row["embargo_bars"] = int(attrs.get("embargo_bars", 0))
            rows[fold] = row
        return pd.DataFrame([rows[f] for f in sorted(rows)])

    @cached_property
    def metrics(self) -> pd.DataFrame:
        rows = []
        for fold, member, file in self._ok():
            with h5py.File(file, "r", locking=False) as h5:
                row: dict[str, Any] = {"fold": fold, "member": member}
                row.update({k: float(v) for k, v in h5["metrics/policy"].attrs.items()})
                random = h5["benchmarks/random_turnover"].attrs
                row["p_random"] = float(random["p_random"]) if "p_random" in random else np.nan
                boot = h5["bootstrap"].attrs
                row.update({k: float(v) for k, v in boot.items() if k.endswith(("_low", "_high"))})
            rows.append(row)
        return pd.DataFrame(rows).sort_values(["fold", "member"], ignore_index=True) if rows else pd.DataFrame()

    @cached_property
    def fold_metrics(self) -> pd.DataFrame:
        rows = []
        for fold, member, file in self._ok():
            if member != ENSEMBLE:
                continue
            with h5py.File(file, "r", locking=False) as h5:
                for strategy in STRATEGIES:
                    if f"metrics/{strategy}" in h5:
                        values = {k: float(v) for k, v in h5[f"metrics/{strategy}"].attrs.items()}
                        rows.append({"fold": fold, "strategy": strategy, **values})
        return pd.DataFrame(rows)

    def equity(self, fold: int | None = None, member: int | None = ENSEMBLE) -> pd.DataFrame:
        """Test-window curves (``timestamp`` UTC, ``fold``, ``member``, ``equity``, ``buy_and_hold``,
        ``equal_weight``, ``flat``) of one fold or all; ``member`` None for every member and ensemble."""
        frames = []
        for f, m, file in self._ok():
            if (fold is not None and f != fold) or (member is not None and m != member):
                continue
            with h5py.File(file, "r", locking=False) as h5:
                frame = pd.DataFrame({"timestamp": _time(h5["test/timestamps"][()]), "fold": f, "member": m,
                                      "equity": h5["test/equity"][()]})  # fmt: skip
                for name in ("buy_and_hold", "equal_weight", "flat"):
                    frame[name] = h5[f"benchmarks/{name}/equity"][()]
            frames.append(frame)
        if not frames:
            raise PloutosError(f"{self.path}: no readable task file for fold {fold}, member {member}")
        return pd.concat(frames, ignore_index=True)

    @cached_property
    def oos(self) -> pd.DataFrame | None:
        summary = self.layout.summary
        if not summary.exists():
            return None
        with h5py.File(summary, "r", locking=False) as h5:
            oos = h5["oos"]
            frame = pd.DataFrame({"timestamp": _time(oos["timestamps"][()]), "fold": oos["fold"][()]})
            for name in ("ensemble", "buy_and_hold", "equal_weight"):
                frame[name] = oos[name][()]
        return frame


def _status(file: Path, run_hash: str) -> str:
    if not file.exists():
        return "missing"
    try:
        with h5py.File(file, "r", locking=False) as h5:
            if _text(h5.attrs.get("config_hash", "")) != run_hash:
                return "foreign"
            for key in ("test/equity", "metrics/policy", "fold", "bootstrap", "benchmarks/random_turnover"):
                if key not in h5:
                    return f"damaged (no {key})"
    except OSError:
        return "damaged (unreadable)"
    return "ok"


def read_run(path: str | Path) -> RunResults:
    """The run folder ``path`` (e.g. ``results/quickstart``); its ``config.yaml`` must be the one the
    run wrote (a file edited since is refused, as paper trading refuses it)."""
    layout = RunLayout(Path(path))
    if not layout.root.is_dir():
        raise PloutosError(f"{layout.root}: not a folder; load_run takes a run folder such as results/quickstart")
    if not layout.config_file.exists():
        raise PloutosError(f"{layout.root}: no config.yaml; is this a run folder (results/<name>)?")
    checked = run_config(layout.root)
    files = {}
    for file in sorted(layout.tasks.glob("fold*_*.h5")):
        fold, _, who = file.stem.removeprefix("fold").partition("_")
        if fold.isdigit() and (who == "ensemble" or who.removeprefix("member").isdigit()):
            files[(int(fold), ENSEMBLE if who == "ensemble" else int(who.removeprefix("member")))] = file
    return RunResults(layout.root, checked.base, checked.run_hash, files)
