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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import polars as pl

from ploutos.config import Config
from ploutos.data.calendar import apply_session
from ploutos.data.sources.alpaca import AlpacaSource
from ploutos.data.sources.retry import log as retry_log
from ploutos.data.sources.retry import one_line
from ploutos.errors import ConfigError, PloutosError, SourceError, first_line
from ploutos.features.arrays import FeatureArrays
from ploutos.features.normalize import NormStats, transform
from ploutos.features.pipeline import observation_arrays
from ploutos.features.registry import all_specs
from ploutos.paper import risk
from ploutos.paper.broker import AlpacaBroker, BrokerError, OrderResult, OrderUnknown, client_order_id
from ploutos.paper.runconfig import run_config
from ploutos.paper.state import FINAL, UNKNOWN, PaperState, log_event
from ploutos.results.layout import RunLayout
from ploutos.train.artifacts import load_policy as load_model_policy
from ploutos.train.encoders import bind_store
from ploutos.train.evaluate import Ensemble

log = logging.getLogger(__name__)

BAR = timedelta(hours=1)
MODEL_NAME = re.compile(r"fold(\d+)_member(\d+)\.zip$")


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
    checked = run_config(run_dir, overrides)
    config, base = checked.config, checked.base
    found = [(int(m[1]), int(m[2]), p) for p in layout.models.glob("*.zip") if (m := MODEL_NAME.search(p.name))]
    if not found:
        raise PloutosError(f"{layout.models}: no trained models (fold<F>_member<M>.zip); train the run first")
    fold = max(f for f, _, _ in found)
    chosen = sorted((m, p) for f, m, p in found if f == fold)
    task = read_task(layout.result(fold, chosen[0][0]))  # before the models: a damaged file fails fast
    try:
        tickers = _traded(task.tickers, base.data.tickers, config.data.tickers)
    except ConfigError as err:
        sets = [t for t in overrides if t.split("=", 1)[0].strip() == "data.tickers"]
        raise ConfigError(f"--set {sets[-1]}: {err}" if sets else str(err)) from None
    run_hash = layout.recorded_hash() or ""
    actor = Ensemble([load_model_policy(p, run_hash) for _, p in chosen], config.ensemble.combine)
    stats = NormStats(config.features.normalize, task.center, task.scale, ())
    members = [m for m, _ in chosen]
    return Policy(config, run_hash, fold, members, actor, stats, task.names, tickers, task.test_rows, task.test_start)


@dataclass(frozen=True)
class TaskFile:
    """What paper trading reads from a fold's task file (``RUN_DIR/tasks/fold<F>_member<M>.h5``)."""

    tickers: tuple[str, ...]
    names: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray
    test_rows: tuple[int, int]
    test_start: np.datetime64


def read_task(path: Path) -> TaskFile:
    """The task file's assets, normalization statistics and test window, each checked (one-line errors)."""
    if not path.exists():
        raise PloutosError(f"{path}: missing; the fold's normalization statistics live there")
    field = "the file"
    try:
        with h5py.File(path, "r", locking=False) as h5:
            field = "tickers"
            tickers = _strings(_dataset(h5, field))
            field = "normalization/names"
            names = _strings(_dataset(h5, field))
            field = "normalization/center"
            center = _floats(_dataset(h5, field), len(names))
            field = "normalization/scale"
            scale = _floats(_dataset(h5, field), len(names))
            if (scale <= 0).any():
                raise ValueError("a scale <= 0")
            field = "fold.attrs.test_rows"
            rows = np.asarray(_attribute(h5, "test_rows"))
            if rows.shape != (2,) or rows.dtype.kind not in "iu" or not 0 <= rows[0] < rows[1]:
                raise ValueError("expected [start, stop) with 0 <= start < stop")
            field = "fold.attrs.test_start"
            raw = _attribute(h5, "test_start")
            start = np.datetime64(str(raw.decode() if isinstance(raw, bytes) else raw).rstrip("Z"), "us")
            if np.isnat(start):
                raise ValueError("not a time")
    except (OSError, KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError) as err:
        problem = one_line(first_line(err), 160) if isinstance(err, (OSError, KeyError)) else first_line(err)
        raise PloutosError(
            f"{path}: {field}: {problem}; the task file is damaged or not written by Ploutos "
            "(train the run again to rewrite it)"
        ) from None
    return TaskFile(tickers, names, center, scale, (int(rows[0]), int(rows[1])), start)


