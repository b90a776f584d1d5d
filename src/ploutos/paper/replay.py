"""``ploutos paper --dry-run``: replay the local dataset over the latest fold's test window.

The same :class:`~ploutos.paper.runner.Decider` and :func:`~ploutos.paper.runner.plan_orders` as the
live loop decide on each bar's close; a simulated broker fills the whole-unit orders at the next
bar's open and charges the env's cost model (:func:`ploutos.env.costs.total_cost` on the fill bar).
Orders go to ``RUN_DIR/paper/dry_run_orders.csv``, the equity at every close to
``dry_run_equity.csv``.

Against :func:`ploutos.train.evaluate.evaluate` of the same ensemble on the same rows the paths
differ only where live trading must differ from the env: the order quantity is fixed at the
decision bar's close (the env sizes it at the fill bar's open), it is whole units, and the risk
limits of ``paper.*`` apply. With the limits wide open the final equities agree within the costs
the backtest paid (:func:`agreement`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from ploutos.env import costs
from ploutos.env.trading import forward_fill
from ploutos.errors import PloutosError
from ploutos.features.arrays import FeatureArrays
from ploutos.features.pipeline import load_bars
from ploutos.files import atomic_path
from ploutos.paper import risk
from ploutos.paper.broker import client_order_id
from ploutos.paper.runner import Decider, Policy, normalized_features, plan_orders
from ploutos.train.evaluate import evaluate


@dataclass(frozen=True)
class Replay:
    timestamps: np.ndarray
    """(N+1,) the bar before the test window, then every bar marked."""
    equity: np.ndarray
    cash: np.ndarray
    orders: pl.DataFrame
    costs: float
    halted: str
    arrays: FeatureArrays
    """The normalized features replayed (for comparing with the backtest)."""
    rows: slice
    """The evaluation rows (``Fold.eval_rows(lookback)``)."""

    @property
    def final_equity(self) -> float:
        return float(self.equity[-1])


def eval_rows(policy: Policy, arrays: FeatureArrays) -> slice:
    """The latest fold's evaluation rows, checked against the task file's test window."""
    start, stop = policy.test_rows
    if stop > len(arrays.timestamps) or arrays.timestamps[start] != policy.test_start:
        raise PloutosError(
            f"the dataset no longer matches fold {policy.fold}'s test window (row {start} should be "
            f"{policy.test_start}); rebuild the data the run was trained on"
        )
    return slice(start - policy.config.env.lookback, stop)


def dry_run(policy: Policy, bars: pl.DataFrame | None = None) -> Replay:
    """Replay ``bars`` (default: the run's dataset) bar by bar through the live decision path."""
    config = policy.config
    env, tickers = config.env, list(policy.tickers)
    arrays = normalized_features(load_bars(config) if bars is None else bars, policy)
    rows = eval_rows(policy, arrays)
    prices = arrays.prices
    close = forward_fill(prices[:, :, 3])
    decider = Decider(policy)
    initial = cash = equity = peak = float(env.initial_cash)
    units, dd, used, day, halted = np.zeros(len(tickers)), 0.0, 0.0, "", ""
    first = rows.start + env.lookback - 1
    marks_t, marks_eq, marks_cash, orders, paid = [arrays.timestamps[first]], [equity], [cash], [], 0.0
    for t in range(first, rows.stop - 1):
        bar = arrays.timestamps[t].astype("datetime64[us]").astype(datetime)
        if f"{bar:%Y-%m-%d}" != day:
            day, used = f"{bar:%Y-%m-%d}", 0.0
        halted = halted or risk.halt_reason(equity, peak, config.paper)
        weights = units * close[t] / equity if equity > 0 else np.zeros(len(tickers))
        observation = decider.observation(arrays.values, t, weights, cash, equity, initial, dd)
        action = decider.decide(observation)
        planned = {}
        if not halted:
            tradeable = arrays.valid[t] & np.isfinite(close[t]) & (close[t] > 0)
            zeros = np.zeros(len(tickers))
            planned = plan_orders(config, action, tickers, units, zeros, close[t], tradeable, equity, used)
        o, h, lo, c, v = (prices[t + 1, :, i] for i in range(5))
        for ticker, qty in planned.items():
            a = tickers.index(ticker)
            used += abs(qty) * close[t, a] / equity
            if not (arrays.present[t + 1, a] and np.isfinite(o[a]) and o[a] > 0):
                continue  # no bar to fill in: the DAY order never fills
            notional = abs(qty) * o[a]
            cost = float(
                costs.total_cost(
                    np.array([notional]),
                    np.array([qty < 0]),
                    h[a : a + 1],
                    lo[a : a + 1],
                    c[a : a + 1],
                    v[a : a + 1],
                    o[a : a + 1],
                    env,
                )[0]
            )
            cash -= qty * o[a] + cost
            units[a] += qty
            paid += cost
            fill = arrays.timestamps[t + 1].astype("datetime64[us]").astype(datetime)
            coid = client_order_id(policy.run_hash, bar, ticker)
            orders.append((bar, fill, ticker, coid, qty, float(o[a]), qty * float(o[a]), cost))
        equity = cash + float(np.nansum(units * close[t + 1]))
        peak = max(peak, equity)
        dd = risk.drawdown(equity, peak)
        marks_t.append(arrays.timestamps[t + 1])
        marks_eq.append(equity)
        marks_cash.append(cash)
    columns = ["bar", "fill_time", "ticker", "client_order_id", "qty", "price", "notional", "cost"]
    frame = pl.DataFrame(orders, schema=columns, orient="row") if orders else pl.DataFrame(schema=columns)
    return Replay(
        timestamps=np.array(marks_t, dtype="datetime64[us]"),
        equity=np.array(marks_eq),
        cash=np.array(marks_cash),
        orders=frame,
        costs=paid,
        halted=halted,
        arrays=arrays,
        rows=rows,
    )


def write_replay(replay: Replay, run_dir: Path) -> tuple[Path, Path]:
    """``dry_run_orders.csv`` and ``dry_run_equity.csv`` in ``RUN_DIR/paper``, atomically."""
    out = Path(run_dir) / "paper"
    orders_path, equity_path = out / "dry_run_orders.csv", out / "dry_run_equity.csv"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(orders_path) as tmp:
            replay.orders.write_csv(tmp)
        with atomic_path(equity_path) as tmp:
            pl.DataFrame({"timestamp": replay.timestamps, "equity": replay.equity, "cash": replay.cash}).write_csv(tmp)
    except OSError as err:
        raise PloutosError(f"{out}: cannot write the dry run ({err.strerror or type(err).__name__})") from None
    return orders_path, equity_path


@dataclass(frozen=True)
class Agreement:
    dry_run: float
    backtest: float
    backtest_costs: float
    """Costs the backtest paid: the tolerance (see :func:`agreement`)."""

    @property
    def difference(self) -> float:
        return abs(self.dry_run - self.backtest)

    @property
    def ok(self) -> bool:
        return self.difference <= self.backtest_costs + 1e-9 * abs(self.backtest)

    def line(self) -> str:
        verdict = "within" if self.ok else "OUTSIDE"
        return (
            f"dry-run final equity {self.dry_run:,.2f} vs backtest {self.backtest:,.2f}: difference "
            f"{self.difference:,.4f}, {verdict} the backtest's costs {self.backtest_costs:,.2f}"
        )


def agreement(policy: Policy, replay: Replay) -> Agreement:
    """The replay's final equity against ``train.evaluate.evaluate`` of the same ensemble and rows.

    Tolerance: the total costs the backtest paid. The two differ only in how each order is sized
    (at the decision close in whole units vs at the fill open in fractions), which moves each
    trade's notional by about the close-to-open gap; the error that leaves is second order in the
    trade size, while the costs are first order in it, so a path that stays within its costs
    traded the same way. A policy that never trades has zero costs and must then agree exactly.
    """
    config = policy.config
    result = evaluate(policy.actor, replay.arrays, config.env, replay.rows, config.data.bars_per_year)
    return Agreement(replay.final_equity, float(result.policy.equity[-1]), float(result.policy.costs.sum()))
