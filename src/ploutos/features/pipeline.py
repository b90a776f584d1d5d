"""From a built dataset to the aligned observation arrays the node store will hold.

This is the one code path from bars to what the agent sees; training, evaluation and paper
trading all come through it, so a feature is computed the same way everywhere.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl

from ploutos.config import Config
from ploutos.data.macro import align_macro
from ploutos.data.store import read_dataset, read_macro
from ploutos.features.arrays import FeatureArrays
from ploutos.features.engine import compute
from ploutos.features.grid import align

OBSERVATION_KINDS = ("observation", "macro", "cross")
"""Feature kinds the agent sees; raw price-level indicators never reach it."""


def load_bars(config: Config) -> pl.DataFrame:
    """The dataset's bars of the config's tickers, with its macro series aligned as published."""
    data = config.data
    bars = read_dataset(data.store, data.tickers)
    if data.macro:
        bars = align_macro(bars, read_macro(data.store, data.macro))
    return bars


def observation_arrays(bars: pl.DataFrame, config: Config) -> FeatureArrays:
    """Observation features of ``bars`` on one time index (not yet normalized)."""
    features = compute(bars, config.features, kinds=OBSERVATION_KINDS)
    return align(features, bars, features.columns[2:], max_ffill_bars=config.features.max_ffill_bars)


def months_after(start: np.datetime64, months: int) -> np.datetime64:
    """``start`` moved by whole calendar months (the unit of walk-forward windows)."""
    moment = start.astype("datetime64[us]").astype(datetime)
    year, month = divmod(moment.month - 1 + months, 12)
    return np.datetime64(moment.replace(year=moment.year + year, month=month + 1), "us")
