"""Build features from validated bars: every ticker in one pass, on every core.

Bars are grouped by ticker once, here, outside the indicators (which know nothing of tickers):
one frame holds each ticker's bars in time order, one ticker after another (input already so
ordered is used as it is). The registry's per-ticker, clock and cross-asset features are then
written by compiled families straight into one array (:mod:`.fused`), which becomes the output's
columns without a copy. A feature the compiled path does not know (a macro series') is the
registry's expression, evaluated by Polars in one query over all tickers: every lag, window and
running sum restarts at a ticker's row 0 (:data:`ROW`, :func:`~.indicators.rows_from`), and every
intermediate any such feature needs is computed once, as a column of a stage (:mod:`.binder`).
The plan of a feature set is built once per (config, ticker count class, macro columns).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from ploutos.config import FeaturesConfig
from ploutos.data.bars import BAR_COLUMNS, BAR_SCHEMA, to_utc
from ploutos.errors import DataError
from ploutos.features import fused
from ploutos.features.binder import Binder
from ploutos.features.indicators import rows_from
from ploutos.features.registry import LOCAL_TZ, FeatureSpec, all_specs

KEYS = ("timestamp", "ticker")
ROW = "__row"
"""Each bar's row number inside its ticker: where every window and lag of the one query restarts."""


def feature_specs(bars: pl.DataFrame, cfg: FeaturesConfig | None = None) -> list[FeatureSpec]:
    """The specs :func:`compute` produces for these bars (cross-asset ones need 2+ tickers)."""
    return list(_plan_for(bars, cfg).specs)


def compute(
    bars: pl.DataFrame, cfg: FeaturesConfig | None = None, *, kinds: Sequence[str] | None = None
) -> pl.DataFrame:
    """Features of one or many tickers: ``timestamp, ticker`` and one column per feature.

    Values are raw (not normalized); a feature is null during its warm-up and wherever it is not
    finite (a log of a non-positive ratio, 0/0). ``kinds`` keeps only some kinds (``raw``,
    ``observation``, ``cross``, ``macro``); by default all are returned.
    """
    frame = prepare_bars(bars)
    ordered, bounds = _grouped(frame)
    plan = _plan(cfg, bounds.shape[0] > 2, _macro_columns(frame))
    wanted = [s.name for s in plan.specs if kinds is None or s.kind in kinds]
    lengths = np.diff(bounds)
    rows = np.arange(ordered.height, dtype=np.int64) - np.repeat(bounds[:-1], lengths)
    stamps = ordered["timestamp"]
    ticks = stamps.to_physical()  # held: the array below is a view of its memory
    ohlcv = tuple(ordered[name].to_numpy() for name in ("open", "high", "low", "close", "volume"))
    compiled = fused.run(
        plan.fused,
        ohlcv,
        rows,
        bounds,
        ticks.to_numpy(),
        _PER_SECOND[stamps.dtype.time_unit],  # type: ignore[attr-defined]
        threads=pl.thread_pool_size(),
    )
    names = set(compiled.names)
    computed = [compiled.frame([name for name in wanted if name in names])] if names.intersection(wanted) else []
    if not plan.per_ticker:
        return pl.concat([ordered.select(*KEYS), *computed], how="horizontal")
    query = _staged(ordered.with_columns(pl.Series(ROW, rows)).lazy(), plan.stages, plan.per_ticker)
    # The in-memory engine: Polars' default streaming engine costs ~20x more on these wide, many-stage queries.
    features = query.collect(engine="in-memory")
    return pl.concat([features, *computed], how="horizontal").select(*KEYS, *wanted)


_PER_SECOND = {"ns": 10**9, "us": 10**6, "ms": 10**3}


@dataclass(frozen=True)
class _Plan:
    """One feature set: what the compiled path writes, and the expressions of the rest."""

    specs: tuple[FeatureSpec, ...]
    fused: fused.FusedSet
    stages: tuple[tuple[pl.Expr, ...], ...]
    """The shared intermediates of the features left to Polars, one ``with_columns`` per stage."""
    per_ticker: tuple[pl.Expr, ...]
    """The features left to Polars (macro series'), nulled where not finite."""


def _plan_for(bars: pl.DataFrame, cfg: FeaturesConfig | None) -> _Plan:
    """The plan of these bars' feature set: cross-asset features with 2+ tickers, macro ones per column."""
    return _plan(cfg, bars["ticker"].n_unique() > 1, _macro_columns(bars))


