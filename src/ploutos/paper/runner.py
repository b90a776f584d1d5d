"""The paper-trading loop: newest bars -> the latest fold's ensemble -> risk limits -> orders.

Features come through the training code path only (:func:`ploutos.features.pipeline.observation_arrays`,
then :func:`ploutos.features.normalize.transform` with the fold's statistics read from its task
file, never refitted), and the observation is laid out as :class:`~ploutos.env.trading.TradingEnv`
lays it out (window of normalized features, weights, cash share, log return, drawdown). The same
:class:`Decider` and :func:`plan_orders` serve the live loop here and the ``--dry-run`` replay
(:mod:`ploutos.paper.replay`).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import polars as pl

from ploutos.config import Config, load
from ploutos.data.calendar import apply_session
from ploutos.data.sources.alpaca import AlpacaSource
from ploutos.errors import ConfigError, PloutosError
from ploutos.features.arrays import FeatureArrays
from ploutos.features.normalize import NormStats, transform
from ploutos.features.pipeline import observation_arrays
from ploutos.features.registry import all_specs
from ploutos.paper import risk
from ploutos.paper.broker import AlpacaBroker, client_order_id
from ploutos.paper.state import FINAL, PaperState, log_event
from ploutos.results.layout import RunLayout
from ploutos.train.evaluate import Ensemble
from ploutos.train.model import algorithm

log = logging.getLogger(__name__)

BAR = timedelta(hours=1)
MODEL_NAME = re.compile(r"fold(\d+)_member(\d+)\.zip$")
OVERRIDABLE = (
    "paper.",
    "data.alpaca_url",
    "data.alpaca_feed",
    "data.store",
    "data.max_retries",
    "data.retry_backoff_s",
    "data.request_timeout_s",
    "data.source",
    "data.tickers",
)
"""``--set`` keys paper trading accepts on top of the run's config (the model fixes everything else)."""


@dataclass
class Policy:
    """The latest fold's ensemble of a run, with what it needs to see."""

    config: Config
    run_hash: str
    fold: int
    members: list[int]
    actor: Any
    stats: NormStats
    names: tuple[str, ...]
    """Observation feature names of the task file, in order."""
    tickers: tuple[str, ...]
    """The traded symbols in the model's asset order (the task file's, mapped through ``--set data.tickers``)."""
    test_rows: tuple[int, int]
    test_start: np.datetime64


def load_policy(run_dir: Path, overrides: Sequence[str] = ()) -> Policy:
    """All members of the highest fold in ``RUN_DIR/models``, combined as ``config.ensemble.combine``."""
    layout = RunLayout(Path(run_dir))
    if not layout.config_file.exists():
        raise PloutosError(f"{run_dir}: no config.yaml; is this a run folder (results/<name>)?")
    for text in overrides:
        if not text.split("=", 1)[0].strip().startswith(OVERRIDABLE):
            raise ConfigError(
                f"--set {text}: paper trading only overrides {', '.join(OVERRIDABLE)} (the model fixes the rest)"
            )
    config, base = load(layout.config_file, overrides), load(layout.config_file)
    found = [(int(m[1]), int(m[2]), p) for p in layout.models.glob("*.zip") if (m := MODEL_NAME.search(p.name))]
    if not found:
        raise PloutosError(f"{layout.models}: no trained models (fold<F>_member<M>.zip); train the run first")
    fold = max(f for f, _, _ in found)
    chosen = sorted((m, p) for f, m, p in found if f == fold)
    cls = algorithm(config)
    actor = Ensemble([cls.load(str(p), device="cpu") for _, p in chosen], config.ensemble.combine)
    task = layout.result(fold, chosen[0][0])
    if not task.exists():
        raise PloutosError(f"{task}: missing; the fold's normalization statistics live there")
    with h5py.File(task, "r", locking=False) as h5:
        trained = tuple(t.decode() if isinstance(t, bytes) else str(t) for t in h5["tickers"][()])
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in h5["normalization/names"][()])
        center, scale = h5["normalization/center"][()], h5["normalization/scale"][()]
        rows = tuple(int(x) for x in h5["fold"].attrs["test_rows"])
        start = np.datetime64(str(h5["fold"].attrs["test_start"]).rstrip("Z"), "us")
    stats = NormStats(config.features.normalize, center.astype(np.float64), scale.astype(np.float64), ())
    members, run_hash = [m for m, _ in chosen], layout.recorded_hash() or ""
    tickers = _traded(trained, base.data.tickers, config.data.tickers)
    return Policy(config, run_hash, fold, members, actor, stats, names, tickers, rows, start)  # type: ignore[arg-type]


