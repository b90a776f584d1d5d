"""The trading environment: a portfolio of every asset over a window of feature rows, no I/O.

The arithmetic lives in :mod:`ploutos.env.core`; this is its gymnasium face, one env at a time.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ploutos.config import EnvConfig
from ploutos.env.core import MAX_REFERENCE_ROWS, MIN_EPISODE_BARS, PORTFOLIO_FIELDS, MarketCore
from ploutos.env.costs import COMPONENTS
from ploutos.features.arrays import FeatureArrays

__all__ = ["MIN_EPISODE_BARS", "PORTFOLIO_FIELDS", "TradingEnv", "reference_space"]


class TradingEnv(gym.Env):
    """Trade all ``A`` assets of ``arrays`` over the time rows ``rows`` (a fold's train or test window).

    **Action.** ``action_mode="continuous"``: target weights ``Box(-1, 1, (A,))`` (``Box(0, 1)``
    when ``long_only``), clipped to the box; when ``sum |w| > 1`` every weight is scaled down so
    that it is 1 (no leverage). ``action_mode="discrete"``: ``MultiDiscrete([3] * A)``, per
    asset 0 sell (target weight ``-1/A``, or 0 when ``long_only``), 1 hold (no trade, the position
    is kept), 2 buy (target ``+1/A``).

    **Trading rules** (the same for training, evaluation, backtests and paper replay), applied per
    asset to the weight change ``d = target - current weight`` (at the open, before the fill):
    no trade while ``|d| <= rebalance_band``; ``d`` is cut to ``+-max_weight_change``; and only
    every ``decide_every``-th step of an episode is a decision: on the steps between, the action
    is ignored and every position is held. These make trading a choice the policy has to mean:
    a Gaussian policy's noise alone no longer moves money.

    **Timing.** The action of the step that observed bar ``t`` (after its close) is filled at the
    open of bar ``t+1``: target units are ``w * equity_at_open / open``; the position is then
    marked to bar ``t+1``'s close. Assets without a real bar at ``t+1`` (``present`` false) do not
    trade; their target is ignored and their position kept (valued at the last known price). Costs
    (:mod:`ploutos.env.costs`, rates from the config's cost profile: commission, half spread,
    slippage on the fill bar's range, volatility-scaled square-root impact on the average volume,
    regulatory fee on sells; every bar, the borrow cost of shorts) are paid from cash.
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
    ``reference``, shape        ``[0]``          the decision row ``t`` (absolute, into
    ``(1 + A + 3,)``                             ``arrays.values``; exact in float32 up to
                                                 :data:`~ploutos.env.core.MAX_REFERENCE_ROWS`)
    ``reference``               ``[1:]``         weights, cash share, log return, drawdown, as in
                                                 ``flat``
    ==========================  ===============  ==================================================

    ``reference`` copies no window: the policy's encoder (:mod:`ploutos.train.encoders`) holds the
    store and gathers ``values[t-L+1 : t+1]`` itself, so what a rollout buffer stores per step does
    not grow with the lookback, the assets or the features. Its row entry is bounded by
    ``[0, T - 1]`` over the whole store, so envs over every window of one store share one space.

    :meth:`step` returns a new flat vector each time; a vectorized env instead steps the whole
    :class:`~ploutos.env.core.MarketCore` the env belongs to and writes observations into its own
    buffers (:meth:`observe_into`).

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
    float64 after the step), ``turnover`` (float, buys plus sells over equity), ``costs`` (float,
    cash paid this step), ``cost_parts`` ((6,) the same by :data:`~ploutos.env.costs.COMPONENTS`),
    ``drawdown`` (float), ``timestamp`` (numpy datetime64 of the bar marked last).

    ``bars_per_year`` is kept as :attr:`bars_per_year` for annualizing the episode's statistics.
    The arrays are only read (they may be read-only views of the node's shared-memory store).

    **Core.** The env is env ``index`` of a :class:`~ploutos.env.core.MarketCore`, which does every
    fill, cost and reward; standing alone it has a core of its own (``N = 1``).
    :class:`~ploutos.env.batched.BatchedVecEnv` puts the envs of one window on one shared core
    (:meth:`join`) and steps them together; the env then reads its state from that core.
    """

    metadata = {"render_modes": []}

    def __init__(
        self, arrays: FeatureArrays, cfg: EnvConfig, *, rows: slice, bars_per_year: int, evaluation: bool = False
    ) -> None:
        super().__init__()
        self.core = MarketCore(
            arrays, cfg, rows=rows, n_envs=1, evaluation=evaluation, bars_per_year=int(bars_per_year)
        )
        self.index = 0
        self._at = slice(0, 1)
        self.cfg, self.arrays = cfg, arrays
        self.bars_per_year = int(bars_per_year)
        self.evaluation = bool(evaluation)
        self.rows = rows
        self.row_start, self.row_stop = self.core.row_start, self.core.row_stop
        n_asset, n_feat = self.core.n_assets, self.core.n_features
        self.n_assets, self.n_features, self.lookback = n_asset, n_feat, cfg.lookback
        self.discrete = cfg.action_mode == "discrete"
        if self.discrete:
            self.action_space = spaces.MultiDiscrete(np.full(n_asset, 3, dtype=np.int64))
        else:
            self.action_space = spaces.Box(self.core.w_low, 1.0, shape=(n_asset,), dtype=np.float32)
        self.flat = cfg.obs_layout == "flat"
        self.reference = cfg.obs_layout == "reference"
        self._window_size = cfg.lookback * n_asset * n_feat
        self._portfolio_size = n_asset + PORTFOLIO_FIELDS
        if self.flat:
            self.observation_space = spaces.Box(
                -np.inf, np.inf, shape=(self._window_size + self._portfolio_size,), dtype=np.float32
            )
        elif self.reference:
            self.observation_space = reference_space(len(arrays.timestamps), n_asset)
        else:
            self.observation_space = spaces.Dict(
                {
                    "features": spaces.Box(-np.inf, np.inf, shape=(n_asset, cfg.lookback, n_feat), dtype=np.float32),
                    "portfolio": spaces.Box(-np.inf, np.inf, shape=(self._portfolio_size,), dtype=np.float32),
                }
            )

    def join(self, core: MarketCore, index: int) -> None:
        """Become env ``index`` of ``core`` (a core over the same arrays, config and rows), for batching."""
        if (
            core.arrays is not self.core.arrays
            or core.cfg != self.cfg
            or (core.row_start, core.row_stop)
            != (
                self.row_start,
                self.row_stop,
            )
        ):
            raise ValueError("an env joins only a core over its own arrays, config and rows")
        self.core, self.index, self._at = core, index, slice(index, index + 1)

    def same_window(self, other: TradingEnv) -> bool:
        """Whether ``other`` trades the same arrays, config, rows and mode (so both can share a core)."""
        return (
            other.arrays is self.arrays
            and other.cfg == self.cfg
            and (other.row_start, other.row_stop, other.evaluation) == (self.row_start, self.row_stop, self.evaluation)
        )

    # ------------------------------------------------------------------------------------------
    # gymnasium API
    # ------------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        self.start_episode()
        return self._observation(), self.reset_info()

    def start_episode(self) -> None:
        """Draw the episode's start with :attr:`np_random` and reset the portfolio to all cash."""
        t0, end = self.core.draw_start(self.np_random)
        self.core.reset(self._at, t0, end)

    def reset_info(self) -> dict[str, Any]:
        return {
            "equity": self.equity,
            "cash": self.cash,
            "weights": np.zeros(self.n_assets),
            "turnover": 0.0,
            "costs": 0.0,
            "cost_parts": np.zeros(len(COMPONENTS)),
            "drawdown": 0.0,
            "timestamp": self.timestamp,
        }

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        reward, terminated, truncated, info = self.advance(action)
        return self._observation(), reward, terminated, truncated, info

    def advance(self, action: Any) -> tuple[float, bool, bool, dict[str, Any]]:
        """:meth:`step` without building the observation (see :meth:`observe_into`)."""
        step = self.core.step(np.asarray(action)[None], self._at)
        info = {
            "equity": float(step.equity[0]),
            "cash": float(step.cash[0]),
            "weights": step.weights[0].copy(),
            "turnover": float(step.turnover[0]),
            "costs": float(step.costs[0]),
            "cost_parts": step.cost_parts[0].copy(),
            "drawdown": float(step.drawdown[0]),
            "timestamp": self.arrays.timestamps[int(step.fill_rows[0])],
        }
        return float(step.rewards[0]), bool(step.terminated[0]), bool(step.truncated[0]), info

    def observe_into(self, out: Any) -> None:
        """Write the current observation into ``out``: a float32 vector (flat) or a dict of two arrays."""
        if self.flat:
            self.core.window_into(out[None, : self._window_size], self._at, asset_first=False)
            self.core.portfolio_into(out[None, self._window_size :], self._at)
        elif self.reference:
            out[0] = self.core.rows[self.index]
            self.core.portfolio_into(out[None, 1:], self._at)
        else:
            self.core.window_into(out["features"][None], self._at, asset_first=True)
            self.core.portfolio_into(out["portfolio"][None], self._at)

    @property
    def equity(self) -> float:
        """Equity at the close of the last marked bar."""
        return float(self.core.equity[self.index])

    @property
    def units(self) -> np.ndarray:
        """Units held per asset (negative: short), a copy."""
        return self.core.units[self.index].copy()

    @property
    def weights(self) -> np.ndarray:
        """Weights ``units * close / equity`` at the last marked close, a copy."""
        return self.core.weights[self.index].copy()

    @property
    def cash(self) -> float:
        """Cash after the last fill and its costs."""
        return float(self.core.cash[self.index])

    @property
    def decision_row(self) -> int:
        """The row of the last observed bar (absolute, into the arrays)."""
        return int(self.core.rows[self.index])

    @property
    def timestamp(self) -> np.datetime64:
        """Time of the last observed bar."""
        return self.arrays.timestamps[self.decision_row]

    def _observation(self) -> Any:
        if self.flat or self.reference:
            out = np.empty(self.observation_space.shape, dtype=np.float32)
            self.observe_into(out)
            return out
        t, lookback = self.decision_row, self.lookback
        portfolio = np.empty((1, self._portfolio_size), dtype=np.float32)
        self.core.portfolio_into(portfolio, self._at)
        return {"features": self.core.values[t - lookback + 1 : t + 1].transpose(1, 0, 2), "portfolio": portfolio[0]}


def reference_space(n_rows: int, n_assets: int) -> spaces.Box:
    """The ``reference`` observation space over a store of ``n_rows`` rows: the row, then the portfolio.

    Refuses a store whose last row float32 cannot name exactly (one line: it would silently read the
    wrong window).
    """
    if n_rows > MAX_REFERENCE_ROWS:
        raise ValueError(
            f"obs_layout reference: the store has {n_rows:,} rows; float32 observations name rows exactly only up "
            f"to {MAX_REFERENCE_ROWS:,} (use obs_layout flat)"
        )
    low = np.full(1 + n_assets + PORTFOLIO_FIELDS, -np.inf, dtype=np.float32)
    high = np.full_like(low, np.inf)
    low[0], high[0] = 0.0, float(max(n_rows - 1, 0))
    return spaces.Box(low, high, dtype=np.float32)