def _dataset(h5: h5py.File, name: str) -> np.ndarray:
    if name not in h5 or not isinstance(h5[name], h5py.Dataset):
        raise KeyError("missing")
    return np.asarray(h5[name][()])


def _attribute(h5: h5py.File, name: str) -> Any:
    if "fold" not in h5 or name not in h5["fold"].attrs:
        raise KeyError("missing")
    return h5["fold"].attrs[name]


def _strings(values: np.ndarray) -> tuple[str, ...]:
    if values.ndim != 1 or not len(values):
        raise ValueError("expected a non-empty list of names")
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)


def _floats(values: np.ndarray, n: int) -> np.ndarray:
    if values.shape != (n,) or values.dtype.kind not in "fiu":
        raise ValueError(f"expected {n} numbers, got shape {values.shape} of {values.dtype}")
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("not all finite")
    return values


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
        self.reference = policy.config.env.obs_layout == "reference"
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
        if self.reference:  # the members' encoders read the window from these features by row
            bind_store(self.actor, values)
            return np.asarray([row, *portfolio], dtype=np.float32)
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
    """Whole-unit orders (signed) that move ``held + pending`` to the risk-limited target weights, under the
    env's trading rules (no trade within ``rebalance_band``, at most ``max_weight_change`` per bar)."""
    current = np.where(np.isfinite(price), held * price / equity, 0.0) if equity > 0 else np.zeros(len(held))
    weights = risk.clip_weights(risk.target_weights(action, current, config.env), config.paper)
    change = weights - current
    if config.env.max_weight_change:
        change = np.clip(change, -config.env.max_weight_change, config.env.max_weight_change)
    weights = np.where(np.abs(weights - current) <= config.env.rebalance_band, current, current + change)
    tradeable = tradeable & (weights != current)
    with np.errstate(divide="ignore", invalid="ignore"):
        target = np.where(tradeable, np.trunc(weights * equity / price), held + pending)
    delta = np.where(tradeable, target - held - pending, 0.0)
    factor = risk.turnover_factor(float(np.abs(delta * np.nan_to_num(price)).sum()), equity, used, config.paper)
    delta = np.trunc(delta * factor)
    return {t: float(d) for t, d in zip(tickers, delta, strict=True) if d != 0}


class HaltError(PloutosError):
    """The drawdown limit was reached: no new orders (state.json records why)."""


class PositionsError(PloutosError):
    """A first run on an account that already holds traded symbols, without ``--adopt-positions``."""


def transient(err: BaseException) -> bool:
    """Whether waiting may cure ``err``: a broker or data outage (connection, timeout, 429/5xx) that
    outlasted the retries. Bad keys, bad replies, config and data problems, the halt: not."""
    if isinstance(err, BrokerError):
        return err.transient
    if isinstance(err, SourceError):  # retry_call's give-up, raised only after Transient failures
        return "gave up after" in str(err)
    return False


