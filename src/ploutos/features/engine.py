"""Build features from validated bars: one lazy query, one ``collect``.

Bars are partitioned by ticker once, here, outside the indicators (which know nothing of
tickers). Every intermediate result any feature needs is computed once per partition, as a
column of a ``with_columns`` stage (see :mod:`.binder`); the features are then small expressions
over those columns. Partitions are concatenated lazily so Polars runs them in parallel.
Cross-asset features need every ticker at the same bar and run last, over the timestamp.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from ploutos.config import FeaturesConfig
from ploutos.data.bars import BAR_COLUMNS, BAR_SCHEMA, to_utc
from ploutos.errors import DataError
from ploutos.features.binder import Binder
from ploutos.features.registry import FeatureSpec, all_specs

KEYS = ("timestamp", "ticker")


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
    parts = [_staged(part.lazy(), plan.stages, plan.per_ticker) for part in _by_ticker(frame)]
    query = pl.concat(parts, how="vertical", rechunk=False)
    if plan.cross:
        query = query.with_columns(plan.cross)
    wanted = [s for s in plan.specs if kinds is None or s.kind in kinds]
    # The in-memory engine: Polars' default streaming engine costs ~20x more on these wide, many-stage queries.
    return query.select(*KEYS, *(_finite(s.name) for s in wanted)).collect(engine="in-memory")


@dataclass(frozen=True)
class _Plan:
    """The expressions of one feature set: built once per (config, ticker count class, macro columns)."""

    specs: tuple[FeatureSpec, ...]
    stages: tuple[tuple[pl.Expr, ...], ...]
    """The shared intermediates, one ``with_columns`` per stage (:class:`~.binder.Binder`)."""
    per_ticker: tuple[pl.Expr, ...]
    cross: tuple[pl.Expr, ...]


def _plan_for(bars: pl.DataFrame, cfg: FeaturesConfig | None) -> _Plan:
    """The plan of these bars' feature set: cross-asset features with 2+ tickers, macro ones per column."""
    macro = tuple(name for name in bars.columns if name.startswith("macro_"))
    return _plan(cfg, bars["ticker"].n_unique() > 1, macro)


@functools.lru_cache(maxsize=16)
def _plan(cfg: FeaturesConfig | None, many_tickers: bool, macro: tuple[str, ...]) -> _Plan:
    """Building and deduplicating the expressions costs 40 ms, as much as a 15k-bar compute: cached."""
    specs = all_specs(cfg, n_tickers=2 if many_tickers else 1, macro_columns=macro)
    binder = Binder()
    per_ticker = tuple(binder(spec.expr(binder)).alias(spec.name) for spec in specs if spec.kind != "cross")
    cross = tuple(spec.build() for spec in specs if spec.kind == "cross")
    return _Plan(tuple(specs), tuple(map(tuple, binder.stages())), per_ticker, cross)


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


def _finite(name: str) -> pl.Expr:
    column = pl.col(name)
    return pl.when(column.is_finite()).then(column).alias(name)
