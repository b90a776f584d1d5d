"""One HDF5 file per task: a member of a fold, or the fold's ensemble.

The file is written under a temporary name and renamed into place, so a reader (the aggregation)
sees a whole file or none. Files are opened with HDF5 file locking off: they are written once by
one process, and locks fail on NFS and Lustre. The layout (``SCHEMA``) is documented in
``results/README.md``; :func:`missing_fields` checks a file against it.

Times are int64 microseconds since 1970-01-01 UTC (attribute ``unit``), strings UTF-8.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ploutos.analytics.evaluation import COST_COMPONENTS, RANDOM, Evaluation, FoldEvaluation
from ploutos.errors import PloutosError
from ploutos.files import atomic_path

SCHEMA_VERSION = 2
"""2: flat and random-turnover baselines, gross return, cost breakdown, validation."""
TIME_UNIT = "us since 1970-01-01 UTC"

SCHEMA: dict[str, str] = {
    "/": "attrs schema_version, kind (member|ensemble), fold, member (-1 for the ensemble), run, config_hash",
    "/config": "the resolved config as YAML (string)",
    "/provenance": "attrs: ploutos, python and package versions (packages, JSON), git_revision, git_dirty, "
    "dataset_hash, host, slurm_job_id, slurm_array_job_id, slurm_array_task_id, slurm_restart_count, ranks, "
    "started, finished, wall_seconds, timesteps, resumed",
    "/fold": "attrs train_start, train_end, test_start, test_end (ISO UTC), train_rows, test_rows ([start, stop)), "
    "embargo_bars",
    "/tickers": "(A,) asset names in array order",
    "/normalization/names": "(F,) observation feature names",
    "/normalization/center": "(F,) center fitted on the fold's training window",
    "/normalization/scale": "(F,) scale fitted on the fold's training window",
    "/training": "one (K,) dataset per training-curve column: timesteps, wall_seconds, ep_rew_mean, ep_len_mean, "
    "policy_gradient_loss, value_loss, entropy_loss, approx_kl, clip_fraction, explained_variance, fps "
    "(empty for an ensemble)",
    "/validation": "the validation curve (timesteps, metric values) and the chosen checkpoint (attrs chosen_timesteps, "
    "metric, ...); empty for an ensemble",
    "/test/timestamps": "(N+1,) int64: the bar before the test window, then every bar marked",
    "/test/equity": "(N+1,) policy equity at each close",
    "/test/weights": "(N+1, A) policy weights at each close",
    "/test/units": "(N+1, A) units held",
    "/test/turnover": "(N,) traded notional / equity at each fill",
    "/test/costs": "(N,) costs paid at each fill",
    "/test/cost_parts": "(N, C) the costs of each step by component, in cash (attr components: commission, spread, "
    "slippage, impact, financing, fees); rows sum to /test/costs",
    "/test/trades": "group of (K,) datasets step, asset, timestamp, units, price, notional: every non-zero fill",
    "/benchmarks/buy_and_hold/equity": "(N+1,) equity of buying 1/A of every asset at the first fill",
    "/benchmarks/equal_weight/equity": "(N+1,) equity of 1/A in every asset rebalanced at every bar",
    "/benchmarks/flat/equity": "(N+1,) equity of never trading: the initial cash throughout",
    "/benchmarks/random_turnover": "attrs seeds (S), probability (per-bar redraw probability after calibration), "
    "target_turnover (the policy's, annualized), median_turnover, passes, seed, p_random (share of seeds whose net "
    "total return is at least the policy's)",
    "/benchmarks/random_turnover/total_return": "(S,) each random seed's net total return",
    "/benchmarks/random_turnover/gross_return": "(S,) each random seed's total return before costs",
    "/benchmarks/random_turnover/turnover": "(S,) each random seed's annualized turnover",
    "/metrics/policy": "attrs: total_return, annual_return, volatility, sharpe, sortino, calmar, max_drawdown, "
    "win_rate, turnover, cost_drag, psr, n_bars, gross_return",
    "/metrics/buy_and_hold": "attrs: the same metrics",
    "/metrics/equal_weight": "attrs: the same metrics",
    "/metrics/flat": "attrs: the same metrics",
    "/metrics/random_turnover": "attrs: the median over the random seeds of each metric",
    "/cost_breakdown": "attrs commission, spread, slippage, impact, financing, fees: the policy's annualized share of "
    "equity paid in each (sum(part / equity) / N * bars per year); they sum to its cost_drag",
    "/bootstrap": "(S,) samples per statistic (sharpe, total_return, annual_return, max_drawdown); attrs block, "
    "confidence, <statistic>_low, <statistic>_high",
}
"""Every object a task file holds, with what it is."""

OPTIONAL_SCHEMA: dict[str, str] = {
    "/drift": "attrs method, rows ((A,) valid training rows of each asset): the reference of ``ploutos drift`` "
    "and of paper trading's drift halt (absent from files written before it; such files stay complete)",
    "/drift/quantiles": "(A, F, Q) quantiles of each asset's normalized observation features on the fold's training "
    "window (NaN for an asset with no valid row)",
    "/drift/cdf": "(A, F, Q) share of the training values at or below each quantile (the reference CDF there)",
    "/drift/probabilities": "(Q,) the probabilities of the quantiles",
}
"""Objects a task file may hold: :func:`missing_fields` does not ask for them."""


class ResultError(PloutosError):
    """A task file that cannot be read or does not follow the schema."""


@dataclass(frozen=True)
class DriftReference:
    """A fold's reference distribution of every observation feature (see :mod:`ploutos.analytics.drift`)."""

    quantiles: np.ndarray
    """(A, F, Q)."""
    cdf: np.ndarray
    """(A, F, Q) share of the training values at or below each quantile."""
    probabilities: np.ndarray
    """(Q,)."""
    rows: np.ndarray
    """(A,) valid training rows of each asset."""
    method: str


