"""The trading env as it was before the batched core (one env, per-asset Python floats), kept as an
oracle: tests/test_env_core.py checks that the core, the new TradingEnv and the batched VecEnv agree
with it step for step. Not used by the package."""

from __future__ import annotations

import math
from itertools import repeat
from math import sqrt
from operator import add, mul, sub
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ploutos.config import EnvConfig
from ploutos.env import costs
from ploutos.env.reward import DifferentialSharpe, warm_second_moment

if TYPE_CHECKING:  # the features package imports polars, which env workers do not need
    from ploutos.features.arrays import FeatureArrays

MIN_EPISODE_BARS = 8
"""A training episode starts early enough to leave at least this many steps (when the rows allow)."""
ROW_CHUNK = 256
"""Bars whose prices and cost rates are converted to Python floats at a time."""
PORTFOLIO_FIELDS = 3
"""Scalars after the weights in the portfolio part of an observation: cash share, log return, drawdown."""


class ListTradingEnv(gym.Env):
    """Trade all ``A`` assets of ``arrays`` over the time rows ``rows`` (a fold's train or test window).

    **Action.** ``action_mode="continuous"``: target weights ``Box(-1, 1, (A,))`` (``Box(0, 1)``
    when ``long_only``), clipped to the box; when ``sum |w| > 1`` every weight is scaled down so
    that it is 1 (no leverage). ``action_mode="discrete"``: ``MultiDiscrete([3] * A)``, per
    asset 0 sell (target weight ``-1/A``, or 0 when ``long_only``), 1 hold (no trade, the position
    is kept), 2 buy (target ``+1/A``).

    **Timing.** The action of the step that observed bar ``t`` (after its close) is filled at the
    open of bar ``t+1``: target units are ``w * equity_at_open / open``; the position is then
    marked to bar ``t+1``'s close. Assets without a real bar at ``t+1`` (``present`` false) do not
    trade; their target is ignored and their position kept (valued at the last known price). Costs
    (:mod:`ploutos.env.costs`: commission, half spread, slippage on the fill bar's range,
    square-root impact on its volume, regulatory fee on sells) are paid from cash at the fill.
    Cash, units, equity, peak equity and drawdown are float64.

    **Observation** (float32, no NaN: features are 0 where not valid). With ``L = lookback``,
    ``F`` features and ``P = A + 3`` portfolio entries:

    ==========================  ===============  ==================================================
    ``obs_layout``              part             content
    ==========================  ===============  ==================================================
    ``flat``, shape             ``[0, L*A*F)``   ``values[t-L+1 : t+1]`` (time, asset, feature)
    ``(L*A*F + A + 3,)``                         flattened, oldest bar first
    ``flat``                    next ``A``       current weights ``units * close / equity``
    ``flat``                    next 1           cash / equity
    ``flat``                    next 1           ``log(equity / initial_cash)`` (since episode start)
    ``flat``                    last             drawdown ``1 - equity / peak equity``
    ``asset_lookback_feature``  ``"features"``   ``(A, L, F)``: the same window, asset first (a
                                                 read-only view of ``arrays.values``, no copy)
    ``asset_lookback_feature``  ``"portfolio"``  ``(A + 3,)``: weights, cash share, log return,
                                                 drawdown, as in ``flat``
    ==========================  ===============  ==================================================

    :meth:`step` returns a new flat vector each time; a vectorized env can instead call
    :meth:`advance` and :meth:`observe_into` to write the observation into its own buffers.

    **Reward** (:mod:`ploutos.env.reward`): ``"log_return"`` is ``log(equity_{t+1} / equity_t)``
    between the closes of ``t`` and ``t+1`` (so it includes the overnight gap on the position held
    before the fill, and the costs); ``"dsr"`` is the Moody-Saffell differential Sharpe ratio of
    the step's simple return. Minus ``drawdown_penalty * drawdown`` and ``turnover_penalty *
    turnover`` (traded notional over equity at the fill).

    **Start.** All cash. In training (``evaluation=False``) the first decision bar is drawn with
    ``self.np_random`` among the rows that have a full lookback inside ``rows`` and leave at least
    ``MIN_EPISODE_BARS`` steps; with ``evaluation=True`` it is the first row with a full lookback.

    **End.** ``terminated`` when equity falls below ``bankruptcy_equity * initial_cash`` (or to 0);
    ``truncated`` after ``episode_bars`` steps in training, or when the rows run out (the last bar of
    ``rows`` has been marked).

    **Info** (reset and every step): ``equity`` (float), ``cash`` (float), ``weights`` ((A,)
    float64 after the step), ``turnover`` (float), ``costs`` (float, cash paid this step),
    ``drawdown`` (float), ``timestamp`` (numpy datetime64 of the bar marked last).

    ``bars_per_year`` is kept as :attr:`bars_per_year` for annualizing the episode's statistics.
    The arrays are only read (they may be read-only views of the node's shared-memory store).
    """

    metadata = {"render_modes": []}

    def __init__(
        self, arrays: FeatureArrays, cfg: EnvConfig, *, rows: slice, bars_per_year: int, evaluation: bool = False
    ) -> None:
        super().__init__()
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
        self.cfg = cfg
        self.arrays = arrays
        self.bars_per_year = int(bars_per_year)
        self.evaluation = bool(evaluation)
        self.row_start, self.row_stop = start, stop
        self.n_assets, self.n_features, self.lookback = n_asset, n_feat, cfg.lookback
        values = arrays.values.view()
        values.flags.writeable = False
        self._values = values
        self._first_decision = start + cfg.lookback - 1
        self._last_decision = stop - 2

        self.discrete = cfg.action_mode == "discrete"
        low = 0.0 if cfg.long_only else -1.0
        self._w_low = low
        if self.discrete:
            self.action_space = spaces.MultiDiscrete(np.full(n_asset, 3, dtype=np.int64))
            self._discrete_w = (low / n_asset, 0.0, 1.0 / n_asset)
        else:
            self.action_space = spaces.Box(low, 1.0, shape=(n_asset,), dtype=np.float32)
        self.flat = cfg.obs_layout == "flat"
        self._window_size = cfg.lookback * n_asset * n_feat
        self._portfolio_size = n_asset + PORTFOLIO_FIELDS
        if self.flat:
            self.observation_space = spaces.Box(
                -np.inf, np.inf, shape=(self._window_size + self._portfolio_size,), dtype=np.float32
            )
        else:
            self.observation_space = spaces.Dict(
                {
                    "features": spaces.Box(-np.inf, np.inf, shape=(n_asset, cfg.lookback, n_feat), dtype=np.float32),
                    "portfolio": spaces.Box(-np.inf, np.inf, shape=(self._portfolio_size,), dtype=np.float32),
                }
            )

        self._initial = float(cfg.initial_cash)
        self._floor = max(cfg.bankruptcy_equity * self._initial, 0.0)
        self._fee_rate = cfg.sec_fee_per_million * 1e-6
        self._dsr = DifferentialSharpe(cfg.dsr_eta, cfg.dsr_clip) if cfg.reward == "dsr" else None
        # written against the rules, not the kernel: window-wide estimates, then per-asset Python floats
        window = np.asarray(arrays.prices[start:stop], dtype=np.float64)
        self._warm_b = warm_second_moment(forward_fill(window[..., 3]), cfg.dsr_eta)
        self._impact_window = costs.impact_factor(window, cfg)
        self._borrow = costs.borrow_rate_per_bar(cfg, bars_per_year)
        self._band, self._max_change = cfg.rebalance_band, cfg.max_weight_change
        self._dd_pen, self._to_pen = cfg.drawdown_penalty, cfg.turnover_penalty
        # portfolio state (float64); episode arrays are filled by reset
        self._units = [0.0] * n_asset
        self._weights = [0.0] * n_asset
        self._drawdown = 0.0
        self._chunk_start = self._chunk_stop = 0
        self._cash = self._equity = self._peak = self._initial
        self._t = self._first_decision
        self._end = self._last_decision + 1
        self._k = 0
        self._episode_ready = False

    # ------------------------------------------------------------------------------------------
    # gymnasium API
    # ------------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        lo = self._first_decision
        if self.evaluation:
            t0, end = lo, self.row_stop - 1
        else:
            hi = max(lo, self._last_decision + 1 - MIN_EPISODE_BARS)
            t0 = int(self.np_random.integers(lo, hi + 1))
            end = min(t0 + self.cfg.episode_bars, self.row_stop - 1)
        self._prepare_episode(t0, end)
        self._units = [0.0] * self.n_assets
        self._weights = [0.0] * self.n_assets
        self._cash = self._equity = self._peak = self._initial
        self._drawdown = 0.0
        if self._dsr is not None:
            self._dsr.reset(float(self._warm_b[t0 - self.row_start]))
        self._t, self._k, self._end = t0, 0, end
        self._episode_ready = True
        info = {
            "equity": self._equity,
            "cash": self._cash,
            "weights": np.zeros(self.n_assets),
            "turnover": 0.0,
            "costs": 0.0,
            "drawdown": 0.0,
            "timestamp": self.arrays.timestamps[t0],
        }
        return self._observation(), info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        reward, terminated, truncated, info = self.advance(action)
        return self._observation(), reward, terminated, truncated, info

    # ------------------------------------------------------------------------------------------
    # fast paths for vectorized envs
    # ------------------------------------------------------------------------------------------

    def advance(self, action: Any) -> tuple[float, bool, bool, dict[str, Any]]:
        """:meth:`step` without building the observation (see :meth:`observe_into`).

        The per-asset arithmetic runs on Python floats: for tens of assets that is several times
        faster than numpy, whose per-call overhead dominates on arrays this short.
        """
        if not self._episode_ready:
            raise RuntimeError("call reset() before step(), and again after an episode ends")
        k = self._k + 1  # episode index of the fill bar t+1
        if k >= self._chunk_stop:
            self._load_chunk(k)
        r = k - self._chunk_start
        open_, inv_open, rate, impact, tradeable = (
            self._c_open[r],
            self._c_inv_open[r],
            self._c_rate[r],
            self._c_impact[r],
            self._c_tradeable[r],
        )
        units = self._units
        cash = self._cash
        eq_open = cash + sum(map(mul, units, open_))
        if self.discrete:
            choice = action.tolist() if hasattr(action, "tolist") else list(action)
            if len(choice) != self.n_assets:
                raise ValueError(f"action has {len(choice)} choices, expected {self.n_assets}")
            w = [self._discrete_w[c] for c in choice]
            scale = eq_open
            if tradeable is None:
                mask = [0.0 if c == 1 else 1.0 for c in choice]
            else:
                mask = [m if c != 1 else 0.0 for m, c in zip(tradeable, choice, strict=True)]
        else:
            lo = self._w_low
            raw = action.tolist() if hasattr(action, "tolist") else list(action)
            if len(raw) != self.n_assets:
                raise ValueError(f"action has {len(raw)} weights, expected {self.n_assets}")
            w = raw
            if not (lo <= min(raw) and max(raw) <= 1.0):  # clip to the box; NaN becomes 0
                w = [x if lo <= x <= 1.0 else (lo if x < lo else (1.0 if x > 1.0 else 0.0)) for x in raw]
            gross = sum(map(abs, w))
            if gross != gross:  # a NaN that min/max let through
                w = [x if x == x else 0.0 for x in w]
                gross = sum(map(abs, w))
            scale = eq_open / gross if gross > 1.0 else eq_open
            mask = tradeable
        # units to trade: (target weight * equity at the open / open - units) where the asset trades, else 0
        trades = map(sub, map(mul, map(mul, w, inv_open), repeat(scale)), units)
        trades = list(trades) if mask is None else list(map(mul, trades, mask))
        if (self._k % self.cfg.decide_every) != 0:
            trades = [0.0] * self.n_assets
        elif eq_open > 0.0 and (self._band > 0.0 or self._max_change):
            for a, units_traded in enumerate(trades):
                change = units_traded * open_[a] / eq_open
                if abs(change) <= self._band:
                    trades[a] = 0.0
                elif self._max_change and abs(change) > self._max_change:
                    trades[a] = math.copysign(self._max_change, change) * eq_open * inv_open[a]
        values = list(map(mul, trades, open_))
        notionals = list(map(abs, values))
        notional_sum = sum(notionals)
        if notional_sum > 0.0:
            value_sum = sum(values)
            cost = sum(map(mul, notionals, rate))
            cost += sum(map(mul, map(mul, notionals, map(sqrt, notionals)), impact))
            cost += self._fee_rate * 0.5 * (notional_sum - value_sum)  # fee on sell notional
            cash -= value_sum + cost
            self._units = units = list(map(add, units, trades))
        else:
            cost = 0.0
        held = list(map(mul, units, self._c_close[r]))
        financing = self._borrow * sum(-value for value in held if value < 0.0)
        cost += financing
        cash -= financing
        equity = cash + sum(held)
        eq_before = self._equity
        self._cash, self._equity, self._k, self._t = cash, equity, k, self._t + 1
        if equity > self._peak:
            self._peak = equity
        drawdown = 1.0 - equity / self._peak
        self._drawdown = drawdown
        turnover = notional_sum / eq_open if eq_open > 0.0 else 0.0
        if equity > 0.0:
            inv_equity = 1.0 / equity
            ratio = equity / eq_before
            terminated = equity < self._floor
        else:
            inv_equity = 1.0 / self._initial
            ratio = 1e-12
            terminated = True
        self._weights = weights = list(map(mul, held, repeat(inv_equity)))
        reward = math.log(ratio) if self._dsr is None else self._dsr.update(ratio - 1.0)
        if self._dd_pen:
            reward -= self._dd_pen * drawdown
        if self._to_pen:
            reward -= self._to_pen * turnover
        truncated = self._t >= self._end and not terminated
        if terminated or truncated:
            self._episode_ready = False
        info = {
            "equity": equity,
            "cash": cash,
            "weights": np.array(weights),
            "turnover": turnover,
            "costs": cost,
            "drawdown": drawdown,
            "timestamp": self._timestamps[k],
        }
        return reward, terminated, truncated, info

    def observe_into(self, out: Any) -> None:
        """Write the current observation into ``out``: a float32 vector (flat) or a dict of two arrays."""
        t, L = self._t, self.lookback
        window = self._values[t - L + 1 : t + 1]
        if self.flat:
            n = self._window_size
            out[:n] = window.reshape(-1)
            self._write_portfolio(out[n:])
        else:
            out["features"][...] = window.transpose(1, 0, 2)
            self._write_portfolio(out["portfolio"])

    @property
    def equity(self) -> float:
        """Equity at the close of the last marked bar."""
        return self._equity

    @property
    def units(self) -> np.ndarray:
        """Units held per asset (negative: short), a copy."""
        return np.array(self._units)

    @property
    def weights(self) -> np.ndarray:
        """Weights ``units * close / equity`` at the last marked close, a copy."""
        return np.array(self._weights)

    @property
    def cash(self) -> float:
        """Cash after the last fill and its costs."""
        return self._cash

    @property
    def timestamp(self) -> np.datetime64:
        """Time of the last observed bar."""
        return self.arrays.timestamps[self._t]

    # ------------------------------------------------------------------------------------------
    # internals
    # ------------------------------------------------------------------------------------------

    def _observation(self) -> Any:
        t, L = self._t, self.lookback
        window = self._values[t - L + 1 : t + 1]
        if self.flat:
            out = np.empty(self._window_size + self._portfolio_size, dtype=np.float32)
            out[: self._window_size] = window.reshape(-1)
            self._write_portfolio(out[self._window_size :])
            return out
        portfolio = np.empty(self._portfolio_size, dtype=np.float32)
        self._write_portfolio(portfolio)
        return {"features": window.transpose(1, 0, 2), "portfolio": portfolio}

    def _write_portfolio(self, out: np.ndarray) -> None:
        a = self.n_assets
        out[:a] = self._weights
        equity = self._equity
        if equity > 0.0:
            out[a] = self._cash / equity
            out[a + 1] = math.log(equity / self._initial)
        else:
            out[a] = 0.0
            out[a + 1] = -30.0
        out[a + 2] = self._drawdown

    def _prepare_episode(self, t0: int, end: int) -> None:
        """Start an episode whose first decision bar is ``t0`` and whose last marked bar is ``end``.

        Prices and cost rates are prepared lazily, ``ROW_CHUNK`` bars at a time (:meth:`_load_chunk`),
        so that a short episode (a bankrupt random agent) does not pay for a long one.
        """
        self._t0, self._n_bars = t0, end - t0 + 1
        self._carry_close = np.array(self.arrays.prices[t0, :, 3], dtype=np.float64)
        self._chunk_start = self._chunk_stop = 0
        self._timestamps = self.arrays.timestamps[t0 : end + 1]

    def _load_chunk(self, k: int) -> None:
        """Episode bars ``k .. k + ROW_CHUNK`` (0 is the first decision bar) as lists of Python floats.

        Missing prices (NaN beyond the carry limit) are replaced by the last known close, so that a
        held position keeps its value; such bars, and bars without a real bar, do not trade.
        """
        stop = min(k + ROW_CHUNK, self._n_bars)
        prices = self.arrays.prices[self._t0 + k : self._t0 + stop]
        open_, high, low, close, volume = (prices[..., i] for i in range(5))
        close_f = forward_fill(np.vstack([self._carry_close[None, :], close]))
        self._carry_close = close_f[-1].copy()
        open_f = np.where(np.isfinite(open_), open_, close_f[:-1])
        close_f = close_f[1:]
        tradeable = self.arrays.present[self._t0 + k : self._t0 + stop] & np.isfinite(open_) & (open_ > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_open = np.where(tradeable, 1.0 / np.where(tradeable, open_, 1.0), 0.0)
        self._c_open = np.where(np.isfinite(open_f), open_f, 0.0).tolist()
        self._c_close = np.where(np.isfinite(close_f), close_f, 0.0).tolist()
        self._c_inv_open = inv_open.tolist()
        self._c_rate = (costs.linear_rate(high, low, close, self.cfg) * tradeable).tolist()
        first = self._t0 + k - self.row_start
        self._c_impact = (self._impact_window[first : first + stop - k] * tradeable).tolist()
        # None for a bar where every asset trades (the common case): no mask to apply
        every = tradeable.all(axis=1)
        if every.all():
            self._c_tradeable = [None] * (stop - k)
        else:
            rows = tradeable.astype(np.float64).tolist()
            self._c_tradeable = [None if ok else row for ok, row in zip(every.tolist(), rows, strict=True)]
        self._chunk_start, self._chunk_stop = k, stop


def forward_fill(x: np.ndarray) -> np.ndarray:
    """Carry the last finite value of each column forward (leading non-finite entries stay NaN)."""
    ok = np.isfinite(x)
    if ok.all():
        return x.copy()
    idx = np.where(ok, np.arange(len(x))[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    return x[idx, np.arange(x.shape[1])[None, :]]
