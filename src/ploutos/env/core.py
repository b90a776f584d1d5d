"""The market simulator: ``N`` portfolios of ``A`` assets over one window of feature rows, stepped as arrays.

Every fill, cost and reward in Ploutos is computed here, once: :class:`~ploutos.env.trading.TradingEnv`
is one env of a core (``N = 1`` when it stands alone), :class:`~ploutos.env.batched.BatchedVecEnv`
steps all the envs of a core together, and fold evaluation and the paper dry run drive a core
through the env. The rules (next-open fills, costs, rewards) are documented on
:class:`~ploutos.env.trading.TradingEnv`.

Prices and cost rates of the window are prepared once, as ``(W, A)`` float64 arrays over its ``W``
rows: the close carried forward over missing bars, the open (the carried close where it is
missing), ``1 / open`` where the asset trades (0 elsewhere), the per-bar linear cost rate and
square-root impact factor (0 where the asset does not trade). A step then gathers one row per env
and does a few dozen array operations over ``(N, A)``, whatever ``N``.

Observations are not built here unless asked: :attr:`rows` is each env's decision row (an index
into the store's arrays) and :meth:`portfolio_into` writes the portfolio state, which is all a
policy that reads the window from the store itself needs. :meth:`window_into` fills a batch of
``(lookback, asset, feature)`` windows for policies that take the window as input.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ploutos.config import EnvConfig
from ploutos.env import costs, kernel, reward
from ploutos.features.arrays import FeatureArrays

MIN_EPISODE_BARS = 8
"""A training episode starts early enough to leave at least this many steps (when the rows allow)."""
PORTFOLIO_FIELDS = 3
"""Scalars after the weights in the portfolio state: cash share, log return, drawdown."""
BANKRUPT_LOG_RETURN = -30.0
"""The portfolio's log return once equity is gone (its log is undefined)."""
MAX_REFERENCE_ROWS = 2**24
"""Rows an observation by reference can name: float32, the observations' dtype, holds every integer up to 2**24."""


class Step(NamedTuple):
    """What one step did, per env: arrays of shape ``(n,)`` (``weights``, ``traded``: ``(n, A)``)."""

    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    equity: np.ndarray
    cash: np.ndarray
    weights: np.ndarray
    turnover: np.ndarray
    costs: np.ndarray
    """Cash paid in costs (every component) at the step."""
    drawdown: np.ndarray
    fill_rows: np.ndarray
    """The row each env filled at and marked (its new decision row)."""
    traded: np.ndarray
    """``(n, A)`` signed units traded at the fill."""
    fill_prices: np.ndarray
    """``(n, A)`` the open each asset filled at."""
    notional: np.ndarray
    """Traded notional at the fill, in cash."""
    limited: np.ndarray
    """Whether ``max_weight`` or ``notional_budget`` changed the env's trades."""
    cost_parts: np.ndarray
    """``(n, 6)`` the costs by component (:data:`ploutos.env.costs.COMPONENTS`), summing to ``costs``."""