def _macro_columns(bars: pl.DataFrame) -> tuple[str, ...]:
    return tuple(name for name in bars.columns if name.startswith("macro_"))


@functools.lru_cache(maxsize=16)
def _plan(cfg: FeaturesConfig | None, many_tickers: bool, macro: tuple[str, ...]) -> _Plan:
    """Building and deduplicating the expressions costs 40 ms, as much as a 15k-bar compute: cached."""
    cfg = cfg or FeaturesConfig()
    specs = all_specs(cfg, n_tickers=2 if many_tickers else 1, macro_columns=macro)
    kinds = {spec.kind for spec in specs}
    wanted = fused.FusedSet(tuple(sorted(set(cfg.windows))), zone=LOCAL_TZ, cross="cross" in kinds)
    names = {spec.name for spec in specs}
    unknown = [name for name in wanted.names if name not in names]
    if unknown:  # the registry and the compiled path disagree: a bug, not bad input
        raise AssertionError(f"the compiled features {unknown} are not in the registry")
    compiled = set(wanted.names)
    binder = Binder()
    with rows_from(pl.col(ROW)):
        per_ticker = tuple(_finite(binder(spec.expr(binder)), spec.name) for spec in specs if spec.name not in compiled)
    return _Plan(tuple(specs), wanted, _stages(binder), per_ticker)


def _stages(binder: Binder) -> tuple[tuple[pl.Expr, ...], ...]:
    return tuple(map(tuple, binder.stages()))


def _staged(frame: pl.LazyFrame, stages: tuple[tuple[pl.Expr, ...], ...], outputs: tuple[pl.Expr, ...]) -> pl.LazyFrame:
    for stage in stages:
        frame = frame.with_columns(stage)
    return frame.select(*KEYS, *outputs)


def prepare_bars(bars: pl.DataFrame) -> pl.DataFrame:
    """Canonical bars (plus any ``macro_*`` columns) with UTC timestamps."""
    missing = [name for name in BAR_COLUMNS if name not in bars.columns]
    if missing:
        raise DataError(f"bars lack column(s) {', '.join(missing)}", rule="schema")
    if bars.is_empty():
        raise DataError("no bars to compute features from", rule="schema")
    frame = to_utc(bars) if bars.schema["timestamp"] != BAR_SCHEMA["timestamp"] else bars
    macro = [name for name in frame.columns if name.startswith("macro_")]
    casts = [pl.col(name).cast(dtype) for name, dtype in BAR_SCHEMA.items()]
    return frame.select(*casts, *(pl.col(name).cast(pl.Float64) for name in macro))


def _grouped(frame: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray]:
    """The bars ticker after ticker (in order of first appearance), each in time order, and the
    offsets where each ticker starts (then the end). Bars already so ordered are kept as they are."""
    if frame["timestamp"].null_count():
        row = int(frame["timestamp"].is_null().arg_true()[0])
        raise DataError(f"bar {row} of {frame['ticker'][row]!r} has no timestamp", rule="schema")
    names = frame["ticker"]
    if names.null_count() == 0 and (names == names[0]).all():  # one ticker (a comparison costs less than runs)
        lengths = np.array([frame.height], dtype=np.int64)
        tickers = names.head(1)
    else:
        runs = names.rle()
        lengths, tickers = runs.struct.field("len").to_numpy(), runs.struct.field("value")
    if tickers.null_count() == 0 and tickers.n_unique() == tickers.len():  # each ticker in one run
        bounds = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))
        backwards = np.diff(frame["timestamp"].to_physical().to_numpy()) < 0
        backwards[bounds[1:-1] - 1] = False  # from one ticker's last bar to the next one's first
        if not backwards.any():
            return frame, bounds
    parts = frame.partition_by("ticker", maintain_order=True)
    parts = [part if part["timestamp"].is_sorted() else part.sort("timestamp") for part in parts]
    bounds = np.concatenate(([0], np.cumsum([part.height for part in parts], dtype=np.int64)))
    return (pl.concat(parts, how="vertical") if len(parts) > 1 else parts[0]), bounds


def _finite(expr: pl.Expr, name: str) -> pl.Expr:
    """``expr`` where finite, else null (a log of a non-positive ratio, 0/0), named ``name``."""
    return pl.when(expr.is_finite()).then(expr).alias(name)
