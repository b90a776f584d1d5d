"""The real EURUSD hourly bars shipped inside the ``gym-anytrading`` package.

About 6,200 ask-side bars of 2017 in UTC on the FX week (Sunday 17:00 to Friday 17:00
New York time): real data for the quickstart and the tests, with no network and no keys.
"""

from __future__ import annotations

from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import ClassVar

import polars as pl

from ploutos.config import DataConfig
from ploutos.data.bars import clip_to_range
from ploutos.data.sources.base import BarSource
from ploutos.data.sources.csv import read_csv_bars
from ploutos.errors import SourceError

SAMPLE_TICKERS = {"EURUSD": "FOREX_EURUSD_1H_ASK.csv"}
"""Tickers the sample source serves, with their file in ``gym_anytrading/datasets/data``."""


def sample_path(ticker: str = "EURUSD") -> Path:
    """Where the shipped file of ``ticker`` lies."""
    if ticker not in SAMPLE_TICKERS:
        raise SourceError(f"sample: no shipped bars for {ticker}; the sample source has {', '.join(SAMPLE_TICKERS)}")
    try:
        root = resources.files("gym_anytrading") / "datasets" / "data" / SAMPLE_TICKERS[ticker]
    except ModuleNotFoundError:
        raise SourceError("sample: the gym-anytrading package is not installed (pip install gym-anytrading)") from None
    return Path(str(root))


class SampleSource(BarSource):
    """Serves the shipped EURUSD file as a bar source."""

    name: ClassVar[str] = "sample"

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg

    def fetch(self, ticker: str, start: datetime | None, end: datetime | None) -> pl.DataFrame:
        frame = read_csv_bars(sample_path(ticker), timezone="UTC", time_format="%d.%m.%Y %H:%M:%S%.f", ticker=ticker)
        return clip_to_range(frame, start, end)
