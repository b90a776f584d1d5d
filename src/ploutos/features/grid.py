"""Put the features of many tickers on one dense time grid: :class:`~ploutos.features.arrays.FeatureArrays`.

The missing-bar policy (forward fill within ``max_ffill_bars``, masks beyond) is documented in
:mod:`ploutos.features.arrays`, next to the arrays it shapes.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ploutos.errors import DataError
from ploutos.features.arrays import PRICE_FIELDS, FeatureArrays


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
