"""Paper trading: the REAL alpaca-py ``TradingClient`` against a fake trading API on loopback.

Two ways in:

* the broker/runner tests drive :class:`PaperRunner` with bars passed in directly (built from the
  data fake's deterministic SPY/QQQ bars) and a constant-weight policy, so that order sizes are
  known; everything between the bars and the HTTP requests is the production path;
* ``test_once_end_to_end_and_keys_never_leak`` runs ``ploutos paper --once`` on a tiny trained run
  (the quickstart EURUSD ensemble, traded as SPY) with alpaca-py fetching bars from the fake data
  server and sending orders to the fake trading server;
* ``test_dry_run_agrees_with_the_backtest`` replays the run's own test window.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest

from fakes.alpaca import FakeAlpaca, bar_times, bar_values
from fakes.alpaca_trading import FakeTrading
from fakes.server import DROP
from ploutos.analytics.drift import PROBABILITIES, reference_sketch
from ploutos.cli import build_parser
from ploutos.config import dump, load
from ploutos.data.bars import BAR_SCHEMA
from ploutos.data.sources.retry import Transient, retry_call
from ploutos.errors import ConfigError, PloutosError, SourceError
from ploutos.features.normalize import NormStats, transform
from ploutos.features.pipeline import observation_arrays
from ploutos.paper import command, risk
from ploutos.paper.broker import AlpacaBroker, BrokerError, OrderUnknown, client_order_id
from ploutos.paper.runner import HaltError, PaperRunner, PositionsError, outage_cap, transient
from ploutos.paper.state import PaperState, StateError
from ploutos.pipeline.policy import Policy, normalized_features, read_task, run_config
from ploutos.results.hdf5 import DriftReference
from ploutos.results.layout import RunLayout

KEY, SECRET = "PKPAPERKEY7788", "paper-s3cr3t-never-in-logs-42"
NOW = datetime(2024, 3, 5, 15, 0, tzinfo=timezone.utc)  # a Tuesday; the 14:00 bar is the newest complete
HASH = "abcdef0123456789"
TICKERS = ("SPY", "QQQ")


# -- fixtures -----------------------------------------------------------------------------------


def fake_bars(tickers: tuple[str, ...], start: datetime, end: datetime) -> pl.DataFrame:
    rows = [{"timestamp": t, "ticker": s, **bar_values(s, t)} for s in tickers for t in bar_times(start, end)]
    frame = pl.DataFrame(rows).rename({"o": "open", "h": "high", "l": "low", "c": "close", "v": "volume"})
    return frame.select(pl.col(n).cast(d) for n, d in BAR_SCHEMA.items()).sort("timestamp", "ticker")


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    return fake_bars(TICKERS, datetime(2024, 1, 2, tzinfo=timezone.utc), NOW + timedelta(hours=3))


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPACA_API_KEY", KEY)
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)
    monkeypatch.delenv("PLOUTOS_LIVE_CONFIRM", raising=False)


@pytest.fixture
def trading(bars: pl.DataFrame):
    last = bars.filter(pl.col("timestamp") == NOW - timedelta(hours=1))  # the decision bar's close
    with FakeTrading(api_key=KEY, prices=dict(zip(last["ticker"], last["close"], strict=True))) as server:
        yield server


class Constant:
    """A policy that always wants the same target weights."""

    def __init__(self, weights: list[float]) -> None:
        self.weights = np.array(weights, dtype=np.float32)

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        assert observation.dtype == np.float32 and np.isfinite(observation).all()
        return self.weights, None


def make_policy(bars: pl.DataFrame, weights: list[float], *, rules: tuple[str, ...] = (), **paper: object) -> Policy:
    """A constant policy; the quickstart's trading rules are off unless ``rules`` sets them."""
    settings = ["data.tickers=[SPY, QQQ]", "paper.market_hours_only=false"]
    config = load(None, [*settings, "env.rebalance_band=0", "env.decide_every=1", *rules])
    config = replace(config, paper=replace(config.paper, **paper))
    names = observation_arrays(bars, config).names
    stats = NormStats("zscore", np.zeros(len(names)), np.ones(len(names)), ())
    return Policy(config, HASH, 0, [0], Constant(weights), stats, names, TICKERS, (0, 0), np.datetime64("2024-01-01"))


def broker(server: FakeTrading, attempts: int = 3) -> AlpacaBroker:
    return AlpacaBroker(KEY, SECRET, url=server.url, attempts=attempts, backoff_s=0.01, timeout_s=5)


def runner(tmp_path: Path, policy: Policy, server: FakeTrading, bars: pl.DataFrame, **kw: object) -> PaperRunner:
    said: list[str] = []
    run = PaperRunner(tmp_path, policy, broker(server, **kw), fetch=lambda now: bars, say=said.append)
    run.said = said  # type: ignore[attr-defined]
    return run


def coid(ticker: str, hour: int = 14) -> str:
    return client_order_id(HASH, datetime(2024, 3, 5, hour), ticker)


def saved(tmp_path: Path) -> PaperState:
    return PaperState.load(tmp_path / "paper" / "state.json", HASH)


def qty_for(weight: float, price: float, equity: float = 100_000.0) -> float:
    return float(np.trunc(weight * equity / price))


# -- broker and runner against the fake trading server ------------------------------------------


