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
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fakes.alpaca import FakeAlpaca, bar_times, bar_values
from fakes.alpaca_trading import FakeTrading
from fakes.server import DROP
from ploutos.config import load
from ploutos.data.bars import BAR_SCHEMA
from ploutos.errors import PloutosError
from ploutos.features.normalize import NormStats, transform
from ploutos.features.pipeline import observation_arrays
from ploutos.paper import risk
from ploutos.paper.broker import AlpacaBroker, BrokerError, client_order_id
from ploutos.paper.runner import PaperRunner, Policy
from ploutos.paper.state import PaperState

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


def make_policy(bars: pl.DataFrame, weights: list[float], **paper: object) -> Policy:
    config = load(None, ["data.tickers=[SPY, QQQ]", "paper.market_hours_only=false"])
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
    message = run.step(NOW + timedelta(hours=2))
    assert message.startswith("drawdown halt") and "no new orders" in message and len(trading.orders) == 2
    assert saved(tmp_path).halted == message


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


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("paper_run")
    sets = [f"--set=data.store={root / 'data'}", f"--set=results_dir={root / 'results'}"]
    subprocess.run(
        [sys.executable, "-m", "ploutos", "data", "build", "--no-progress", *sets],
        check=True,
        cwd=root,
        capture_output=True,
        timeout=120,
    )
    train = ["--set=ppo.total_timesteps=512", "--set=walkforward.max_folds=1"]
    subprocess.run(
        [sys.executable, "-m", "ploutos", "run", "--no-progress", *sets, *train],
        check=True,
        cwd=root,
        capture_output=True,
        timeout=300,
    )
    return root / "results" / "quickstart"


def test_dry_run_agrees_with_the_backtest(trained_run: Path) -> None:
    from ploutos.paper.replay import agreement, dry_run, write_replay
    from ploutos.paper.runner import load_policy

    wide = ["paper.max_weight=1", "paper.max_daily_turnover=1000", "paper.drawdown_halt=1"]
    policy = load_policy(trained_run, wide)
    assert (policy.fold, policy.members) == (0, [0, 1])
    replay = dry_run(policy)
    check = agreement(policy, replay)
    print(check.line())
    assert check.ok and check.backtest_costs > 0
    assert check.difference <= 0.05 * check.backtest_costs  # in practice far inside the tolerance
    orders, equity = write_replay(replay, trained_run)
    curve = pl.read_csv(equity)
    assert curve.height == len(replay.equity) == policy.test_rows[1] - policy.test_rows[0] + 1
    assert curve["equity"][0] == policy.config.env.initial_cash
    assert pl.read_csv(orders).height == replay.orders.height > 0


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
        first = subprocess.run(args, capture_output=True, text=True, timeout=120)
        trading.reject_next = 0
        unreachable = ["--set", "paper.trading_url=http://127.0.0.1:9", "--set", "paper.market_hours_only=true"]
        bad = subprocess.run([*args, *unreachable], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "policy: fold 0, member(s) 0, 1" in first.stdout and "rejected" in first.stdout
    assert data.bar_requests() and trading.matching(lambda r: r.path == "/v2/account")
    assert bad.returncode == 2 and "gave up" in bad.stderr  # an unreachable trading API: one line, no key
    state_text = (run_dir / "paper" / "state.json").read_text()
    state = json.loads(state_text)
    assert state["last_bar"] and len(state["orders"]) == 1
    (order,) = state["orders"].values()
    assert order["status"] == "rejected" and order["ticker"] == "SPY"
    journal = (run_dir / "paper" / "orders.log").read_text()
    everything = [state_text, journal, first.stdout, first.stderr, bad.stdout, bad.stderr]
    for secret in (KEY, SECRET):
        assert not any(secret in text for text in everything)