class MarketCore:
    """``n_envs`` portfolios trading all assets of ``arrays`` over the time rows ``rows``.

    ``bars_per_year`` accrues the yearly borrow cost of shorts per bar; it must be given when that
    cost is not 0. ``period > 0`` says that the prices of ``rows`` are one window of ``period`` rows
    repeated (copies of a window stacked in time, :mod:`ploutos.train.importance`): prices and cost
    rates are prepared over the first copy and repeated, so every copy trades as the window alone
    (rolling cost estimates do not run from one copy into the next).
    """

    def __init__(
        self, arrays: FeatureArrays, cfg: EnvConfig, *, rows: slice, n_envs: int = 1, evaluation: bool = False,
        bars_per_year: int = 0, period: int = 0,
    ) -> None:  # fmt: skip
        n_time, n_asset, n_feat = arrays.values.shape
        start, stop, step = rows.indices(n_time)
        if step != 1:
            raise ValueError(f"rows must be a contiguous slice, got step {step}")
        if stop - start < cfg.lookback + 1:
            raise ValueError(
                f"rows {start}:{stop} hold {max(stop - start, 0)} bars; lookback {cfg.lookback} needs at least "
                f"{cfg.lookback + 1}"
            )
        if arrays.prices.shape != (n_time, n_asset, 5):
            raise ValueError(f"prices have shape {arrays.prices.shape}, expected {(n_time, n_asset, 5)}")
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        self.arrays, self.cfg, self.evaluation = arrays, cfg, bool(evaluation)
        self.n_envs, self.n_assets, self.n_features, self.lookback = n_envs, n_asset, n_feat, cfg.lookback
        self.row_start, self.row_stop = start, stop
        self.first_decision = start + cfg.lookback - 1
        self.last_decision = stop - 2
        values = arrays.values.view()
        values.flags.writeable = False
        self.values = values
        self.discrete = cfg.action_mode == "discrete"
        self.w_low = 0.0 if cfg.long_only else -1.0
        self._levels = np.array([self.w_low / n_asset, 0.0, 1.0 / n_asset])
        self.initial = float(cfg.initial_cash)
        self._floor = max(cfg.bankruptcy_equity * self.initial, 0.0)
        self._fee_half = cfg.sec_fee_per_million * 1e-6 * 0.5
        rates = cfg.costs
        self._commission, self._spread = rates.commission_bps * 1e-4, rates.half_spread_bps * 1e-4
        self._borrow = costs.borrow_rate_per_bar(cfg, bars_per_year)
        self._max_change = cfg.max_weight_change or 0.0
        if period and (stop - start) % period:
            raise ValueError(f"rows {start}:{stop} are not a whole number of periods of {period} rows")
        self._prepare_prices(period)
        # portfolio state, float64
        self.units = np.zeros((n_envs, n_asset))
        self.cash = np.full(n_envs, self.initial)
        self.equity = np.full(n_envs, self.initial)
        self.peak = np.full(n_envs, self.initial)
        self.drawdown = np.zeros(n_envs)
        self.weights = np.zeros((n_envs, n_asset))
        self.dsr_a = np.zeros(n_envs)
        self.dsr_b = np.zeros(n_envs)
        self.since = np.zeros(n_envs, dtype=np.int64)
        """Steps each env has taken in its episode (decisions fall on multiples of ``decide_every``)."""
        self.rows = np.full(n_envs, self.first_decision, dtype=np.int64)
        """Each env's decision row: the last bar it has seen (absolute, into the arrays)."""
        self.ends = np.full(n_envs, stop - 1, dtype=np.int64)
        """Each env's last row to mark: its episode is truncated once it gets there."""
        self.active = np.zeros(n_envs, dtype=bool)
        """Envs in an episode (reset, not yet terminated or truncated)."""
        self._all_envs = np.arange(n_envs, dtype=np.int64)

    # ------------------------------------------------------------------------------------------ episodes

    def start_rows(self) -> tuple[int, int]:
        """The range ``[lo, hi]`` of first decision rows a training episode may start at."""
        lo = self.first_decision
        return lo, max(lo, self.last_decision + 1 - MIN_EPISODE_BARS)

    def draw_start(self, rng: np.random.Generator) -> tuple[int, int]:
        """A new episode's first decision row and last row to mark, drawn with ``rng`` in training."""
        if self.evaluation:
            return self.first_decision, self.row_stop - 1
        lo, hi = self.start_rows()
        t0 = int(rng.integers(lo, hi + 1))
        return t0, min(t0 + self.cfg.episode_bars, self.row_stop - 1)

    def reset(self, index: int | np.ndarray, t0: int | np.ndarray, end: int | np.ndarray) -> None:
        """Start an episode for env(s) ``index``: all cash, first decision row ``t0``, last marked row ``end``."""
        self.units[index] = 0.0
        self.weights[index] = 0.0
        self.cash[index] = self.equity[index] = self.peak[index] = self.initial
        self.drawdown[index] = self.dsr_a[index] = 0.0
        self.dsr_b[index] = self._warm_b[np.asarray(t0) - self.row_start]
        self.since[index] = 0
        self.rows[index], self.ends[index] = t0, end
        self.active[index] = True

    # ------------------------------------------------------------------------------------------ the step

    def step(
        self,
        actions: np.ndarray,
        index: np.ndarray | slice | None = None,
        *,
        max_weight: float | None = None,
        notional_budget: np.ndarray | None = None,
    ) -> Step:
        """Fill ``actions`` (one per env of ``index``, default every env) at the next open, mark the
        next close, charge costs, compute rewards; every env of ``index`` must be in an episode.

        Risk limits, for paper trading's replay (training and evaluation use none): ``max_weight``
        clips every target weight to ``[-max_weight, max_weight]`` after the action is read;
        ``notional_budget`` (per env, cash) scales an env's trades down so that their notional stays
        within it (0: no trade).
        """
        envs = self._envs(index)
        if not (self.active.all() if index is None else self.active[envs].all()):
            raise RuntimeError("call reset() before step(), and again after an episode ends")
        n = len(envs)
        actions = np.asarray(actions, dtype=np.float64).reshape(n, -1)
        if actions.shape[1] != self.n_assets:
            raise ValueError(f"action has {actions.shape[1]} entries, expected {self.n_assets}")
        budget = _NO_BUDGET if notional_budget is None else np.asarray(notional_budget, dtype=np.float64).reshape(n)
        rewards, terminated, truncated = np.empty(n), np.empty(n, dtype=np.bool_), np.empty(n, dtype=np.bool_)
        turnover, cost, notional, limited = np.empty(n), np.empty(n), np.empty(n), np.empty(n, dtype=np.bool_)
        cost_parts = np.empty((n, len(costs.COMPONENTS)))
        traded, fill_prices = np.empty((n, self.n_assets)), np.empty((n, self.n_assets))
        kernel.step_envs(
            envs, actions, self._bar, self.row_start, self.discrete, self._levels, self.w_low,
            -1.0 if max_weight is None else float(max_weight), budget,
            self.rows, self.ends, self.units, self.cash, self.equity, self.peak, self.drawdown, self.weights,
            self.dsr_a, self.dsr_b, self.since, self.active,
            self._commission, self._spread, self._fee_half, self._borrow, self.cfg.rebalance_band, self._max_change,
            self.cfg.decide_every,
            self._floor, self.initial, self.cfg.reward == "dsr", self.cfg.dsr_eta, self.cfg.dsr_clip,
            self.cfg.drawdown_penalty, self.cfg.turnover_penalty,
            rewards, terminated, truncated, turnover, cost, cost_parts, notional, limited, traded, fill_prices,
        )  # fmt: skip
        take = (lambda values: values.copy()) if index is None else (lambda values: values[envs])
        return Step(
            rewards, terminated, truncated, take(self.equity), take(self.cash), take(self.weights), turnover, cost,
            take(self.drawdown), take(self.rows), traded, fill_prices, notional, limited, cost_parts,
        )  # fmt: skip

    def _envs(self, index: np.ndarray | slice | int | None) -> np.ndarray:
        """``index`` as an array of env numbers."""
        if index is None:
            return self._all_envs
        if isinstance(index, slice):
            return self._all_envs[index]
        return np.atleast_1d(np.asarray(index, dtype=np.int64))

    # ------------------------------------------------------------------------------------------ observations

    def portfolio_into(self, out: np.ndarray, index: np.ndarray | slice | None = None) -> None:
        """Write ``(n, A + 3)`` portfolio states: weights, cash / equity, log(equity / initial), drawdown."""
        kernel.portfolio_of(
            self._envs(index), self.weights, self.cash, self.equity, self.drawdown, self.initial,
            BANKRUPT_LOG_RETURN, out,
        )  # fmt: skip

    def window_into(self, out: np.ndarray, index: np.ndarray | slice | None = None, *, asset_first: bool) -> None:
        """Write each env's ``lookback`` rows of features, ``(n, L, A, F)`` (``(n, A, L, F)`` with ``asset_first``)."""
        rows = self.rows if index is None else self.rows[index]
        offsets = np.arange(1 - self.lookback, 1)
        windows = self.values[rows[:, None] + offsets[None, :]]  # (n, L, A, F): one gather for the batch
        out[...] = windows.transpose(0, 2, 1, 3) if asset_first else windows.reshape(out.shape)

    # ------------------------------------------------------------------------------------------ prices

    def _prepare_prices(self, period: int = 0) -> None:
        """The window's prices and cost rates as ``(W, A)`` float64 arrays (see the module doc).

        Missing prices (NaN beyond the carry limit) are replaced by the last known close, so that a
        held position keeps its value; such bars, and bars without a real bar, do not trade.
        """
        window = slice(self.row_start, self.row_start + period if period else self.row_stop)
        prices = np.asarray(self.arrays.prices[window], dtype=np.float64)
        open_, high, low, close = (prices[..., i] for i in range(4))
        close_f = forward_fill(close)
        open_f = np.where(np.isfinite(open_), open_, np.vstack([close_f[:1], close_f[:-1]]))
        tradeable = np.asarray(self.arrays.present[window]) & np.isfinite(open_) & (open_ > 0)
        inv_open = np.where(tradeable, 1.0 / np.where(tradeable, open_, 1.0), 0.0)
        self._bar = np.ascontiguousarray(
            np.stack(
                [
                    np.where(np.isfinite(open_f), open_f, 0.0),
                    inv_open,
                    costs.slippage_rate(high, low, close, self.cfg) * tradeable,
                    costs.impact_factor(prices, self.cfg) * tradeable,
                    np.where(np.isfinite(close_f), close_f, 0.0),
                    tradeable.astype(np.float64),
                ],
                axis=1,
            )
        )
        """``(W, 6, A)``: per window row, the open, 1/open, slippage rate, impact factor, close and
        1.0 where the asset trades; one gather per step fetches all six for every env."""
        self._warm_b = reward.warm_second_moment(close_f, self.cfg.dsr_eta)
        """Per window row, the differential Sharpe ratio's ``B`` for an episode that starts there."""
        if period:
            copies = (self.row_stop - self.row_start) // period
            self._bar = np.ascontiguousarray(np.tile(self._bar, (copies, 1, 1)))
            self._warm_b = np.tile(self._warm_b, copies)


_NO_BUDGET = np.empty(0)


def forward_fill(x: np.ndarray) -> np.ndarray:
    """Carry the last finite value of each column forward (leading non-finite entries stay NaN)."""
    ok = np.isfinite(x)
    if ok.all():
        return x.copy()
    idx = np.where(ok, np.arange(len(x))[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    return x[idx, np.arange(x.shape[1])[None, :]]