class _Quiet(logging.Filter):
    """Demote retry warnings to DEBUG: paper trading reports an outage once, not once per attempt."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


@contextmanager
def quiet_retries() -> Iterator[None]:
    quiet = _Quiet()
    retry_log.addFilter(quiet)
    try:
        yield
    finally:
        retry_log.removeFilter(quiet)


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
        adopt: bool = False,
    ) -> None:
        self.policy, self.broker, self.say, self.adopt = policy, broker, say, adopt
        self.config = policy.config
        self.dir = Path(run_dir) / "paper"
        self.state_path, self.log_path = self.dir / "state.json", self.dir / "orders.log"
        self.state = PaperState.load(self.state_path, policy.run_hash)
        self.fetch = fetch or (lambda now: fetch_bars(self.config, now))
        self.decider = Decider(policy)

    def step(self, now: datetime | None = None) -> str:
        """Process the newest complete bar if it is new; returns a one-line summary (also said).

        Raises :class:`HaltError` at the drawdown limit, :class:`PositionsError` on a first run over
        positions it did not open (unless ``adopt``), and what the broker and the data source raise.
        """
        with quiet_retries():
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
        self._check_first_run(positions)
        state.positions = positions
        state.initial_equity = state.initial_equity or account.equity
        state.peak_equity = max(state.peak_equity or account.equity, account.equity)
        state.new_day(f"{bar:%Y-%m-%d}")
        state.halted = risk.halt_reason(account.equity, state.peak_equity, cfg.paper)
        if state.halted:
            state.save(self.state_path)
            log_event(self.log_path, "halt", reason=state.halted, bar=bar.isoformat())
            raise HaltError(state.halted)
        held = np.array([positions.get(t, 0.0) for t in tickers])
        pending = np.array([state.open_qty(t) for t in tickers])
        price = arrays.prices[row, :, 3]
        weights = np.where(np.isfinite(price), held * price, 0.0) / account.equity
        dd = risk.drawdown(account.equity, state.peak_equity)
        obs = self.decider.observation(
            arrays.values, row, weights, account.cash, account.equity, state.initial_equity, dd
        )
        tradeable = arrays.valid[row] & np.isfinite(price) & (price > 0)
        action = self.decider.decide(obs)  # every bar, as in the backtest: a recurrent policy carries its state
        wait = -state.bars_seen % cfg.env.decide_every  # bars until the next decision (0: this one)
        orders = {} if wait else plan_orders(
            cfg, action, tickers, held, pending, price, tradeable, account.equity, state.turnover_used
        )  # fmt: skip
        sent = []
        for ticker, qty in orders.items():
            coid = client_order_id(state.config_hash, bar, ticker)
            if coid in state.orders:  # sent before a restart: never twice
                continue
            try:
                result = self.broker.submit(coid, ticker, qty)
            except OrderUnknown as err:  # it may have been accepted: journal it first, so it is never resent
                self._record(coid, err.result, bar, float(price[tickers.index(ticker)]), account.equity)
                raise
            self._record(coid, result, bar, float(price[tickers.index(ticker)]), account.equity)
            sent.append(f"{ticker} {qty:+g} {result.status}" + (f" ({result.reason})" if result.reason else ""))
        state.last_bar = bar.isoformat()
        state.bars_seen += 1
        state.save(self.state_path)
        what = ", ".join(sent) if sent else ("no orders" if not wait else f"holding (next decision in {wait} bars)")
        return f"bar {bar:%Y-%m-%d %H:%M} UTC: equity {account.equity:,.2f}; {what}"

    def _record(self, coid: str, result: OrderResult, bar: datetime, price: float, equity: float) -> None:
        """An order in state.json (atomically) and orders.log; anything not rejected counts as turnover."""
        state = self.state
        state.orders[coid] = {**result.as_dict(), "bar": bar.isoformat()}
        if result.status != "rejected":
            state.turnover_used += abs(result.qty) * price / equity
        state.save(self.state_path)
        log_event(self.log_path, "order", client_order_id=coid, **state.orders[coid])

    def _check_first_run(self, positions: dict[str, float]) -> None:
        """On a first run (nothing recorded yet) refuse an account that already holds traded symbols."""
        state = self.state
        if state.initial_equity is not None or state.orders or state.last_bar is not None:
            return
        held = {t: positions[t] for t in self.policy.tickers if positions.get(t)}
        if not held:
            return
        listing = ", ".join(f"{t} {q:g}" for t, q in held.items())
        if not self.adopt:
            raise PositionsError(
                f"the account already holds {listing} and this run has no paper state yet "
                f"({self.state_path}): refusing to trade positions it did not open; close them, "
                "or pass --adopt-positions to manage them as this run's own"
            )
        log_event(self.log_path, "adopt", positions=held)
        self.say(f"adopting positions {listing} (--adopt-positions)")

    def _refresh_orders(self) -> None:
        """Ask the broker about every order that may still fill (partial fills, late fills).

        An order recorded as ``unknown`` (its submit had no usable answer) that the server does not
        have becomes ``not_found``: it was never accepted, and its client id is never sent again.
        """
        for coid, order in self.state.orders.items():
            if order["status"] not in FINAL:
                known = self.broker.lookup(coid, order["ticker"], order["qty"])
                if known is not None:
                    order.update(known.as_dict())
                elif order["status"] == UNKNOWN:
                    order.update(status="not_found", reason=f"{order.get('reason', '')}; not on the server later")
                else:
                    continue
                self.state.save(self.state_path)
                log_event(self.log_path, "order", client_order_id=coid, **order)

    def loop(
        self, poll_seconds: float, *, sleep: Callable[[float], None] | None = None, steps: int | None = None
    ) -> None:
        """:meth:`step` every ``poll_seconds`` (forever, or ``steps`` times), through outages.

        A :func:`transient` failure (the broker or the data source unreachable through all their
        retries) starts an outage: one line when it starts, one when it ends, and in between a step
        every ``poll_seconds * 2**k`` seconds, capped at :func:`outage_cap`. Any other error stops
        the loop (the CLI prints it in one line and exits 2); Ctrl-C stops it too (exit 130).
        """
        sleep = sleep or time.sleep
        cap = outage_cap(poll_seconds)
        done, failures, since = 0, 0, 0.0
        while steps is None or done < steps:
            wait = poll_seconds
            try:
                self.step()
            except PloutosError as err:
                if not transient(err):
                    raise
                failures += 1
                if failures == 1:
                    since = time.monotonic()
                    self.say(f"outage: {err}; retrying with backoff up to {cap:g}s until it ends")
                    log_event(self.log_path, "outage_start", reason=str(err))
                wait = min(poll_seconds * 2 ** min(failures - 1, 30), cap)
            else:
                if failures:
                    lasted = time.monotonic() - since
                    self.say(f"outage over after {lasted:.0f}s and {failures} failed step(s)")
                    log_event(self.log_path, "outage_end", seconds=round(lasted, 1), failed_steps=failures)
                failures = 0
            done += 1
            if steps is None or done < steps:
                sleep(wait)


def outage_cap(poll_seconds: float) -> float:
    """Longest wait between steps during an outage: 8 x poll_seconds, at most 15 minutes (never below the poll)."""
    return max(poll_seconds, min(8 * poll_seconds, 900.0))


def fetch_bars(config: Config, now: datetime) -> pl.DataFrame:
    """Recent bars of the config's tickers from Alpaca, session-filtered like the dataset."""
    specs = all_specs(config.features, n_tickers=len(config.data.tickers), macro_columns=[])
    need = max((s.warmup for s in specs), default=0) + config.env.lookback + 10
    start = now - timedelta(days=max(14, math.ceil(need / 6 * 7 / 5) + 7))
    risk.check_url("data.alpaca_url", config.data.alpaca_url, live=False, trading=False)  # the keys go there
    source = AlpacaSource(config.data, progress=False)
    frames = [source.fetch(t, start, now) for t in config.data.tickers]
    bars, _ = apply_session(pl.concat(frames).sort("timestamp", "ticker"), config.data.session, config.data.calendar)
    return bars
