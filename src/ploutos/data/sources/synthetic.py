"""Seeded synthetic bars for scale tests and experiments without data.

The market has hidden regimes (calm, normal, turbulent: a Markov chain over bars) that set the
drift and volatility of a common factor; each ticker loads on that factor with its own beta and
adds idiosyncratic noise, so tickers are correlated and co-move in crises. Volatility and volume
follow an intraday U shape and volume rises with the size of the move. A ticker's bars depend
only on (seed, ticker, session, bar count), so adding a ticker never changes another's bars.
"""

from __future__ import annotations

import zlib
from datetime import datetime, timedelta, timezone
from typing import ClassVar

import numpy as np
import polars as pl

from ploutos.config import DataConfig
from ploutos.data.bars import BAR_SCHEMA, clip_to_range
from ploutos.data.calendar import expected_timestamps
from ploutos.data.sources.base import BarSource

DEFAULT_END = datetime(2025, 1, 1, tzinfo=timezone.utc)
"""Where generated history ends when the config sets neither start nor end (fixed: reproducible)."""

REGIME_DRIFT = np.array([0.00004, 0.00001, -0.00008])
"""Per-bar drift of the common factor in the calm, normal and turbulent regimes."""
REGIME_VOL = np.array([0.0025, 0.004, 0.011])
"""Per-bar volatility of the common factor in each regime."""
REGIME_STAY = np.array([0.998, 0.997, 0.99])
"""Probability of staying in each regime for one more bar."""


class SyntheticSource(BarSource):
    """Generates correlated multi-asset hourly bars on the configured session calendar."""

    name: ClassVar[str] = "synthetic"

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self._timestamps: pl.Series | None = None
        self._market: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def fetch(self, ticker: str, start: datetime | None, end: datetime | None) -> pl.DataFrame:
        timestamps = self.timestamps()
        factor, regime_vol, season = self.market()
        rng = np.random.default_rng([self.cfg.synthetic_seed, zlib.crc32(ticker.encode())])
        n = len(timestamps)
        beta = rng.uniform(0.5, 1.4)
        idio_vol = rng.uniform(0.6, 1.4) * 0.003
        returns = beta * factor + idio_vol * season * rng.standard_normal(n)
        close = rng.uniform(20.0, 400.0) * np.exp(np.cumsum(returns))
        bar_vol = np.sqrt((beta * regime_vol) ** 2 + idio_vol**2) * season
        gap = np.exp(0.2 * bar_vol * rng.standard_normal(n))
        open_ = np.concatenate([[close[0] / np.exp(returns[0])], close[:-1]]) * gap
        high = np.maximum(open_, close) * np.exp(np.abs(rng.standard_normal(n)) * 0.5 * bar_vol)
        low = np.minimum(open_, close) * np.exp(-np.abs(rng.standard_normal(n)) * 0.5 * bar_vol)
        activity = 1.0 + 4.0 * np.abs(returns) / bar_vol.mean()
        volume = np.round(rng.uniform(2e5, 5e6) * season**2 * activity * rng.lognormal(0.0, 0.3, n))
        frame = pl.DataFrame(
            {
                "timestamp": timestamps,
                "ticker": pl.repeat(ticker, n, eager=True),
                "open": open_,
                "high": high,
                "low": low,
                "close": close,
                "volume": volume,
            },
            schema=BAR_SCHEMA,
        )
        return clip_to_range(frame, start, end)

    def timestamps(self) -> pl.Series:
        """The ``synthetic_bars`` hourly bar starts of the session, anchored at start or end."""
        if self._timestamps is None:
            self._timestamps = session_timestamps(self.cfg, self.cfg.synthetic_bars)
        return self._timestamps

    def market(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The common factor's returns, its regime volatility, and the intraday seasonal multiplier."""
        if self._market is None:
            timestamps = self.timestamps()
            rng = np.random.default_rng([self.cfg.synthetic_seed, 0x5EED])
            regimes = _markov_regimes(rng, len(timestamps))
            season = _intraday_season(timestamps)
            vol = REGIME_VOL[regimes]
            factor = REGIME_DRIFT[regimes] + vol * season * rng.standard_normal(len(timestamps))
            self._market = (factor, vol, season)
        return self._market


def session_timestamps(cfg: DataConfig, n_bars: int) -> pl.Series:
    """``n_bars`` consecutive session bar starts from ``cfg.start``, or ending before ``cfg.end``."""

    days_needed = timedelta(days=366 * (n_bars / cfg.bars_per_year + 0.1) + 10)
    if cfg.start_utc is not None:
        stamps = expected_timestamps(cfg.session, cfg.calendar, cfg.start_utc, cfg.start_utc + days_needed)
        return stamps.head(n_bars).alias("timestamp")
    end = cfg.end_utc or DEFAULT_END
    stamps = expected_timestamps(cfg.session, cfg.calendar, end - days_needed, end)
    return stamps.tail(n_bars).alias("timestamp")


def _markov_regimes(rng: np.random.Generator, n: int) -> np.ndarray:
    """A regime path: run lengths are geometric with each regime's stay probability."""
    regimes = np.empty(n, dtype=np.int64)
    position, state = 0, 1
    while position < n:
        length = rng.geometric(1.0 - REGIME_STAY[state])
        regimes[position : position + length] = state
        position += length
        state = int(rng.choice([s for s in range(3) if s != state]))
    return regimes


def _intraday_season(timestamps: pl.Series) -> np.ndarray:
    """A U shape over the New York trading day: busier at the open and the close."""
    local = timestamps.dt.convert_time_zone("America/New_York")
    hour = (local.dt.hour().cast(pl.Float64) + local.dt.minute().cast(pl.Float64) / 60.0).to_numpy()
    return 0.7 + 0.6 * ((hour - 12.5) / 7.5) ** 2