def _traded(trained: tuple[str, ...], run: Sequence[str], now: Sequence[str]) -> tuple[str, ...]:
    """The symbols to trade in the model's asset order: ``data.tickers`` overrides map by position."""
    if list(run) == list(now):
        return trained
    if len(now) != len(trained) or sorted(trained) != sorted(run):
        raise ConfigError(f"data.tickers {list(now)}: the model trades {len(trained)} asset(s) {list(trained)}")
    return tuple(now[list(run).index(t)] for t in trained)


def normalized_features(bars: pl.DataFrame, policy: Policy) -> FeatureArrays:
    """The training code path: observation features of ``bars``, scaled with the fold's statistics."""
    config = policy.config
    arrays = observation_arrays(bars, config)
    if arrays.names != policy.names:
        raise PloutosError(f"features {list(arrays.names)} differ from the model's {list(policy.names)}")
    if set(arrays.tickers) != set(policy.tickers):
        raise PloutosError(f"bars hold {list(arrays.tickers)}, the policy trades {list(policy.tickers)}")
    order = [arrays.tickers.index(t) for t in policy.tickers]  # the model's asset order
    arrays = replace(
        arrays,
        tickers=policy.tickers,
        values=arrays.values[:, order],
        valid=arrays.valid[:, order],
        present=arrays.present[:, order],
        prices=arrays.prices[:, order],
    )
    if config.features.normalize == "none":
        return arrays
    return transform(arrays, policy.stats, config.features.clip)


class Decider:
    """The ensemble acting on observations laid out as the env's, recurrent state kept between calls."""

    def __init__(self, policy: Policy) -> None:
        self.actor, self.lookback = policy.actor, policy.config.env.lookback
        self.state: Any = None
        self.first = True

    def observation(
        self,
        values: np.ndarray,
        row: int,
        weights: np.ndarray,
        cash: float,
        equity: float,
        initial: float,
        drawdown: float,
    ) -> np.ndarray:
        window = values[row - self.lookback + 1 : row + 1]
        if len(window) < self.lookback:
            raise PloutosError(f"only {len(window)} bar(s) of history; the model looks back {self.lookback}")
        portfolio = [*weights, cash / equity, math.log(equity / initial), drawdown] if equity > 0 else None
        if portfolio is None:
            portfolio = [*([0.0] * len(weights)), 0.0, -30.0, drawdown]
        return np.concatenate([window.reshape(-1), np.asarray(portfolio)]).astype(np.float32)

    def decide(self, observation: np.ndarray) -> np.ndarray:
        action, self.state = self.actor.predict(observation, self.state, np.array([self.first]), deterministic=True)
        self.first = False
        return np.asarray(action)


def plan_orders(
    config: Config,
    action: np.ndarray,
    tickers: Sequence[str],
    held: np.ndarray,
    pending: np.ndarray,
    price: np.ndarray,
    tradeable: np.ndarray,
    equity: float,
    used: float,
) -> dict[str, float]:
    """Whole-unit orders (signed) that move ``held + pending`` to the risk-limited target weights."""
    current = np.where(np.isfinite(price), held * price / equity, 0.0) if equity > 0 else np.zeros(len(held))
    weights = risk.clip_weights(risk.target_weights(action, current, config.env), config.paper)
    with np.errstate(divide="ignore", invalid="ignore"):
        target = np.where(tradeable, np.trunc(weights * equity / price), held + pending)
    delta = np.where(tradeable, target - held - pending, 0.0)
    factor = risk.turnover_factor(float(np.abs(delta * np.nan_to_num(price)).sum()), equity, used, config.paper)
    delta = np.trunc(delta * factor)
    return {t: float(d) for t, d in zip(tickers, delta, strict=True) if d != 0}


