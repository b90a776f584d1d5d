"""Features of many tickers on one time index, as the dense arrays the store and env read.

Missing-bar policy: the timeline is every timestamp at which any ticker has a bar. Where a ticker
has no bar, its features and close are carried forward from its last bar for at most
``max_ffill_bars`` bars (its open/high/low become that close, its volume 0, and ``present`` is
false, so nothing trades there); beyond that, and during warm-up, the entry is not ``valid``,
its feature values are 0 and its prices NaN once nothing is left to carry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from ploutos.errors import DataError

PRICE_FIELDS = ("open", "high", "low", "close", "volume")
"""Order of the last axis of :attr:`FeatureArrays.prices`."""


@dataclass(frozen=True)
class FeatureArrays:
    """Aligned features: ``values[t, a, f]`` is feature ``names[f]`` of ``tickers[a]`` at ``timestamps[t]``."""

    timestamps: np.ndarray
    """(T,) datetime64[us], UTC bar starts."""
    tickers: tuple[str, ...]
    """Asset order of axis 1."""
    names: tuple[str, ...]
    """Feature order of axis 2."""
    values: np.ndarray
    """(T, A, F) float32; 0 where not ``valid``."""
    valid: np.ndarray
    """(T, A) bool: every feature is defined (a real bar, or one carried forward within the limit)."""
    present: np.ndarray
    """(T, A) bool: the ticker has a real bar at this time."""
    prices: np.ndarray
    """(T, A, 5) float64: open, high, low, close, volume (see the module doc for carried bars)."""

    @property
    def shape(self) -> tuple[int, int, int]:
        """(time, asset, feature)."""
        return self.values.shape  # type: ignore[return-value]

    def rows_between(self, start: np.datetime64 | None, end: np.datetime64 | None) -> slice:
        """The time rows with ``start <= timestamp < end``."""
        lo = 0 if start is None else int(np.searchsorted(self.timestamps, start, side="left"))
        hi = len(self.timestamps) if end is None else int(np.searchsorted(self.timestamps, end, side="left"))
        return slice(lo, hi)


def align(features: pl.DataFrame, bars: pl.DataFrame, names: list[str], *, max_ffill_bars: int) -> FeatureArrays:
    """Put ``features`` (from :func:`ploutos.features.compute`) and their ``bars`` on one dense grid."""
    tickers = tuple(features["ticker"].unique(maintain_order=True).to_list())
    if not tickers:
        raise DataError("no features to align", rule="schema")
    order = pl.DataFrame({"ticker": list(tickers), "asset": np.arange(len(tickers), dtype=np.int32)})
    timeline = features.select("timestamp").unique().sort("timestamp")
    grid = timeline.join(order, how="cross")
    priced = features.join(
        bars.select("timestamp", "ticker", *PRICE_FIELDS), on=["timestamp", "ticker"], how="left"
    ).with_columns(pl.lit(True).alias("present"))
    filled = (
        grid.join(priced, on=["timestamp", "ticker"], how="left")
        .sort("asset", "timestamp")
        .with_columns(
            pl.col("present").fill_null(False),
            # null where the bar is missing, so that the flag, too, is carried forward within the limit
            pl.when(pl.col("present"))
            .then(pl.all_horizontal(pl.col(n).is_not_null() for n in names))
            .alias("complete"),
        )
        .with_columns(
            pl.col([*names, "close"]).fill_null(strategy="forward", limit=max_ffill_bars).over("asset"),
            pl.col("complete").fill_null(strategy="forward", limit=max_ffill_bars).over("asset"),
        )
        .with_columns(
            pl.col("complete").fill_null(False) & pl.all_horizontal(pl.col(n).is_not_null() for n in names),
            *(pl.col(p).fill_null(pl.col("close")) for p in ("open", "high", "low")),
            pl.col("volume").fill_null(0.0),
        )
        .sort("timestamp", "asset")
    )
    n_time, n_asset = timeline.height, len(tickers)
    valid = filled["complete"].to_numpy().reshape(n_time, n_asset)
    values = (
        filled.select(pl.when(pl.col("complete")).then(pl.col(n)).otherwise(0.0).cast(pl.Float32) for n in names)
        .to_numpy()
        .reshape(n_time, n_asset, len(names))
    )
    prices = filled.select(pl.col(p).cast(pl.Float64) for p in PRICE_FIELDS).to_numpy().reshape(n_time, n_asset, 5)
    return FeatureArrays(
        timestamps=timeline["timestamp"].dt.replace_time_zone(None).to_numpy(),
        tickers=tickers,
        names=tuple(names),
        values=np.ascontiguousarray(values),
        valid=valid,
        present=filled["present"].to_numpy().reshape(n_time, n_asset),
        prices=np.ascontiguousarray(prices),
    )
