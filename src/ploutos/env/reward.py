"""Step rewards of :class:`ploutos.env.trading.TradingEnv`.

* ``log_return``: ``log(equity_{t+1} / equity_t)``; over an episode these sum to
  ``log(final equity / initial equity)``.
* ``dsr``: the differential Sharpe ratio of Moody & Saffell (2001) on the step's simple return
  ``R_t = equity_{t+1} / equity_t - 1``, with exponential moments of adaptation rate ``eta``::

      A_t = A_{t-1} + eta (R_t - A_{t-1})          B_t = B_{t-1} + eta (R_t^2 - B_{t-1})
      D_t = (B_{t-1} dA_t - 0.5 A_{t-1} dB_t) / (B_{t-1} - A_{t-1}^2)^(3/2)

  where ``dA_t = R_t - A_{t-1}`` and ``dB_t = R_t^2 - B_{t-1}``.

  **Warm start.** Started from ``A = B = 0`` the first steps divide by a variance near zero
  (``|D|`` in the tens of thousands on real bars, a third of an episode's reward in its first 50
  steps). An episode therefore starts with ``A_0 = 0`` and ``B_0`` the mean squared one-bar return
  of the assets over the ``round(1 / eta)`` bars up to the decision bar (:func:`warm_second_moment`,
  causal: the burn-in is the market before the episode): ``D_1 = R_1 / sigma``, a fully invested
  position's return in units of the market's recent volatility.

  **Bound.** ``D_t`` is clipped to ``[-dsr_clip, dsr_clip]`` (default 10): after a long flat
  stretch ``B`` decays towards 0 and the first return would again be divided by almost nothing.
  While the variance ``B_{t-1} - A_{t-1}^2`` is not above ``DSR_MIN_VARIANCE`` ``D_t`` is 0; the
  moments are still updated.

Both are reduced by ``drawdown_penalty * drawdown`` (after the step, a share of the peak) and
``turnover_penalty * turnover`` (traded notional over equity at the fill: the sum of the
absolute weight changes, in weight units).
"""

from __future__ import annotations

import math

import numpy as np

DSR_MIN_VARIANCE = 1e-14
"""Below this variance of returns (about 1e-7 of standard deviation) the differential Sharpe ratio is 0."""


def log_return(equity_before: float, equity_after: float) -> float:
    """``log(after / before)``."""
    return math.log(equity_after / equity_before)


def differential_sharpe(r: float, a: float, b: float, clip: float) -> float:
    """``D_t`` of return ``r`` given the moments ``A_{t-1}, B_{t-1}``, clipped to ``[-clip, clip]``."""
    var = b - a * a
    if var <= DSR_MIN_VARIANCE:
        return 0.0
    d = (b * (r - a) - 0.5 * a * (r * r - b)) / (var * math.sqrt(var))
    return min(max(d, -clip), clip)


class DifferentialSharpe:
    """Running moments ``A`` (mean) and ``B`` (second moment) and the differential Sharpe ratio of each return."""

    __slots__ = ("eta", "clip", "a", "b")

    def __init__(self, eta: float, clip: float = math.inf) -> None:
        self.eta, self.clip = eta, clip
        self.a = 0.0
        self.b = 0.0

    def reset(self, second_moment: float = 0.0) -> None:
        """Start again from ``A = 0`` and ``B = second_moment`` (the warm start)."""
        self.a = 0.0
        self.b = second_moment

    def update(self, r: float) -> float:
        """Fold in return ``r``; return ``D_t`` (computed with the moments before the update)."""
        d = differential_sharpe(r, self.a, self.b, self.clip)
        self.a += self.eta * (r - self.a)
        self.b += self.eta * (r * r - self.b)
        return d


def warm_second_moment(close: np.ndarray, eta: float) -> np.ndarray:
    """Per row of ``close`` ``(W, A)``: the mean over assets of the squared one-bar simple returns over the
    ``round(1 / eta)`` bars up to and including that row (NaN returns left out; 0 without any)."""
    close = np.asarray(close, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        returns = close[1:] / close[:-1] - 1.0
    squared = np.where(np.isfinite(returns), returns * returns, np.nan)
    squared = np.vstack([np.full((1, close.shape[1]), np.nan), squared])
    ok = np.isfinite(squared)
    window = max(1, round(1.0 / eta))
    cumulative = np.concatenate([np.zeros((1,)), np.cumsum(np.where(ok, squared, 0.0).sum(axis=1))])
    counts = np.concatenate([np.zeros((1,)), np.cumsum(ok.sum(axis=1))])
    rows = np.arange(1, close.shape[0] + 1)
    low = np.maximum(rows - window, 0)
    total, count = cumulative[rows] - cumulative[low], counts[rows] - counts[low]
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def penalties(drawdown: float, turnover: float, drawdown_penalty: float, turnover_penalty: float) -> float:
    """The amount subtracted from the reward."""
    return drawdown_penalty * drawdown + turnover_penalty * turnover