class PaperRunner:
    """One rebalance per new complete bar against an Alpaca (paper) account; state in RUN_DIR/paper."""

    def __init__(
        self,
        run_dir: Path,
        policy: Policy,
        broker: AlpacaBroker,
        *,
        fetch: Callable[[datetime], pl.DataFrame] | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.policy, self.broker, self.say = policy, broker, say
        self.config = policy.config
        self.dir = Path(run_dir) / "paper"
        self.state_path, self.log_path = self.dir / "state.json", self.dir / "orders.log"
        self.state = PaperState.load(self.state_path, policy.run_hash)
        self.fetch = fetch or (lambda now: fetch_bars(self.config, now))
        self.decider = Decider(policy)

    def step(self, now: datetime | None = None) -> str:
        """Process the newest complete bar if it is new; returns a one-line summary (also said)."""
        message = self._step(now or datetime.now(timezone.utc))
        self.say(message)
        return message

    def _step(self, now: datetime) -> str:
        cfg, state, tickers = self.config, self.state, list(self.policy.tickers)
        if cfg.paper.market_hours_only:
            clock = self.broker.clock()
            if not clock.is_open:
                return f"market closed; next open {clock.next_open}; nothing to do"
        arrays = normalized_features(self.fetch(now), self.policy)
        complete = np.nonzero(
            arrays.timestamps + np.timedelta64(1, "h") <= np.datetime64(now.replace(tzinfo=None), "us")
        )[0]
        if not len(complete):
            return "no complete bar yet"
        row = int(complete[-1])
        bar = arrays.timestamps[row].astype("datetime64[us]").astype(datetime)
        if state.last_bar is not None and bar.isoformat() <= state.last_bar:
            return f"bar {bar:%Y-%m-%d %H:%M} UTC already processed; waiting for the next"
        self._refresh_orders()
        account, positions = self.broker.account(), self.broker.positions()
        state.positions = positions
        state.initial_equity = state.initial_equity or account.equity
        state.peak_equity = max(state.peak_equity or account.equity, account.equity)
        state.new_day(f"{bar:%Y-%m-%d}")
        state.halted = risk.halt_reason(account.equity, state.peak_equity, cfg.paper)
        if state.halted:
            state.save(self.state_path)
            log_event(self.log_path, "halt", reason=state.halted, bar=bar.isoformat())
            return state.halted
        held = np.array([positions.get(t, 0.0) for t in tickers])
        pending = np.array([state.open_qty(t) for t in tickers])
        price = arrays.prices[row, :, 3]
        weights = np.where(np.isfinite(price), held * price, 0.0) / account.equity
        dd = risk.drawdown(account.equity, state.peak_equity)
        obs = self.decider.observation(
            arrays.values, row, weights, account.cash, account.equity, state.initial_equity, dd
        )
        tradeable = arrays.valid[row] & np.isfinite(price) & (price > 0)
        orders = plan_orders(
            cfg, self.decider.decide(obs), tickers, held, pending, price, tradeable, account.equity, state.turnover_used
        )
        sent = []
        for ticker, qty in orders.items():
            coid = client_order_id(state.config_hash, bar, ticker)
            if coid in state.orders:  # sent before a restart: never twice
                continue
            result = self.broker.submit(coid, ticker, qty)
            state.orders[coid] = {**result.as_dict(), "bar": bar.isoformat()}
            if result.status != "rejected":
                state.turnover_used += abs(qty) * float(price[tickers.index(ticker)]) / account.equity
            state.save(self.state_path)
            log_event(self.log_path, "order", client_order_id=coid, **state.orders[coid])
            sent.append(f"{ticker} {qty:+g} {result.status}" + (f" ({result.reason})" if result.reason else ""))
        state.last_bar = bar.isoformat()
        state.save(self.state_path)
        what = ", ".join(sent) if sent else "no orders"
        return f"bar {bar:%Y-%m-%d %H:%M} UTC: equity {account.equity:,.2f}; {what}"

    def _refresh_orders(self) -> None:
        """Ask the broker about every order that may still fill (partial fills, late fills)."""
        for coid, order in self.state.orders.items():
            if order["status"] not in FINAL:
                known = self.broker.lookup(coid, order["ticker"], order["qty"])
                if known is not None:
                    order.update(known.as_dict())

    def loop(
        self, poll_seconds: float, *, sleep: Callable[[float], None] | None = None, steps: int | None = None
    ) -> None:
        """:meth:`step` every ``poll_seconds`` (forever, or ``steps`` times)."""
        done = 0
        while steps is None or done < steps:
            self.step()
            done += 1
            if steps is None or done < steps:
                (sleep or time.sleep)(poll_seconds)


def fetch_bars(config: Config, now: datetime) -> pl.DataFrame:
    """Recent bars of the config's tickers from Alpaca, session-filtered like the dataset."""
    specs = all_specs(config.features, n_tickers=len(config.data.tickers), macro_columns=[])
    need = max((s.warmup for s in specs), default=0) + config.env.lookback + 10
    start = now - timedelta(days=max(14, math.ceil(need / 6 * 7 / 5) + 7))
    source = AlpacaSource(config.data, progress=False)
    frames = [source.fetch(t, start, now) for t in config.data.tickers]
    bars, _ = apply_session(pl.concat(frames).sort("timestamp", "ticker"), config.data.session, config.data.calendar)
    return bars