@dataclass(frozen=True)
class TaskResult:
    """What one task hands to the aggregation."""

    fold: int
    member: int | None
    """None for the fold's ensemble."""
    run: str
    config_hash: str
    config_yaml: str
    provenance: Mapping[str, Any]
    fold_bounds: Mapping[str, Any]
    """train_start, train_end, test_start, test_end (ISO), train_rows, test_rows, embargo_bars."""
    tickers: tuple[str, ...]
    feature_names: tuple[str, ...]
    norm_center: np.ndarray
    norm_scale: np.ndarray
    evaluation: FoldEvaluation
    training: Mapping[str, Any] = field(default_factory=dict)
    """Training curve columns of equal length (empty for an ensemble)."""
    validation: Mapping[str, Any] = field(default_factory=dict)
    """The validation curve and the chosen checkpoint: sequences become datasets, scalars attributes
    (empty for an ensemble)."""
    drift: DriftReference | None = None
    """The training window's feature sketch (``/drift``); None writes none."""

    @property
    def kind(self) -> str:
        return "ensemble" if self.member is None else "member"


def _time(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype="datetime64[us]").astype(np.int64)


def _attrs(target: h5py.AttributeManager, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, (dict, list, tuple)) and not (
            isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value)
        ):
            value = json.dumps(value, default=str)
        target[key] = "" if value is None else value


def _mapping(group: h5py.Group, values: Mapping[str, Any]) -> None:
    """Sequences and arrays as datasets (text as UTF-8 strings), everything else as attributes."""
    scalars = {}
    for key, value in values.items():
        if isinstance(value, (list, tuple, np.ndarray)):
            data = np.asarray(value)
            if data.dtype.kind in "USO":
                group.create_dataset(key, data=[str(v) for v in data.ravel()], dtype=h5py.string_dtype())
            else:
                group.create_dataset(key, data=data)
        else:
            scalars[key] = value.item() if isinstance(value, np.generic) else value
    _attrs(group.attrs, scalars)


def _write_random(group: h5py.Group, evaluation: FoldEvaluation) -> None:
    random = evaluation.random
    _attrs(
        group.attrs,
        {
            "seeds": random.seeds,
            "probability": random.probability,
            "target_turnover": random.target_turnover,
            "median_turnover": float(np.median(random.turnover)),
            "passes": random.passes,
            "seed": random.seed,
            "p_random": evaluation.p_random,
        },
    )
    for key in ("total_return", "gross_return", "turnover"):
        group.create_dataset(key, data=np.asarray(getattr(random, key), dtype=np.float64))


def _write_path(group: h5py.Group, path: Evaluation, *, full: bool) -> None:
    times = group.create_dataset("timestamps", data=_time(path.timestamps))
    times.attrs["unit"] = TIME_UNIT
    group.create_dataset("equity", data=path.equity)
    group.create_dataset("turnover", data=path.turnover)
    group.create_dataset("costs", data=path.costs)
    if full:
        parts = group.create_dataset("cost_parts", data=np.asarray(path.cost_parts, dtype=np.float64))
        parts.attrs["components"] = list(COST_COMPONENTS)
        group.create_dataset("weights", data=path.weights)
        group.create_dataset("units", data=path.units)
        trades = group.create_group("trades")
        for key, column in path.trades.items():
            data = _time(column) if key == "timestamp" else column
            trades.create_dataset(key, data=data)
        trades["timestamp"].attrs["unit"] = TIME_UNIT


