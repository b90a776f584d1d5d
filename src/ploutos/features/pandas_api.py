"""A pandas face on the Polars engine, for people whose code speaks pandas.

``FeatureEngineer().transform(df)`` takes the frames pandas users have — a DatetimeIndex or a
time column, ``Open``/``Close``-style names, naive or aware times, one ticker or a ticker column —
and returns the features as a pandas frame with the input's index, rows in the input's order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from ploutos.config import FeaturesConfig
from ploutos.data.sources.csv import normalize_columns, parse_timestamps
from ploutos.features.engine import compute, feature_specs

if TYPE_CHECKING:
    import pandas as pd

ROW = "__row"


class FeatureEngineer:
    """Computes Ploutos features from pandas bars."""

    def __init__(
        self,
        cfg: FeaturesConfig | None = None,
        *,
        timezone: str = "UTC",
        ticker: str = "ASSET",
        kinds: tuple[str, ...] | None = None,
    ) -> None:
        """``timezone`` reads naive times; ``ticker`` names bars without a ticker column; ``kinds`` filters."""
        self.cfg = cfg or FeaturesConfig()
        self.timezone = timezone
        self.ticker = ticker
        self.kinds = kinds

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One row of features per input row, same index and order."""
        bars = self._bars(frame)
        features = compute(bars.drop(ROW), self.cfg, kinds=self.kinds)
        joined = bars.select(ROW, "timestamp", "ticker").join(features, on=["timestamp", "ticker"], how="left")
        result = joined.sort(ROW).drop(ROW, "timestamp", "ticker").to_pandas()
        result.index = frame.index
        return result

    def feature_names(self, frame: pd.DataFrame) -> list[str]:
        """The columns :meth:`transform` returns for this frame."""
        specs = feature_specs(self._bars(frame), self.cfg)
        return [s.name for s in specs if self.kinds is None or s.kind in self.kinds]

    def _bars(self, frame: pd.DataFrame) -> pl.DataFrame:
        flat = pl.from_pandas(frame.reset_index()).with_row_index(ROW)
        rows = flat[ROW]
        bars = normalize_columns(flat.drop(ROW), "the pandas frame")
        if "ticker" not in bars.columns:
            bars = bars.with_columns(pl.lit(self.ticker).alias("ticker"))
        if "volume" not in bars.columns:
            bars = bars.with_columns(pl.lit(0.0).alias("volume"))
        bars = parse_timestamps(bars, path="the pandas frame", timezone=self.timezone, time_format=None)
        return bars.with_columns(rows)
