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
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ploutos.config import Config
from ploutos.data.calendar import apply_session
from ploutos.data.sources.alpaca import AlpacaSource
from ploutos.data.sources.retry import log as retry_log
from ploutos.errors import PloutosError, SourceError
from ploutos.features.arrays import FeatureArrays
from ploutos.features.registry import all_specs
from ploutos.paper import risk
from ploutos.paper.broker import AlpacaBroker, BrokerError, OrderResult, OrderUnknown, client_order_id
from ploutos.paper.state import FINAL, UNKNOWN, PaperState, log_event
from ploutos.pipeline.drift import halt_reason as drift_halt_reason
from ploutos.pipeline.drift import score
from ploutos.pipeline.policy import Policy, normalized_features
from ploutos.results.hdf5 import DriftReference
from ploutos.train.encoders import bind_store

log = logging.getLogger(__name__)

BAR = timedelta(hours=1)


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
    """The drawdown limit or the feature drift limit was reached: no new orders (state.json and orders.log
    record why; nothing is flattened)."""


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
        drift: DriftReference | None = None,
        ignore_drift: bool = False,
    ) -> None:
        self.policy, self.broker, self.say, self.adopt = policy, broker, say, adopt
        self.config = policy.config
        self.drift = drift if policy.config.paper.drift_halt else None
        """The fold's feature sketch; None: no drift check."""
        self.ignore_drift = ignore_drift
        extra = self.config.paper.drift_bars if self.drift is not None else 0
        self.dir = Path(run_dir) / "paper"
        self.state_path, self.log_path = self.dir / "state.json", self.dir / "orders.log"
        self.state = PaperState.load(self.state_path, policy.run_hash)
        self.fetch = fetch or (lambda now: fetch_bars(self.config, now, extra=extra))
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
        self._check_drift(arrays, row, bar)
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

    def _check_drift(self, arrays: FeatureArrays, row: int, bar: datetime) -> None:
        """Halt (journal, state, :class:`HaltError`) when too many features drift over the last
        ``paper.drift_bars`` complete bars; with ``ignore_drift`` say so and go on."""
        if self.drift is None:
            return
        reason = drift_halt_reason(score(arrays, self.drift, self.config.paper.drift_bars, row + 1),
                                   self.config.paper.drift_halt)  # fmt: skip
        if not reason:
            return
        if self.ignore_drift:
            self.say(f"warning: {reason}; trading on (--ignore-drift)")
            log_event(self.log_path, "drift_ignored", reason=reason, bar=bar.isoformat())
            return
        self.state.halted = reason
        self.state.save(self.state_path)
        log_event(self.log_path, "halt", reason=reason, bar=bar.isoformat())
        raise HaltError(reason)

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


def fetch_bars(config: Config, now: datetime, extra: int = 0) -> pl.DataFrame:
    """Recent bars of the config's tickers from Alpaca, session-filtered like the dataset; ``extra`` more
    bars than a decision needs (the drift check's window)."""
    specs = all_specs(config.features, n_tickers=len(config.data.tickers), macro_columns=[])
    need = max((s.warmup for s in specs), default=0) + config.env.lookback + 10 + extra
    start = now - timedelta(days=max(14, math.ceil(need / 6 * 7 / 5) + 7))
    risk.check_url("data.alpaca_url", config.data.alpaca_url, live=False, trading=False)  # the keys go there
    source = AlpacaSource(config.data, progress=False)
    frames = [source.fetch(t, start, now) for t in config.data.tickers]
    bars, _ = apply_session(pl.concat(frames).sort("timestamp", "ticker"), config.data.session, config.data.calendar)
    return bars
