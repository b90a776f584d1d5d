"""``ploutos paper --dry-run``: replay the local dataset over the latest fold's test window.

The live loop's decision path decides on each bar's close: the features of the bars as paper
trading computes them (:func:`~ploutos.pipeline.policy.normalized_features`), the observation as
:class:`~ploutos.paper.runner.Decider` builds it from the portfolio, the ensemble's action, and
the ``paper.*`` risk limits (weights clipped to ``max_weight``, a day's notional within
``max_daily_turnover``, no orders after the drawdown halt). The fills, at the next bar's open
with every cost, come from the simulator that training and evaluation use
(:class:`~ploutos.env.core.MarketCore`): fill and cost code exists once. Orders go to
``RUN_DIR/paper/dry_run_orders.csv``, the equity at every close to ``dry_run_equity.csv``.

With the limits open the replay and :func:`ploutos.train.evaluate.evaluate` of the same ensemble
on the same rows are the same path: their final equities agree to 1e-9 (:func:`agreement`).
Live orders differ from both by their sizing (whole units at the decision close).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from ploutos.env.core import MarketCore
from ploutos.errors import PloutosError
from ploutos.features.arrays import FeatureArrays
from ploutos.features.pipeline import load_bars
from ploutos.files import atomic_path
from ploutos.paper import risk
from ploutos.paper.broker import client_order_id
from ploutos.paper.runner import Decider
from ploutos.pipeline.policy import Policy, normalized_features
from ploutos.progress import progress_bar
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
    limited_steps: int = 0
    """Bars where a ``paper.*`` risk limit changed the orders (clipped, scaled down, or halted)."""

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


def dry_run(
    policy: Policy,
    bars: pl.DataFrame | None = None,
    *,
    say: Callable[[str], object] = lambda _: None,
    progress: bool = False,
) -> Replay:
    """Replay ``bars`` (default: the run's dataset) bar by bar through the live decision path.

    ``say`` hears each step as it starts and ends (a replay takes about a minute); ``progress`` draws a
    bar over the replayed bars.
    """
    config = policy.config
    limits, tickers = config.paper, list(policy.tickers)
    started = time.perf_counter()
    say(f"reading bars from {config.data.store} and computing the features paper trading sees ...")
    arrays = normalized_features(load_bars(config) if bars is None else bars, policy)
    rows = eval_rows(policy, arrays)
    replayed = rows.stop - rows.start - config.env.lookback
    say(
        f"{arrays.shape[2]} features x {arrays.shape[1]} asset(s) x {arrays.shape[0]} bars "
        f"({time.perf_counter() - started:.1f} s); replaying the {replayed} bars of fold {policy.fold}'s test window"
    )
    started = time.perf_counter()
    sim = MarketCore(
        arrays,
        replace(config.env, bankruptcy_equity=0.0),
        rows=rows,
        evaluation=True,
        bars_per_year=config.data.bars_per_year,
    )
    sim.reset(0, *sim.draw_start(np.random.default_rng(0)))
    decider = Decider(policy)
    used, day, halted, limited, paid = 0.0, "", "", 0, 0.0
    marks_t, marks_eq, marks_cash, orders = [arrays.timestamps[sim.rows[0]]], [sim.initial], [sim.initial], []
    bar_progress = progress_bar(total=replayed, enabled=progress, desc="dry run", unit="bar")
    while sim.active[0]:
        bar_progress.update()
        t = int(sim.rows[0])
        bar = arrays.timestamps[t].astype("datetime64[us]").astype(datetime)
        if f"{bar:%Y-%m-%d}" != day:
            day, used = f"{bar:%Y-%m-%d}", 0.0
        equity, cash = float(sim.equity[0]), float(sim.cash[0])
        halted = halted or risk.halt_reason(equity, float(sim.peak[0]), limits)
        observation = decider.observation(
            arrays.values, t, sim.weights[0], cash, equity, sim.initial, float(sim.drawdown[0])
        )
        budget = 0.0 if halted else max(limits.max_daily_turnover - used, 0.0) * equity
        action = decider.decide(observation)
        step = sim.step(action[None], max_weight=limits.max_weight, notional_budget=np.array([budget]))
        limited += int(step.limited[0] or bool(halted))
        used += float(step.notional[0]) / equity if equity > 0 else 0.0
        paid += float(step.costs[0])
        fill = arrays.timestamps[int(step.fill_rows[0])].astype("datetime64[us]").astype(datetime)
        for a in np.flatnonzero(step.traded[0]):
            qty, price = float(step.traded[0, a]), float(step.fill_prices[0, a])
            coid = client_order_id(policy.run_hash, bar, tickers[a])
            orders.append((bar, fill, tickers[a], coid, qty, price, qty * price))
        marks_t.append(arrays.timestamps[int(step.fill_rows[0])])
        marks_eq.append(float(step.equity[0]))
        marks_cash.append(float(step.cash[0]))
    bar_progress.close()
    change = marks_eq[-1] / marks_eq[0] - 1 if marks_eq[0] else 0.0
    say(
        f"replayed {len(marks_eq) - 1} bar(s) in {time.perf_counter() - started:.1f} s: final equity "
        f"{marks_eq[-1]:,.2f}, return {change:.2%}"
    )
    columns = ["bar", "fill_time", "ticker", "client_order_id", "qty", "price", "notional"]
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
        limited_steps=limited,
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
    limited_steps: int
    """Bars where the risk limits changed the replay's orders: the paths may differ there."""

    @property
    def difference(self) -> float:
        return abs(self.dry_run - self.backtest)

    @property
    def ok(self) -> bool:
        """The same path when no limit bound (to 1e-9); with limits, any difference is theirs."""
        return self.limited_steps > 0 or self.difference <= 1e-9 * max(abs(self.backtest), 1.0)

    def line(self) -> str:
        head = f"dry-run final equity {self.dry_run:,.2f} vs backtest {self.backtest:,.2f}"
        head += f": difference {self.difference:.3g}"
        if self.limited_steps:
            return f"{head}; the paper.* risk limits changed the orders of {self.limited_steps} bar(s)"
        verdict = "the same path" if self.ok else "DIFFERENT paths"
        return f"{head}, {verdict} (no risk limit bound; fills and costs come from one simulator)"


def agreement(policy: Policy, replay: Replay) -> Agreement:
    """The replay's final equity against ``train.evaluate.evaluate`` of the same ensemble and rows.

    Both decide with the same ensemble on the same features and fill through the same simulator;
    where no risk limit bound they are one path and must agree to 1e-9.
    """
    config = policy.config
    result = evaluate(policy.actor, replay.arrays, config.env, replay.rows, config.data.bars_per_year)
    return Agreement(replay.final_equity, float(result.policy.equity[-1]), replay.limited_steps)