def write_task_result(path: Path, result: TaskResult) -> None:
    """Write ``result`` to ``path`` atomically (the folder must exist)."""
    strings = h5py.string_dtype()
    with atomic_path(Path(path)) as tmp, h5py.File(tmp, "w", locking=False) as h5:
        _attrs(
            h5.attrs,
            {
                "schema_version": SCHEMA_VERSION,
                "kind": result.kind,
                "fold": result.fold,
                "member": -1 if result.member is None else result.member,
                "run": result.run,
                "config_hash": result.config_hash,
            },
        )
        h5.create_dataset("config", data=result.config_yaml, dtype=strings)
        _attrs(h5.create_group("provenance").attrs, result.provenance)
        _attrs(h5.create_group("fold").attrs, result.fold_bounds)
        h5.create_dataset("tickers", data=list(result.tickers), dtype=strings)
        norm = h5.create_group("normalization")
        norm.create_dataset("names", data=list(result.feature_names), dtype=strings)
        norm.create_dataset("center", data=np.asarray(result.norm_center, dtype=np.float64))
        norm.create_dataset("scale", data=np.asarray(result.norm_scale, dtype=np.float64))
        training = h5.create_group("training")
        for key, column in result.training.items():
            training.create_dataset(key, data=np.asarray(column))
        _mapping(h5.create_group("validation"), result.validation)
        if result.drift is not None:
            drift = h5.create_group("drift")
            drift.attrs["method"] = result.drift.method
            drift.attrs["rows"] = np.asarray(result.drift.rows, dtype=np.int64)
            drift.create_dataset("quantiles", data=np.asarray(result.drift.quantiles, dtype=np.float64))
            drift.create_dataset("cdf", data=np.asarray(result.drift.cdf, dtype=np.float64))
            drift.create_dataset("probabilities", data=np.asarray(result.drift.probabilities, dtype=np.float64))
        evaluation = result.evaluation
        _write_path(h5.create_group("test"), evaluation.policy, full=True)
        benchmarks = h5.create_group("benchmarks")
        for name, bench in evaluation.benchmarks.items():
            _write_path(benchmarks.create_group(name), bench, full=False)
        _write_random(benchmarks.create_group(RANDOM), evaluation)
        metrics = h5.create_group("metrics")
        for name, values in evaluation.metrics.items():
            _attrs(metrics.create_group(name).attrs, values.as_dict())
        _attrs(h5.create_group("cost_breakdown").attrs, evaluation.cost_breakdown)
        boot = h5.create_group("bootstrap")
        boot.attrs["block"] = evaluation.bootstrap.block
        boot.attrs["confidence"] = evaluation.bootstrap.confidence
        for stat, samples in evaluation.bootstrap.samples.items():
            boot.create_dataset(stat, data=samples)
            low, high = evaluation.bootstrap.intervals[stat]
            boot.attrs[f"{stat}_low"], boot.attrs[f"{stat}_high"] = low, high


def missing_fields(path: Path) -> list[str]:
    """Schema entries absent from the file at ``path`` (empty: the file is complete)."""
    missing = []
    try:
        with h5py.File(path, "r", locking=False) as h5:
            for key in SCHEMA:
                if key != "/" and key not in h5:
                    missing.append(key)
            for attr in ("schema_version", "kind", "fold", "member", "run", "config_hash"):
                if attr not in h5.attrs:
                    missing.append(f"/@{attr}")
            if "metrics/policy" in h5:
                for attr in ("sharpe", "psr", "max_drawdown", "cost_drag"):
                    if attr not in h5["metrics/policy"].attrs:
                        missing.append(f"/metrics/policy@{attr}")
    except OSError as err:
        raise ResultError(f"{path}: not a readable HDF5 file ({err})") from None
    return missing


def task_file_problem(path: Path, fold: int, member: int | None, run_hash: str) -> tuple[str, str] | None:
    """Why the file at ``path`` is not a usable result of task (``fold``, ``member``) of the run whose
    config hash is ``run_hash``, as ``(status, reason)``: ``missing``, ``incomplete``, ``foreign`` or
    ``unreadable``; None when it is usable. ``member`` None (or -1) is the fold's ensemble."""
    member = -1 if member is None else member
    if not path.exists():
        return "missing", "no task file"
    try:
        lacks = missing_fields(path)
        if lacks:
            more = f", +{len(lacks) - 3} more" if len(lacks) > 3 else ""
            return "incomplete", f"lacks {', '.join(lacks[:3])}{more}"
        with h5py.File(path, "r", locking=False) as h5:
            found = h5.attrs["config_hash"]
            found = found.decode() if isinstance(found, bytes) else str(found)
            if found != run_hash:
                return "foreign", f"config hash {found}, the run's is {run_hash}"
            held = int(h5.attrs["fold"]), int(h5.attrs["member"])
            if held != (fold, member):
                return "foreign", f"holds fold {held[0]} member {held[1]}, not fold {fold} member {member}"
            for group in h5["metrics"].values():
                dict(group.attrs)
    except (ResultError, OSError, KeyError, ValueError, TypeError) as err:
        return "unreadable", str(err).replace(f"{path}: ", "").splitlines()[0]
    return None