def test_order_accepted_with_deterministic_ids_and_risk_clip(tmp_path, bars, trading) -> None:
    run = runner(tmp_path, make_policy(bars, [0.4, -0.2], max_weight=0.25), trading, bars)
    run.step(NOW)
    assert list(trading.orders) == [coid("SPY"), coid("QQQ")]
    assert coid("SPY") == f"ploutos-{HASH[:8]}-2024030514-SPY"
    spy, qqq = trading.orders[coid("SPY")], trading.orders[coid("QQQ")]
    assert (spy["side"], float(spy["qty"])) == ("buy", qty_for(0.25, trading.prices["SPY"]))  # clipped to 0.25
    assert (qqq["side"], float(qqq["qty"])) == ("sell", qty_for(0.2, trading.prices["QQQ"]))
    state = saved(tmp_path)
    assert state.last_bar == "2024-03-05T14:00:00" and state.orders[coid("SPY")]["status"] == "filled"
    assert state.turnover_used == pytest.approx(0.45, abs=0.01)
    run.step(NOW + timedelta(minutes=30))  # the same bar again: nothing new
    assert len(trading.order_posts()) == 2 and "already processed" in run.said[-1]


def test_rejected_order_is_recorded_once_without_retry_storm(tmp_path, bars, trading) -> None:
    trading.reject_next = 1
    run = runner(tmp_path, make_policy(bars, [0.2, 0.1]), trading, bars)
    run.step(NOW)
    spy = saved(tmp_path).orders[coid("SPY")]
    assert spy["status"] == "rejected" and "insufficient buying power" in spy["reason"]
    assert len(trading.order_posts()) == 2 and coid("SPY") not in trading.orders  # one try, then QQQ
    assert "SPY +" in run.said[-1] and "rejected" in run.said[-1]
    run.step(NOW)  # a restart on the same bar does not try again
    assert len(trading.order_posts()) == 2


