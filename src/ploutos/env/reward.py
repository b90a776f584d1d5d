"""Step rewards of :class:`ploutos.env.trading.TradingEnv`.

* ``log_return``: ``log(equity_{t+1} / equity_t)``; over an episode these sum to
  ``log(final equity / initial equity)``.
* ``dsr``: the differential Sharpe ratio of Moody & Saffell (2001) on the step's simple return
  ``R_t = equity_{t+1} / equity_t - 1``, with exponential moments of adaptation rate ``eta``::

      A_t = A_{t-1} + eta (R_t - A_{t-1})          B_t = B_{t-1} + eta (R_t^2 - B_{t-1})
      D_t = (B_{t-1} dA_t - 0.5 A_{t-1} dB_t) / (B_{t-1} - A_{t-1}^2)^(3/2)

  where ``dA_t = R_t - A_{t-1}`` and ``dB_t = R_t^2 - B_{t-1}``. While the variance
  ``B_{t-1} - A_{t-1}^2`` is not above ``DSR_MIN_VARIANCE`` (at the start, or after flat bars)
  ``D_t`` is defined as 0; the moments are still updated.

Both are reduced by ``drawdown_penalty * drawdown`` (after the step, a share of the peak) and
``turnover_penalty * turnover`` (traded notional over equity at the fill).
"""

from __future__ import annotations

import math

DSR_MIN_VARIANCE = 1e-14
"""Below this variance of returns (about 1e-7 of standard deviation) the differential Sharpe ratio is 0."""


def log_return(equity_before: float, equity_after: float) -> float:
    """``log(after / before)``."""
    return math.log(equity_after / equity_before)


class DifferentialSharpe:
    """Running moments ``A`` (mean) and ``B`` (second moment) and the differential Sharpe ratio of each return."""

    __slots__ = ("eta", "a", "b")

    def __init__(self, eta: float) -> None:
        self.eta = eta
        self.a = 0.0
        self.b = 0.0

    def reset(self) -> None:
        self.a = 0.0
        self.b = 0.0

    def update(self, r: float) -> float:
        """Fold in return ``r``; return ``D_t`` (computed with the moments before the update)."""
        a, b = self.a, self.b
        d_a = r - a
        d_b = r * r - b
        var = b - a * a
        d = (b * d_a - 0.5 * a * d_b) / (var * math.sqrt(var)) if var > DSR_MIN_VARIANCE else 0.0
        self.a = a + self.eta * d_a
        self.b = b + self.eta * d_b
        return d


def penalties(drawdown: float, turnover: float, drawdown_penalty: float, turnover_penalty: float) -> float:
    """The amount subtracted from the reward."""
    return drawdown_penalty * drawdown + turnover_penalty * turnover