def read_drift(path: Path) -> DriftReference:
    """The ``/drift`` reference of a task file, checked (one-line errors; a file trained before drift
    references says so)."""
    try:
        with h5py.File(path, "r", locking=False) as h5:
            if "drift" not in h5:
                raise ResultError(
                    f"{path}: no drift reference (/drift): trained before drift references; train the run again "
                    "to write them (or pass --ignore-drift to paper trading)"
                )
            group = h5["drift"]
            quantiles = np.asarray(group["quantiles"][()], dtype=np.float64)
            cdf = np.asarray(group["cdf"][()], dtype=np.float64)
            probabilities = np.asarray(group["probabilities"][()], dtype=np.float64)
            rows = np.asarray(group.attrs["rows"], dtype=np.int64)
            method = group.attrs.get("method", "")
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ResultError(f"{path}: /drift unreadable ({str(err).splitlines()[0]}); train the run again") from None
    ok = (
        quantiles.ndim == 3
        and cdf.shape == quantiles.shape
        and probabilities.shape == (quantiles.shape[2],)
        and rows.shape == (quantiles.shape[0],)
    )
    if not ok or not np.all(np.diff(probabilities) > 0):
        raise ResultError(f"{path}: /drift has inconsistent shapes or probabilities; train the run again")
    method = method.decode() if isinstance(method, bytes) else str(method)
    return DriftReference(quantiles, cdf, probabilities, rows, method)


def read_metrics(path: Path) -> dict[str, dict[str, float]]:
    """The ``/metrics`` groups of a task file as plain dicts."""
    try:
        with h5py.File(path, "r", locking=False) as h5:
            return {name: {k: float(v) for k, v in group.attrs.items()} for name, group in h5["metrics"].items()}
    except (OSError, KeyError) as err:
        raise ResultError(f"{path}: no readable /metrics ({err})") from None


def read_attrs(path: Path, group: str = "/") -> dict[str, Any]:
    """Attributes of ``group`` (strings decoded, JSON left as text)."""
    try:
        with h5py.File(path, "r", locking=False) as h5:
            return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5[group].attrs.items()}
    except (OSError, KeyError) as err:
        raise ResultError(f"{path}: cannot read {group} ({err})") from None


PERCENT_METRICS = frozenset(
    {"total_return", "gross_return", "annual_return", "volatility", "max_drawdown", "cost_drag"}
)
"""Metrics that are shares of equity (returns, drawdown, cost drag): shown in percent on the console, as in
summary.md. Ratios (Sharpe, Sortino, Calmar), probabilities and turnover (x equity) stay plain numbers."""


def format_metric(key: str, value: float) -> str:
    """One metric as the console shows it: a share of equity in percent, anything else as a plain number."""
    if key in PERCENT_METRICS:
        return f"{value:.2%}" if math.isfinite(value) else "nan"
    return f"{value:.4f}"


def format_metrics(path: Path) -> str:
    """The test-window metrics of a task file: policy against the benchmarks, one row per metric, and
    where the policy's net return ranks among the random policies with its turnover."""
    metrics = read_metrics(path)
    columns = ["policy", *[name for name in metrics if name != "policy"]]
    shown = ("total_return", "gross_return", "annual_return", "sharpe", "sortino", "max_drawdown", "psr", "turnover",
             "cost_drag")  # fmt: skip
    lines = [f"{'':<14}" + "".join(f"{name:>16}" for name in columns)]
    for key in shown:
        values = (metrics[name].get(key, float("nan")) for name in columns)
        lines.append(f"{key:<14}" + "".join(f"{format_metric(key, value):>16}" for value in values))
    random = read_attrs(path, f"benchmarks/{RANDOM}") if RANDOM in metrics else {}
    if "p_random" in random:
        lines.append(
            f"p_random      {float(random['p_random']):.4f}: share of {int(random['seeds'])} random policies with the "
            "policy's turnover whose net total return is at least the policy's"
        )
    return "\n".join(lines)