def test_partial_fill_is_recorded_and_the_next_rebalance_accounts_for_it(tmp_path, bars, trading) -> None:
    trading.partial_next = 1
    run = runner(tmp_path, make_policy(bars, [0.2, 0.0]), trading, bars)
    run.step(NOW)
    want = qty_for(0.2, trading.prices["SPY"])
    order = saved(tmp_path).orders[coid("SPY")]
    assert order["status"] == "partially_filled" and order["filled_qty"] == float(int(want // 2))
    run.step(NOW + timedelta(hours=1))  # the rest is still working: no new order
    assert coid("SPY", 15) not in trading.orders
    trading.cancel_open()  # the DAY order ends unfilled
    run.step(NOW + timedelta(hours=2))
    assert saved(tmp_path).orders[coid("SPY")]["status"] == "canceled"
    close = bars.filter((pl.col("ticker") == "SPY") & (pl.col("timestamp") == NOW + timedelta(hours=1)))["close"][0]
    rest = qty_for(0.2, close, trading.equity()) - int(want // 2)  # sized on the 16:00 close
    assert float(trading.orders[coid("SPY", 16)]["qty"]) == rest
    assert trading.positions["SPY"] == int(want // 2) + rest


@pytest.mark.parametrize("where", ["after the order was recorded", "before the server saw it"])
def test_dropped_connection_is_retried_and_leaves_exactly_one_order(tmp_path, bars, trading, where) -> None:
    if where.startswith("after"):
        trading.drop_next = 1
    else:
        trading.fail([DROP], when=lambda r: r.method == "POST")
    run = runner(tmp_path, make_policy(bars, [0.2, 0.0]), trading, bars)
    run.step(NOW)
    assert list(trading.orders) == [coid("SPY")]
    assert trading.positions["SPY"] == qty_for(0.2, trading.prices["SPY"])
    assert saved(tmp_path).orders[coid("SPY")]["status"] == "filled"
    lookups = trading.matching(lambda r: r.path == "/v2/orders:by_client_order_id")
    assert [r.query["client_order_id"] for r in lookups] == [coid("SPY")]


def test_restart_in_the_middle_of_a_rebalance_does_not_duplicate(tmp_path, bars, trading) -> None:
    trading.fail([503] * 2, when=lambda r: r.method == "POST" and len(trading.orders) == 1)
    first = runner(tmp_path, make_policy(bars, [0.2, -0.1]), trading, bars, attempts=2)
    with pytest.raises(BrokerError, match="gave up after 2 attempt"):
        first.step(NOW)
    state = saved(tmp_path)
    assert list(state.orders) == [coid("SPY")] and state.last_bar is None  # saved after the first order
    second = runner(tmp_path, make_policy(bars, [0.2, -0.1]), trading, bars)
    second.step(NOW)
    assert list(trading.orders) == [coid("SPY"), coid("QQQ")]
    posts = trading.order_posts()
    assert len(posts) == 1 + 2 + 1  # SPY once, QQQ twice refused then once accepted
    assert saved(tmp_path).last_bar == "2024-03-05T14:00:00"


def test_a_duplicate_client_order_id_returns_the_accepted_order(trading) -> None:
    client = broker(trading)
    first = client.submit("ploutos-x-2024030514-SPY", "SPY", 5)
    again = client.submit("ploutos-x-2024030514-SPY", "SPY", 5)  # e.g. a process that lost its state
    assert first.status == again.status == "filled" and len(trading.orders) == 1
    assert [r.method for r in trading.matching(lambda r: "orders" in r.path)] == ["POST", "POST", "GET"]


def test_turnover_budget_scales_orders_and_drawdown_halts(tmp_path, bars, trading) -> None:
    run = runner(tmp_path, make_policy(bars, [0.25, -0.2], max_daily_turnover=0.3), trading, bars)
    run.step(NOW)
    spy, qqq = (float(trading.orders[coid(t)]["qty"]) for t in TICKERS)
    assert spy == pytest.approx(qty_for(0.25, trading.prices["SPY"]) * 0.3 / 0.45, abs=1)
    assert qqq == pytest.approx(qty_for(0.2, trading.prices["QQQ"]) * 0.3 / 0.45, abs=1)
    run.step(NOW + timedelta(hours=1))  # the day's budget is spent: nothing more
    assert len(trading.orders) == 2
    trading.cash -= 20_000  # equity 20% below its peak
    with pytest.raises(HaltError) as halt:  # a halt ends --once and --loop with one error line
        run.step(NOW + timedelta(hours=2))
    message = str(halt.value)
    assert message.startswith("drawdown halt") and "no new orders" in message and len(trading.orders) == 2
    assert saved(tmp_path).halted == message


def drift_reference(policy: Policy, bars: pl.DataFrame, shift: float = 0.0, spread: float = 1.0) -> DriftReference:
    """A sketch of the policy's own features on ``bars`` (no drift), or of a regime-shifted copy of them."""
    arrays = normalized_features(bars, policy)
    quantiles, cdf, rows = reference_sketch(arrays.values * spread + shift, arrays.valid)
    return DriftReference(quantiles, cdf, PROBABILITIES, rows, "test")


def test_feature_drift_halts_without_flattening_and_ignore_drift_trades(tmp_path, bars, trading) -> None:
    policy = make_policy(bars, [0.2, 0.1])
    said: list[str] = []
    calm = PaperRunner(tmp_path / "calm", policy, broker(trading), fetch=lambda now: bars, say=said.append,
                       drift=drift_reference(policy, bars))  # fmt: skip
    calm.step(NOW)  # the features it trained on: no drift, it trades
    assert len(trading.orders) == 2 and "equity" in said[-1]
    shifted = drift_reference(policy, bars, shift=1.5, spread=0.3)  # trained on a calmer, higher regime
    halted = PaperRunner(tmp_path / "calm", policy, broker(trading), fetch=lambda now: bars, say=said.append,
                         drift=shifted)  # fmt: skip
    with pytest.raises(HaltError) as halt:
        halted.step(NOW + timedelta(hours=1))
    message = str(halt.value)
    assert message.startswith("feature drift: ") and "paper.drift_halt is 50%" in message and "\n" not in message
    assert len(trading.orders) == 2 and trading.cash < 100_000  # no new order, and the positions are kept
    state = PaperState.load(tmp_path / "calm" / "paper" / "state.json", HASH)
    assert state.halted == message and state.last_bar == "2024-03-05T14:00:00"
    journal = [json.loads(line) for line in (tmp_path / "calm" / "paper" / "orders.log").read_text().splitlines()]
    assert journal[-1]["event"] == "halt" and journal[-1]["reason"] == message
    ignoring = PaperRunner(tmp_path / "calm", policy, broker(trading), fetch=lambda now: bars, say=said.append,
                           drift=shifted, ignore_drift=True)  # fmt: skip
    ignoring.step(NOW + timedelta(hours=1))
    assert said[-2].startswith("warning: feature drift: ") and said[-2].endswith("trading on (--ignore-drift)")
    assert said[-1].startswith("bar 2024-03-05 15:00 UTC: equity")  # the halted bar, processed this time
    off = replace(policy, config=replace(policy.config, paper=replace(policy.config.paper, drift_halt=0.0)))
    assert PaperRunner(tmp_path / "off", off, broker(trading), drift=shifted).drift is None  # 0: no check


def test_market_closed_and_loop(tmp_path, bars, trading) -> None:
    policy = make_policy(bars, [0.1, 0.1])
    policy.config = replace(policy.config, paper=replace(policy.config.paper, market_hours_only=True))
    trading.is_open = False
    run = runner(tmp_path, policy, trading, bars)
    assert run.step(NOW).startswith("market closed; next open") and not trading.orders
    trading.is_open = True
    run.step = lambda now=None, _step=run.step: _step(NOW)  # type: ignore[method-assign]
    run.loop(0.0, sleep=lambda s: None, steps=2)
    assert len(trading.orders) == 2 and "already processed" in run.said[-1]


def test_live_is_refused_without_both_switches(tmp_path) -> None:
    with pytest.raises(PloutosError, match="needs both --live and PLOUTOS_LIVE_CONFIRM=yes"):
        risk.check_live(True, {})
    risk.check_live(True, {"PLOUTOS_LIVE_CONFIRM": "yes"})
    risk.check_live(False, {})
    proc = subprocess.run(
        [sys.executable, "-m", "ploutos", "paper", "--run", str(tmp_path), "--live"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "live trading refused" in proc.stderr


# -- features: the incremental path equals the batch path ------------------------------------------


def test_features_of_a_prefix_equal_the_batch_features(bars) -> None:
    policy = make_policy(bars, [0.0, 0.0])
    rng = np.random.default_rng(0)
    stats = NormStats("zscore", rng.normal(size=len(policy.names)), rng.uniform(0.5, 2, len(policy.names)), ())
    batch = transform(observation_arrays(bars, policy.config), stats, 5.0)
    times = bars["timestamp"].unique().sort()
    for cut in (260, 300, len(times) - 1):
        prefix = bars.filter(pl.col("timestamp") < times[cut])
        live = transform(observation_arrays(prefix, policy.config), stats, 5.0)
        n = len(live.timestamps)
        assert n == cut and np.array_equal(live.timestamps, batch.timestamps[:n])
        np.testing.assert_array_equal(live.values, batch.values[:n])
        np.testing.assert_array_equal(live.valid, batch.valid[:n])
        assert live.valid[-1].all()


# -- a trained run ------------------------------------------------------------------------------


def test_dry_run_agrees_with_the_backtest(trained_run: Path) -> None:
    from ploutos.paper.replay import agreement, dry_run, write_replay
    from ploutos.pipeline.policy import load_policy

    wide = ["paper.max_weight=1", "paper.max_daily_turnover=1000", "paper.drawdown_halt=1"]
    policy = load_policy(trained_run, wide)
    assert (policy.fold, policy.members) == (0, [0, 1])
    replay = dry_run(policy)
    check = agreement(policy, replay)
    print(check.line())
    assert replay.limited_steps == 0 and replay.costs > 0
    assert check.ok and check.difference <= 1e-9 * check.backtest  # one simulator: the same path
    orders, equity = write_replay(replay, trained_run)
    curve = pl.read_csv(equity)
    assert curve.height == len(replay.equity) == policy.test_rows[1] - policy.test_rows[0] + 1
    assert curve["equity"][0] == policy.config.env.initial_cash
    assert pl.read_csv(orders).height == replay.orders.height > 0

    tight = load_policy(trained_run, ["paper.max_weight=0.1", "paper.max_daily_turnover=0.05"])
    limited = dry_run(tight)
    assert limited.limited_steps > 0 and "risk limits changed the orders" in agreement(tight, limited).line()
    assert float(np.abs(limited.orders["notional"]).sum()) < float(np.abs(replay.orders["notional"]).sum())


def test_once_end_to_end_and_keys_never_leak(trained_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    subprocess.run(["cp", "-r", str(trained_run), str(run_dir)], check=True)
    with FakeAlpaca(api_key=KEY, page_size=10_000) as data, FakeTrading(api_key=KEY, prices={"SPY": 150.0}) as trading:
        trading.reject_next = 1  # a rejection message goes into the state and the output
        args = [
            sys.executable,
            "-m",
            "ploutos",
            "paper",
            "--run",
            str(run_dir),
            "--once",
            "--set",
            "data.source=alpaca",
            "--set",
            f"data.alpaca_url={data.url}",
            "--set",
            "data.tickers=[SPY]",
            "--set",
            f"paper.trading_url={trading.url}",
            "--set",
            "paper.market_hours_only=false",
            "--set",
            "data.retry_backoff_s=0.01",
        ]
        # a EURUSD model traded as SPY: its features are far from its training window's, the drift check halts
        halted = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert not trading.order_posts()
        args.append("--ignore-drift")
        first = subprocess.run(args, capture_output=True, text=True, timeout=120)
        trading.reject_next = 0
        unreachable = ["--set", "paper.trading_url=http://127.0.0.1:9", "--set", "paper.market_hours_only=true"]
        bad = subprocess.run([*args, *unreachable], capture_output=True, text=True, timeout=120)
    assert halted.returncode == 2 and halted.stderr.count("\n") == 1, halted.stderr
    assert halted.stderr.startswith("ploutos: error: feature drift: ") and "paper.drift_halt is 50%" in halted.stderr
    assert first.returncode == 0, first.stderr
    assert "policy: fold 0, member(s) 0, 1" in first.stdout and "rejected" in first.stdout
    assert "warning: feature drift: " in first.stdout and "trading on (--ignore-drift)" in first.stdout
    assert data.bar_requests() and trading.matching(lambda r: r.path == "/v2/account")
    assert bad.returncode == 2 and "gave up" in bad.stderr  # an unreachable trading API: one line, no key
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("ploutos: error: "), bad.stderr
    state_text = (run_dir / "paper" / "state.json").read_text()
    state = json.loads(state_text)
    assert state["last_bar"] and len(state["orders"]) == 1
    (order,) = state["orders"].values()
    assert order["status"] == "rejected" and order["ticker"] == "SPY"
    journal = (run_dir / "paper" / "orders.log").read_text()
    events = [json.loads(line)["event"] for line in journal.splitlines()]
    assert events[0] == "halt" and "drift_ignored" in events
    everything = [state_text, journal, first.stdout, first.stderr, bad.stdout, bad.stderr, halted.stdout, halted.stderr]
    for secret in (KEY, SECRET):
        assert not any(secret in text for text in everything)


# -- where the keys may go: the live guard covers every URL ----------------------------------------


def run_folder(tmp_path: Path, *sets: str) -> Path:
    """A run folder holding only ``config.yaml`` (as training writes it, hash line included)."""
    run = tmp_path / "run"
    RunLayout(run).prepare(load(None, list(sets)))
    return run


@pytest.mark.parametrize(
    ("key", "url", "live", "refused"),
    [
        ("paper.trading_url", "https://paper-api.alpaca.markets", False, None),
        ("paper.trading_url", "http://127.0.0.1:8080", False, None),
        ("paper.trading_url", "http://[::1]:8080", False, None),
        ("paper.trading_url", "http://localhost:8080/", False, None),
        ("paper.trading_url", "https://api.alpaca.markets", True, None),
        ("paper.trading_url", "https://api.alpaca.markets", False, "not the paper host"),
        ("paper.trading_url", "https://paper-api.alpaca.markets.example.com", False, "not the paper host"),
        ("paper.trading_url", "https://paper-api.alpaca.markets@example.com", False, "not the paper host"),
        ("paper.trading_url", "http://paper-api.alpaca.markets", False, "plain http:// is allowed only"),
        ("paper.trading_url", "http://api.alpaca.markets", True, "plain http:// is allowed only"),
        ("paper.trading_url", "paper-api.alpaca.markets", False, "not an http(s) URL"),
        ("paper.trading_url", "ftp://127.0.0.1", False, "not an http(s) URL"),
        ("paper.trading_url", "https://paper-api.alpaca.markets:99999", False, "not a URL"),
        ("data.alpaca_url", "https://data.alpaca.markets", False, None),
        ("data.alpaca_url", "http://127.0.0.1:9", False, None),
        ("data.alpaca_url", "http://data.example.com", False, "plain http:// is allowed only"),
    ],
)
def test_urls_the_keys_may_go_to(key, url, live, refused) -> None:
    if refused is None:
        risk.check_url(key, url, live=live, trading=key.startswith("paper."))
        return
    with pytest.raises(PloutosError) as err:
        risk.check_url(key, url, live=live, trading=key.startswith("paper."))
    assert f"{key}={url}" in str(err.value) and refused in str(err.value) and "\n" not in str(err.value)


def test_a_live_host_is_refused_before_keys_are_read_or_a_connection_made(tmp_path, monkeypatch) -> None:
    run = run_folder(tmp_path)

    def reached(*args, **kwargs):
        raise AssertionError("reached")

    monkeypatch.setattr(command, "api_keys", reached)
    monkeypatch.setattr(command, "load_policy", reached)
    live_host = ["paper.trading_url=https://api.alpaca.markets"]
    with pytest.raises(PloutosError, match=r"paper.trading_url=https://api.alpaca.markets: not the paper host"):
        command.cli_paper(run, live_host, loop=False, dry=False, live=False)
    with pytest.raises(PloutosError, match="data.alpaca_url=http://data.example.com: plain http://"):
        command.cli_paper(run, ["data.alpaca_url=http://data.example.com"], loop=False, dry=False, live=False)
    with pytest.raises(PloutosError, match="needs both --live and PLOUTOS_LIVE_CONFIRM=yes"):
        command.cli_paper(run, live_host, loop=False, dry=False, live=True)
    monkeypatch.setenv("PLOUTOS_LIVE_CONFIRM", "yes")
    with pytest.raises(AssertionError, match="reached"):  # --live and the confirmation: past the guard
        command.cli_paper(run, live_host, loop=False, dry=False, live=True)
    with pytest.raises(PloutosError, match="plain http://"):  # even live, keys never go over plain http
        command.cli_paper(run, ["paper.trading_url=http://example.com"], loop=False, dry=False, live=True)
    with pytest.raises(PloutosError, match="not the paper host"):  # the broker checks again
        AlpacaBroker(KEY, SECRET, url="https://api.alpaca.markets")


# -- the run's config: edited files refused, --set errors named --------------------------------------


def test_an_edited_run_config_is_refused_and_set_errors_name_the_set(tmp_path) -> None:
    run = run_folder(tmp_path)
    path = run / "config.yaml"
    original = path.read_text()
    recorded = RunLayout(run).recorded_hash()
    assert run_config(run, ["paper.trading_url=http://127.0.0.1:1"]).config.paper.trading_url == "http://127.0.0.1:1"
    path.write_text(original.replace("trading_url: null", "trading_url: https://api.alpaca.markets"))
    with pytest.raises(ConfigError) as err:
        run_config(run)
    message = str(err.value)
    assert message.startswith(f"{path}: edited after training") and recorded in message
    assert message.count("hashes to") == 1 and len(message.split(recorded)) == 2  # both hashes, once each
    path.write_text(original)
    with pytest.raises(ConfigError, match=r"^--set data.source=csv: data.csv_path: source csv needs csv_path"):
        run_config(run, ["paper.max_weight=0.5", "data.source=csv"])
    with pytest.raises(ConfigError, match=r"^--set ppo.algo=sac: paper trading only overrides"):
        run_config(run, ["ppo.algo=sac"])
    path.write_text(dump(load(None)))  # no hash line at all
    with pytest.raises(ConfigError, match="no '# config hash:' line"):
        run_config(run)


# -- malformed broker replies: one line, and an order with an unknown outcome is journaled ------------


def journal(tmp_path: Path) -> list[dict]:
    path = tmp_path / "paper" / "orders.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def is_account(r) -> bool:
    return r.path == "/v2/account"


@pytest.mark.parametrize(
    "body",
    [
        "<html>502 Bad Gateway</html>",
        "",
        [1, 2],
        {"id": "x"},
        {**FakeTrading(api_key=KEY)._account(), "equity": SECRET},
        {**FakeTrading(api_key=KEY)._account(), "equity": "NaN"},
    ],
    ids=["html", "empty", "list", "missing-fields", "secret-in-a-field", "nan"],
)
def test_a_malformed_account_reply_is_one_line_and_writes_nothing(tmp_path, bars, trading, body) -> None:
    trading.garble([body], when=is_account)
    run = runner(tmp_path, make_policy(bars, [0.2, 0.0]), trading, bars)
    with pytest.raises(BrokerError) as err:
        run.step(NOW)
    message = str(err.value)
    assert message.startswith("alpaca account: the reply is not what Alpaca sends") and "\n" not in message
    assert not err.value.transient and SECRET not in message and KEY not in message
    assert len(trading.matching(is_account)) == 1  # not retried
    assert not (tmp_path / "paper").exists() and not trading.order_posts()


def test_malformed_positions_and_clock_replies_are_one_line(tmp_path, bars, trading) -> None:
    trading.positions = {"SPY": 1.0}
    trading.garble([{"not": "a list"}], when=lambda r: r.path == "/v2/positions")
    with pytest.raises(BrokerError, match="^alpaca positions: the reply is not what Alpaca sends"):
        broker(trading).positions()
    trading.garble([{"is_open": "maybe"}], when=lambda r: r.path == "/v2/clock")
    with pytest.raises(BrokerError, match="^alpaca clock: the reply is not what Alpaca sends"):
        broker(trading).clock()


def is_post(r) -> bool:
    return r.method == "POST" and r.path == "/v2/orders"


def is_lookup(r) -> bool:
    return r.path == "/v2/orders:by_client_order_id"


@pytest.mark.parametrize("lookup", ["found", "not found", "also malformed"])
def test_an_order_with_an_unusable_reply_is_journaled_before_the_error_and_never_resent(
    tmp_path, bars, trading, lookup
) -> None:
    trading.garble(["<html>oops</html>"], when=is_post, route=lookup == "found")  # accepted, or not
    if lookup == "also malformed":
        trading.garble([[]], when=is_lookup)
    first = runner(tmp_path, make_policy(bars, [0.2, -0.1]), trading, bars)
    with pytest.raises(OrderUnknown) as err:
        first.step(NOW)
    message = str(err.value)
    assert message.startswith(f"order {coid('SPY')}: the reply to the order was unusable (not JSON)")
    assert "\n" not in message and not err.value.transient and SECRET not in message
    recorded = saved(tmp_path).orders[coid("SPY")]
    status = "filled" if lookup == "found" else "unknown"
    assert recorded["status"] == status and recorded["bar"] == "2024-03-05T14:00:00"
    assert [(e["event"], e["client_order_id"], e["status"]) for e in journal(tmp_path)] == [
        ("order", coid("SPY"), status)
    ]
    assert coid("QQQ") not in trading.orders  # the rebalance stopped there
    second = runner(tmp_path, make_policy(bars, [0.2, -0.1]), trading, bars)  # a restart on the same bar
    second.step(NOW)
    assert len(trading.order_posts()) == 2  # SPY once (never resent), QQQ once
    assert list(trading.orders) == ([coid("SPY")] if lookup == "found" else []) + [coid("QQQ")]
    after = saved(tmp_path).orders[coid("SPY")]["status"]
    assert after == ("filled" if lookup == "found" else "not_found")  # asked again: never accepted
    assert saved(tmp_path).last_bar == "2024-03-05T14:00:00"


def test_a_duplicate_that_cannot_be_found_is_journaled_as_unknown(tmp_path, bars, trading) -> None:
    trading.orders[coid("SPY")] = {"status": "filled"}  # the server says it has it ...
    trading.fail([404], when=is_lookup)  # ... but cannot find it
    run = runner(tmp_path, make_policy(bars, [0.2, 0.0]), trading, bars)
    with pytest.raises(OrderUnknown, match="already has it, but cannot find it"):
        run.step(NOW)
    assert saved(tmp_path).orders[coid("SPY")]["status"] == "unknown"


# -- positions it did not open ------------------------------------------------------------------------


def test_a_first_run_refuses_positions_it_did_not_open_unless_adopting(tmp_path, bars, trading) -> None:
    trading.positions = {"SPY": 400.0, "AAPL": 10.0}
    trading.prices["AAPL"] = 100.0
    with pytest.raises(PositionsError) as err:
        runner(tmp_path, make_policy(bars, [0.2, 0.0]), trading, bars).step(NOW)
    message = str(err.value)
    assert "SPY 400" in message and "--adopt-positions" in message and "AAPL" not in message  # AAPL: not traded
    assert not trading.order_posts() and not (tmp_path / "paper").exists()
    run = runner(tmp_path, make_policy(bars, [0.2, 0.0]), trading, bars)
    run.adopt = True
    run.step(NOW)
    want = qty_for(0.2, trading.prices["SPY"], trading.equity())
    assert trading.positions["SPY"] == pytest.approx(want, abs=1)  # sold down from 400 as its own
    assert journal(tmp_path)[0]["event"] == "adopt" and journal(tmp_path)[0]["positions"] == {"SPY": 400.0}
    later = runner(tmp_path, make_policy(bars, [0.2, 0.0]), trading, bars)  # no longer a first run
    later.step(NOW + timedelta(hours=1))
    assert build_parser().parse_args(["paper", "--run", "r", "--adopt-positions"]).adopt_positions


# -- state and task files of the wrong shape ---------------------------------------------------------

GOOD_ORDER = {"ticker": "SPY", "qty": 1.0, "status": "new"}


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (json.dumps({"config_hash": HASH, "orders": []}), ": orders: expected an object of orders"),
        (
            json.dumps({"config_hash": HASH, "peak_equity": "x"}),
            ': peak_equity: expected null or a finite number >= 0, got string "x"',
        ),
        (json.dumps({"config_hash": HASH, "peak_equity": float("nan")}), ": peak_equity: "),
        ("not json {", ": the file: not JSON at line 1"),
        ("[]", ": the file: expected a JSON object, got array"),
        (json.dumps({"peak_equity": 1.0}), ": config_hash: missing"),
        (json.dumps({"config_hash": HASH, "bogus": 1}), ": bogus: unknown field"),
        (json.dumps({"config_hash": HASH, "version": 2}), ": version: "),
        (json.dumps({"config_hash": HASH, "last_bar": "yesterday"}), ": last_bar: "),
        (json.dumps({"config_hash": HASH, "positions": {"SPY": None}}), ": positions.SPY: "),
        (json.dumps({"config_hash": HASH, "orders": {"c1": []}}), ": orders.c1: expected an object"),
        (json.dumps({"config_hash": HASH, "orders": {"c1": {**GOOD_ORDER, "qty": "1"}}}), ": orders.c1.qty: "),
        (
            json.dumps({"config_hash": HASH, "orders": {"c1": {"qty": 1, "status": "new"}}}),
            ": orders.c1.ticker: missing",
        ),
        ("\udcff", ": the file: not UTF-8 text"),
    ],
)
def test_a_damaged_state_file_is_refused_naming_the_field_and_never_overwritten(
    tmp_path, bars, trading, text, field
) -> None:
    path = tmp_path / "paper" / "state.json"
    path.parent.mkdir()
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    before = path.read_bytes()
    with pytest.raises(StateError) as err:
        runner(tmp_path, make_policy(bars, [0.2, 0.0]), trading, bars).step(NOW)
    message = str(err.value)
    assert message.startswith(f"{path}{field}") and "\n" not in message
    assert "the state file is damaged" in message and "--adopt-positions" in message
    assert path.read_bytes() == before and not trading.requests


def test_a_state_file_that_is_fine_loads(tmp_path) -> None:
    state = PaperState(HASH, last_bar="2024-03-05T14:00:00", peak_equity=1.0, day="2024-03-05")
    state.orders["c1"] = {
        **GOOD_ORDER,
        "filled_qty": 0.0,
        "filled_price": None,
        "reason": "",
        "bar": "2024-03-05T14:00:00",
    }
    state.positions["SPY"] = -3.0
    state.save(tmp_path / "state.json")
    assert PaperState.load(tmp_path / "state.json", HASH) == state


def write_task(path: Path, *, drop: str = "", **fields: np.ndarray) -> Path:
    """A task file with what paper trading reads; ``drop`` leaves a dataset (or group) out."""
    data = {
        "tickers": np.array([b"EURUSD"]),
        "normalization/names": np.array([b"a", b"b"]),
        "normalization/center": fields.get("center", np.zeros(2)),
        "normalization/scale": fields.get("scale", np.ones(2)),
    }
    with h5py.File(path, "w") as h5:
        for name, value in data.items():
            if not drop or not (name == drop or name.startswith(drop + "/")):
                h5.create_dataset(name, data=value)
        fold = h5.create_group("fold")
        fold.attrs["test_rows"] = fields.get("test_rows", np.array([10, 20]))
        fold.attrs["test_start"] = "2024-01-02T00:00:00Z"
    return path


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("no normalization group", "normalization/names: "),
        ("no scale", "normalization/scale: "),
        ("short center", "normalization/center: expected 2 numbers"),
        ("zero scale", "normalization/scale: a scale <= 0"),
        ("bad test rows", "fold.attrs.test_rows: "),
        ("truncated", "the file: "),
        ("text", "the file: "),
    ],
)
def test_a_damaged_task_file_is_refused_naming_the_field(tmp_path, kind, field) -> None:
    path = tmp_path / "fold0_member0.h5"
    read_task(write_task(path))  # the good one reads
    if kind == "no normalization group":
        write_task(path, drop="normalization")
    elif kind == "no scale":
        write_task(path, drop="normalization/scale")
    elif kind == "short center":
        write_task(path, center=np.zeros(1))
    elif kind == "zero scale":
        write_task(path, scale=np.zeros(2))
    elif kind == "bad test rows":
        write_task(path, test_rows=np.array([20, 10]))
    elif kind == "truncated":
        size = path.stat().st_size
        with open(path, "r+b") as handle:
            handle.truncate(size // 3)
    else:
        path.write_text("not hdf5")
    with pytest.raises(PloutosError) as err:
        read_task(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {field}") and "damaged" in message and "\n" not in message


# -- --loop through outages ----------------------------------------------------------------------------


def fixed_now(run: PaperRunner) -> PaperRunner:
    run.step = lambda now=None, _step=run.step: _step(NOW)  # type: ignore[method-assign]
    return run


def test_the_loop_waits_out_a_broker_outage_with_capped_backoff(tmp_path, bars, trading, capsys) -> None:
    trading.fail([503] * 2 * 6, when=is_account)  # 6 steps of 2 attempts each
    run = fixed_now(runner(tmp_path, make_policy(bars, [0.2, 0.0]), trading, bars, attempts=2))
    waits: list[float] = []
    run.loop(2, sleep=waits.append, steps=9)
    assert outage_cap(2) == 16 and outage_cap(600) == 900 and outage_cap(3600) == 3600
    assert waits == [2, 4, 8, 16, 16, 16, 2, 2]
    outage = [line for line in run.said if "outage" in line]
    assert len(outage) == 2 and outage[0].startswith("outage: alpaca account: HTTP 503, gave up after 2")
    assert outage[1].startswith("outage over after") and "6 failed step(s)" in outage[1]
    assert coid("SPY") in trading.orders and len(trading.order_posts()) == 1
    assert [e["event"] for e in journal(tmp_path)] == ["outage_start", "order", "outage_end"]
    assert capsys.readouterr().err == ""  # not one line per attempt


def test_the_loop_waits_out_a_data_outage(tmp_path, bars, trading, capsys) -> None:
    failures = iter([True, True])

    def fetch(now: datetime) -> pl.DataFrame:
        def call() -> pl.DataFrame:
            if next(failures, False):
                raise Transient("HTTP 503")
            return bars

        return retry_call(call, attempts=2, backoff_s=0.0, what="alpaca SPY", sleep=lambda s: None)

    run = fixed_now(runner(tmp_path, make_policy(bars, [0.2, 0.0]), trading, bars))
    run.fetch = fetch
    waits: list[float] = []
    run.loop(1, sleep=waits.append, steps=3)
    assert waits == [1, 1] and coid("SPY") in trading.orders
    assert [line.split(":")[0] for line in run.said if "outage" in line] == [
        "outage",
        "outage over after 0s and 1 failed step(s)",
    ]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("what", ["bad keys", "bad data keys", "halt", "malformed"])
def test_the_loop_stops_at_errors_waiting_cannot_cure(tmp_path, bars, trading, what) -> None:
    run = fixed_now(runner(tmp_path, make_policy(bars, [0.2, 0.0]), trading, bars))
    if what == "bad keys":
        run.broker = AlpacaBroker("PKWRONGKEY000", SECRET, url=trading.url, attempts=3, backoff_s=0.01)
        expected: type[PloutosError] = BrokerError
    elif what == "bad data keys":

        def fetch(now: datetime) -> pl.DataFrame:
            raise SourceError("alpaca SPY: HTTP 401: unauthorized; check ALPACA_API_KEY and ALPACA_SECRET_KEY")

        run.fetch, expected = fetch, SourceError
    elif what == "halt":
        PaperState(HASH, peak_equity=200_000.0, initial_equity=200_000.0).save(tmp_path / "paper" / "state.json")
        run = fixed_now(runner(tmp_path, make_policy(bars, [0.2, 0.0]), trading, bars))
        expected = HaltError
    else:
        trading.garble(["nope"], when=is_account)
        expected = BrokerError
    waits: list[float] = []
    with pytest.raises(expected) as err:
        run.loop(1, sleep=waits.append, steps=5)
    assert not transient(err.value) and waits == [] and not any("outage" in line for line in run.said)


def test_transient_errors_are_told_apart() -> None:
    assert transient(BrokerError("x", transient=True)) and not transient(BrokerError("alpaca account: HTTP 401"))
    assert transient(SourceError("alpaca SPY: HTTP 503, gave up after 5 attempt(s); try again later"))
    assert not transient(SourceError("alpaca: environment variable ALPACA_API_KEY is not set"))
    assert not transient(HaltError("drawdown halt")) and not transient(ConfigError("x"))


def test_ctrl_c_stops_the_loop(tmp_path, bars, trading) -> None:
    run = fixed_now(runner(tmp_path, make_policy(bars, [0.2, 0.0]), trading, bars))

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.loop(1, sleep=interrupt)
    assert saved(tmp_path).last_bar == "2024-03-05T14:00:00"  # what was done is recorded


def test_loop_end_to_end_rides_out_an_outage_and_ctrl_c_exits_130(trained_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    subprocess.run(["cp", "-r", str(trained_run), str(run_dir)], check=True)
    with FakeAlpaca(api_key=KEY, page_size=10_000) as data, FakeTrading(api_key=KEY, prices={"SPY": 150.0}) as trading:
        trading.fail([503, 503], when=is_account)  # two steps fail: an outage of about 3 s
        sets = [
            "data.source=alpaca",
            f"data.alpaca_url={data.url}",
            "data.tickers=[SPY]",
            f"paper.trading_url={trading.url}",
            "paper.market_hours_only=false",
            "paper.poll_seconds=1",
            "data.max_retries=1",
        ]
        args = [sys.executable, "-m", "ploutos", "paper", "--run", str(run_dir), "--loop", "--ignore-drift"]
        proc = subprocess.Popen(
            [*args, *(f"--set={s}" for s in sets)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        watchdog = threading.Timer(180, proc.kill)
        watchdog.start()
        lines = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("outage over"):
                    break
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            watchdog.cancel()
    text = "".join(lines) + out
    assert proc.returncode == 130 and err == "ploutos: interrupted\n", (proc.returncode, err, text)
    assert text.count("outage: alpaca account: HTTP 503") == 1 and text.count("outage over") == 1, text
    assert len(trading.order_posts()) == 1
    for secret in (KEY, SECRET):
        assert secret not in text + err + (run_dir / "paper" / "orders.log").read_text()


def test_live_orders_obey_the_band_the_change_limit_and_decision_spacing(tmp_path, bars, trading) -> None:
    rules = ("env.rebalance_band=0.1", "env.max_weight_change=0.15", "env.decide_every=2")
    run = runner(tmp_path, make_policy(bars, [0.05, -0.2], rules=rules), trading, bars)
    run.step(NOW)  # a decision: SPY's 0.05 is inside the band; QQQ's -0.2 is cut to -0.15
    assert list(trading.orders) == [coid("QQQ")]
    assert float(trading.orders[coid("QQQ")]["qty"]) == qty_for(0.15, trading.prices["QQQ"])
    run.step(NOW + timedelta(hours=1))  # not a decision: nothing sent, whatever the policy wants
    assert len(trading.order_posts()) == 1 and "holding (next decision in 1 bars)" in run.said[-1]
    assert saved(tmp_path).bars_seen == 2
