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
