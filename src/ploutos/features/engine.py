"""Build features from validated bars: one lazy query for every ticker, then the cross-asset features.

Bars are grouped by ticker once, here, outside the indicators (which know nothing of tickers):
one frame holds each ticker's bars in time order, one ticker after another, each bar numbered
inside its ticker (:data:`ROW`), and the indicators are built so that every lag, window and
running sum restarts at row 0 (:func:`~.indicators.rows_from`). One query then serves any number
of tickers: a query per ticker cost ~40 ms of fixed planning and calls each, 4 s at 100 tickers.
Every intermediate result any feature needs is computed once, as a column of a ``with_columns``
stage (see :mod:`.binder`); the features are then small expressions over those columns, nulled
where not finite. Cross-asset features need every ticker at the same bar: they run last, over the
timestamp, on the few columns they read, and join the frame without copying it. The expressions
are built once per feature set (:func:`_plan`); the windows run in compiled kernels (:mod:`.kernels`).
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
from ploutos.features.binder import Binder
from ploutos.features.indicators import rows_from
from ploutos.features.registry import FeatureSpec, all_specs

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
    plan = _plan_for(frame, cfg)
    wanted = [s.name for s in plan.specs if kinds is None or s.kind in kinds]
    query = _staged(_numbered(_by_ticker(frame)).lazy(), plan.stages, plan.per_ticker)
    # The in-memory engine: Polars' default streaming engine costs ~20x more on these wide, many-stage queries.
    features = query.collect(engine="in-memory")
    if plan.cross and (kinds is None or "cross" in kinds):
        # From the few columns they read: a stage over the wide frame would copy every column of it.
        inputs = features.select(*plan.cross_inputs).lazy()
        cross = _staged(inputs, plan.cross_stages, plan.cross).collect(engine="in-memory")
        features = features.hstack(cross.drop(*KEYS).get_columns())
    return features.select(*KEYS, *wanted)


@dataclass(frozen=True)
class _Plan:
    """The expressions of one feature set: built once per (config, ticker count class, macro columns)."""

    specs: tuple[FeatureSpec, ...]
    stages: tuple[tuple[pl.Expr, ...], ...]
    """The shared intermediates, one ``with_columns`` per stage (:class:`~.binder.Binder`)."""
    per_ticker: tuple[pl.Expr, ...]
    cross_stages: tuple[tuple[pl.Expr, ...], ...]
    """The cross-asset features' shared intermediates, over every ticker's per-ticker features."""
    cross: tuple[pl.Expr, ...]
    cross_inputs: tuple[str, ...]
    """The per-ticker columns (and keys) the cross-asset features read."""


def _plan_for(bars: pl.DataFrame, cfg: FeaturesConfig | None) -> _Plan:
    """The plan of these bars' feature set: cross-asset features with 2+ tickers, macro ones per column."""
    macro = tuple(name for name in bars.columns if name.startswith("macro_"))
    return _plan(cfg, bars["ticker"].n_unique() > 1, macro)


@functools.lru_cache(maxsize=16)
def _plan(cfg: FeaturesConfig | None, many_tickers: bool, macro: tuple[str, ...]) -> _Plan:
    """Building and deduplicating the expressions costs 40 ms, as much as a 15k-bar compute: cached."""
    specs = all_specs(cfg, n_tickers=2 if many_tickers else 1, macro_columns=macro)
    binder = Binder()
    with rows_from(pl.col(ROW)):
        per_ticker = tuple(_finite(binder(spec.expr(binder)), spec.name) for spec in specs if spec.kind != "cross")
    across = Binder(prefix="__cross_")
    cross = tuple(across(spec.expr(across)).alias(spec.name) for spec in specs if spec.kind == "cross")
    read = {
        root for expr in (*cross, *(e for stage in _stages(across) for e in stage)) for root in expr.meta.root_names()
    }
    inputs = (*KEYS, *sorted(name for name in read if name not in KEYS and not name.startswith(across.prefix)))
    return _Plan(tuple(specs), _stages(binder), per_ticker, _stages(across), cross, inputs)


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


def _by_ticker(frame: pl.DataFrame) -> list[pl.DataFrame]:
    """One frame per ticker, in order of first appearance, each sorted by time."""
    parts = frame.partition_by("ticker", maintain_order=True)
    return [part if part["timestamp"].is_sorted() else part.sort("timestamp") for part in parts]


def _numbered(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """The tickers' bars one after another, each bar numbered inside its ticker (:data:`ROW`)."""
    lengths = np.array([part.height for part in parts], dtype=np.int64)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    frame = pl.concat(parts, how="vertical") if len(parts) > 1 else parts[0]
    return frame.with_columns(pl.Series(ROW, np.arange(frame.height, dtype=np.int64) - starts))


def _finite(expr: pl.Expr, name: str) -> pl.Expr:
    """``expr`` where finite, else null (a log of a non-positive ratio, 0/0), named ``name``."""
    return pl.when(expr.is_finite()).then(expr).alias(name)
