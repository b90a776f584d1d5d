"""Out-of-sample evaluation: paths, fills, trades, benchmarks, costs, ensembles."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ploutos.analytics.evaluation import BENCHMARKS, Evaluation
from ploutos.analytics.metrics import compute_metrics
from ploutos.features.arrays import FeatureArrays
from ploutos.train.evaluate import (
    HOLD,
    Ensemble,
    buy_and_hold,
    equal_weight,
    evaluate,
    run_episode,
    run_policy,
)
from ploutos.train.folds import Fold
from test_env_trading import FREE as FRICTIONLESS

BARS_PER_YEAR = 252 * 7
FREE = replace(FRICTIONLESS, lookback=8)
ROWS = slice(50, 250)


def wavy_arrays(n_time: int = 300, n_asset: int = 3, n_feat: int = 2) -> FeatureArrays:
    """Deterministic prices: a slow wave per asset, a drift that differs by asset, and overnight-like gaps."""
    t = np.arange(n_time, dtype=float)[:, None]
    a = np.arange(n_asset, dtype=float)[None, :]
    close = 100.0 * np.exp(0.05 * np.sin(t / 9.0 + a) + 0.0005 * (a - 1.0) * t)
    open_ = np.empty_like(close)
    open_[0] = close[0]
    open_[1:] = close[:-1] * (1.0 + 0.002 * np.cos(t[1:] * 1.3 + a))
    high = np.maximum(open_, close) * 1.001
    low = np.minimum(open_, close) * 0.999
    volume = np.full((n_time, n_asset), 1e6)
    present = np.ones((n_time, n_asset), bool)
    return FeatureArrays(
        timestamps=np.datetime64("2024-01-02T14:00", "us") + np.arange(n_time) * np.timedelta64(1, "h"),
        tickers=tuple(f"A{i}" for i in range(n_asset)),
        names=tuple(f"f{i}" for i in range(n_feat)),
        values=np.arange(n_time * n_asset * n_feat, dtype=np.float32).reshape(n_time, n_asset, n_feat) / 1000,
        valid=present.copy(),
        present=present,
        prices=np.stack([open_, high, low, close, volume], axis=-1),
    )


def falling_arrays(n_time: int = 120) -> FeatureArrays:
    """One asset that loses 1% a bar: a long position ends far below any bankruptcy floor."""
    close = 100.0 * 0.99 ** np.arange(n_time, dtype=float)
    open_ = np.concatenate([[100.0], close[:-1]])
    arrays = wavy_arrays(n_time, 1)
    prices = arrays.prices.copy()
    prices[:, 0, 0], prices[:, 0, 1], prices[:, 0, 2], prices[:, 0, 3] = open_, open_, close, close
    return replace(arrays, prices=prices)


ARRAYS = wavy_arrays()
OPEN, CLOSE = ARRAYS.prices[..., 0], ARRAYS.prices[..., 3]


class Constant:
    """Always the same action; records what it was called with."""

    def __init__(self, action) -> None:
        self.action = np.asarray(action)
        self.calls: list[tuple] = []

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        self.calls.append(
            (state, None if episode_start is None else bool(np.asarray(episode_start).all()), deterministic)
        )
        return self.action.copy(), state


class Counter:
    """A recurrent-style actor: its state counts the calls it has seen; the action is fixed."""

    def __init__(self, action, offset: int = 0) -> None:
        self.action = np.asarray(action)
        self.offset = offset
        self.seen: list = []

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        self.seen.append(state)
        count = self.offset if state is None else state
        return self.action.copy(), count + 1


class Schedule:
    """Discrete actions by step (counted in its state); hold everywhere else."""

    def __init__(self, n_asset: int, plan: dict[int, list[int]]) -> None:
        self.n_asset, self.plan = n_asset, plan

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        step = 0 if state is None else state
        action = np.array(self.plan.get(step, [HOLD] * self.n_asset), dtype=np.int64)
        return action, step + 1


def first_fill(rows: slice, lookback: int) -> int:
    return rows.start + lookback


def expected_constant_weight(w, rows: slice, lookback: int, cash: float, arrays: FeatureArrays = ARRAYS):
    """Zero-cost rebalancing to weights ``w`` at every open (units = w * equity_at_open / open), marked at closes."""
    open_, close = arrays.prices[..., 0], arrays.prices[..., 3]
    w = np.asarray(w, dtype=float)
    units = np.zeros(len(w))
    equity, held = [cash], [units.copy()]
    for r in range(first_fill(rows, lookback), rows.stop):
        eq_open = cash + units @ open_[r]
        target = w * eq_open / open_[r]
        cash = eq_open - target @ open_[r]
        units = target
        equity.append(cash + units @ close[r])
        held.append(units.copy())
    return np.array(equity), np.array(held)


# ------------------------------------------------------------------------------------------------
# paths, timing, lengths
# ------------------------------------------------------------------------------------------------


def test_lengths_and_timing_follow_the_rows():
    path = run_policy(Constant([0.2, 0.1, -0.1]), ARRAYS, FREE, ROWS, BARS_PER_YEAR)
    first_decision = ROWS.start + FREE.lookback - 1  # the first row with a full lookback
    n = ROWS.stop - 1 - first_decision  # one step per bar after it, to the last row of the window
    assert len(path.timestamps) == len(path.equity) == n + 1
    assert path.weights.shape == path.units.shape == (n + 1, 3)
    assert path.turnover.shape == path.costs.shape == (n,)
    assert path.fill_prices.shape == (n, 3)
    assert path.timestamps.dtype == np.dtype("datetime64[us]")
    assert path.timestamps[0] == ARRAYS.timestamps[first_decision]
    assert path.timestamps[1] == ARRAYS.timestamps[first_fill(ROWS, FREE.lookback)]
    assert path.timestamps[-1] == ARRAYS.timestamps[ROWS.stop - 1]
    np.testing.assert_array_equal(path.timestamps, ARRAYS.timestamps[first_decision : ROWS.stop])
    fills = np.arange(first_fill(ROWS, FREE.lookback), ROWS.stop)
    np.testing.assert_array_equal(path.fill_prices, OPEN[fills])


def test_fold_eval_rows_put_the_first_fill_on_the_first_test_bar():
    test = slice(180, 260)
    fold = Fold(0, slice(0, 170), test, *ARRAYS.timestamps[[0, 180, 180, 260]], embargo=10)
    path = run_policy(Constant([0.3, 0.3, 0.3]), ARRAYS, FREE, fold.eval_rows(FREE.lookback), BARS_PER_YEAR)
    assert path.timestamps[0] == ARRAYS.timestamps[test.start - 1]
    np.testing.assert_array_equal(path.timestamps[1:], ARRAYS.timestamps[test])
    np.testing.assert_array_equal(path.fill_prices[0], OPEN[test.start])


def test_all_cash_keeps_equity_constant():
    path = run_policy(Constant([0.0, 0.0, 0.0]), ARRAYS, FREE, ROWS, BARS_PER_YEAR)
    np.testing.assert_array_equal(path.equity, np.full(len(path.equity), FREE.initial_cash))
    np.testing.assert_array_equal(path.units, 0.0)
    np.testing.assert_array_equal(path.weights, 0.0)
    np.testing.assert_array_equal(path.turnover, 0.0)
    np.testing.assert_array_equal(path.costs, 0.0)
    assert all(len(column) == 0 for column in path.trades.values())


@pytest.mark.parametrize("w", [[0.5, -0.2, 0.25], [1.0, 0.0, 0.0], [0.0, 0.0, -0.6]])
def test_constant_weight_equity_is_filled_at_the_next_open_and_marked_at_closes(w):
    cash = 50_000.0
    cfg = replace(FREE, initial_cash=cash)
    path = run_policy(Constant(np.array(w, dtype=np.float32)), ARRAYS, cfg, ROWS, BARS_PER_YEAR)
    w32 = np.array(w, dtype=np.float32).astype(float)  # the actor's float32 weights, exactly
    equity, units = expected_constant_weight(w32, ROWS, cfg.lookback, cash)
    np.testing.assert_allclose(path.equity, equity, rtol=1e-12)
    np.testing.assert_allclose(path.units, units, rtol=1e-12, atol=1e-12)
    marks = np.arange(first_fill(ROWS, cfg.lookback), ROWS.stop)
    np.testing.assert_allclose(path.weights[1:], units[1:] * CLOSE[marks] / equity[1:, None], rtol=1e-10, atol=1e-14)
    assert path.turnover[0] == pytest.approx(np.abs(w32).sum(), rel=1e-12)  # from all cash


def test_weights_above_gross_one_are_scaled_down():
    path = run_policy(Constant([1.0, 1.0, -1.0]), ARRAYS, FREE, ROWS, BARS_PER_YEAR)
    equity, _ = expected_constant_weight([1 / 3, 1 / 3, -1 / 3], ROWS, FREE.lookback, FREE.initial_cash)
    np.testing.assert_allclose(path.equity, equity, rtol=1e-12)


def test_rows_without_a_start_are_the_same_as_rows_from_zero():
    a = run_policy(Constant([0.4, 0.3, 0.2]), ARRAYS, FREE, slice(None, 120), BARS_PER_YEAR)
    b = run_policy(Constant([0.4, 0.3, 0.2]), ARRAYS, FREE, slice(0, 120), BARS_PER_YEAR)
    np.testing.assert_array_equal(a.equity, b.equity)
    np.testing.assert_array_equal(a.fill_prices, b.fill_prices)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)


def test_policy_is_asked_deterministically_with_episode_start_only_first():
    actor = Constant([0.1, 0.1, 0.1])
    path = run_policy(actor, ARRAYS, FREE, ROWS, BARS_PER_YEAR)
    assert len(actor.calls) == len(path.turnover)
    assert [start for _, start, _ in actor.calls] == [True] + [False] * (len(actor.calls) - 1)
    assert all(det is True for *_, det in actor.calls)


# ------------------------------------------------------------------------------------------------
# trades
# ------------------------------------------------------------------------------------------------


def test_trades_are_exactly_the_unit_changes_at_the_fill_opens():
    cash = 30_000.0
    cfg = replace(FREE, action_mode="discrete", initial_cash=cash)
    plan = {0: [2, 1, 1], 5: [1, 0, 1], 12: [0, 1, 1], 20: [1, 1, 2]}
    path = run_policy(Schedule(3, plan), ARRAYS, cfg, ROWS, BARS_PER_YEAR)
    trades = path.trades
    fill0 = first_fill(ROWS, cfg.lookback)
    np.testing.assert_array_equal(trades["step"], [0, 5, 12, 20])
    np.testing.assert_array_equal(trades["asset"], [0, 1, 0, 2])
    steps, assets = np.array([0, 5, 12, 20]), np.array([0, 1, 0, 2])
    np.testing.assert_array_equal(trades["price"], OPEN[fill0 + steps, assets])
    np.testing.assert_array_equal(trades["timestamp"], ARRAYS.timestamps[fill0 + steps])
    assert trades["step"].dtype == trades["asset"].dtype == np.int64
    # step 0: a third of the cash into asset 0 (cash only, so equity at the open is the cash)
    assert trades["units"][0] == pytest.approx(cash / 3 / OPEN[fill0, 0], rel=1e-12)
    assert trades["units"][1] < 0  # sell from flat: a short of a third
    assert trades["units"][2] < 0 and trades["units"][3] > 0
    np.testing.assert_allclose(trades["notional"], trades["units"] * trades["price"], rtol=1e-15)
    # the units held are the running sum of the trades
    held = np.zeros(3)
    for step, asset, units in zip(trades["step"], trades["asset"], trades["units"], strict=True):
        held[asset] += units
        np.testing.assert_allclose(path.units[step + 1], held, rtol=1e-12)
    # between trades nothing moves
    np.testing.assert_array_equal(np.count_nonzero(path.turnover), 4)


# ------------------------------------------------------------------------------------------------
# benchmarks
# ------------------------------------------------------------------------------------------------


def test_buy_and_hold_trades_once_and_is_cash_plus_units_at_the_close():
    cash = 90_000.0
    cfg = replace(FREE, initial_cash=cash)
    path = buy_and_hold(ARRAYS, cfg, ROWS, BARS_PER_YEAR)
    fill0 = first_fill(ROWS, cfg.lookback)
    units = cash / 3 / OPEN[fill0]
    assert path.turnover[0] == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_array_equal(path.turnover[1:], 0.0)
    np.testing.assert_allclose(path.units[1:], np.broadcast_to(units, path.units[1:].shape), rtol=1e-12)
    cash_left = cash - units @ OPEN[fill0]
    assert cash_left == pytest.approx(0.0, abs=1e-6)
    marks = np.arange(fill0, ROWS.stop)
    np.testing.assert_allclose(path.equity[1:], cash_left + CLOSE[marks] @ units, rtol=1e-12)
    assert np.unique(path.trades["step"]).tolist() == [0]


def test_equal_weight_rebalances_to_one_over_a():
    path = equal_weight(ARRAYS, FREE, ROWS, BARS_PER_YEAR)
    # float32(1/3) * 3 is a little above 1, so the env scales the gross to exactly 1: weights 1/3 in float64
    equity, _ = expected_constant_weight(np.full(3, 1 / 3), ROWS, FREE.lookback, FREE.initial_cash)
    np.testing.assert_allclose(path.equity, equity, rtol=1e-12)
    assert (path.turnover[1:] > 0).all()  # prices move apart: every bar rebalances


def test_equal_weight_with_one_asset_is_buy_and_hold():
    one = wavy_arrays(200, 1)
    rows = slice(20, 200)
    hold = buy_and_hold(one, FREE, rows, BARS_PER_YEAR)
    equal = equal_weight(one, FREE, rows, BARS_PER_YEAR)
    np.testing.assert_allclose(equal.equity, hold.equity, rtol=1e-9)
    np.testing.assert_allclose(equal.turnover[1:], 0.0, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# costs and bankruptcy
# ------------------------------------------------------------------------------------------------


def test_costs_lower_equity_and_are_reported():
    w = np.array([0.4, -0.3, 0.2], dtype=np.float32)
    free = run_policy(Constant(w), ARRAYS, FREE, ROWS, BARS_PER_YEAR)
    cfg = replace(FREE, commission_bps=10.0)
    paid = run_policy(Constant(w), ARRAYS, cfg, ROWS, BARS_PER_YEAR)
    # first fill from all cash: the same trade in both, 10 bps of its notional paid from cash
    notional = np.abs(w.astype(float)).sum() * cfg.initial_cash
    assert paid.costs[0] == pytest.approx(1e-3 * notional, rel=1e-9)
    assert free.equity[1] - paid.equity[1] == pytest.approx(paid.costs[0], rel=1e-9)
    np.testing.assert_array_equal(free.costs, 0.0)
    assert (paid.costs[paid.turnover > 0] > 0).all()
    assert paid.equity[-1] < free.equity[-1]
    assert (paid.equity[1:] < free.equity[1:]).all()
    metrics = paid.metrics(BARS_PER_YEAR)
    assert metrics.cost_drag > 0 and free.metrics(BARS_PER_YEAR).cost_drag == 0


def test_evaluation_ignores_the_bankruptcy_rule():
    arrays = falling_arrays(120)
    cfg = replace(FREE, lookback=4, bankruptcy_equity=0.9)
    rows = slice(0, 120)
    path = run_policy(Constant([1.0]), arrays, cfg, rows, BARS_PER_YEAR)
    assert path.timestamps[-1] == arrays.timestamps[-1]
    assert len(path.equity) == 120 - cfg.lookback + 1
    assert path.equity.min() < 0.5 * cfg.initial_cash  # far below the floor, still running
    assert path.equity[-1] < 0.9 * cfg.initial_cash


def test_run_episode_hands_step_and_env_to_decide():
    seen = []

    def decide(step, observation, env):
        seen.append((step, env.timestamp))
        return np.zeros(3, dtype=np.float32)

    path = run_episode(decide, ARRAYS, FREE, ROWS, BARS_PER_YEAR)
    assert [s for s, _ in seen] == list(range(len(path.turnover)))
    np.testing.assert_array_equal([t for _, t in seen], path.timestamps[:-1])  # decided on the bar before the fill


# ------------------------------------------------------------------------------------------------
# ensembles
# ------------------------------------------------------------------------------------------------


def test_ensemble_mean_averages_members():
    members = [Constant([0.2, -0.4, 0.0]), Constant([0.6, 0.0, 0.3]), Constant([0.1, -0.2, 0.0])]
    action, state = Ensemble(members).predict(np.zeros(4, dtype=np.float32))
    np.testing.assert_allclose(action, [0.3, -0.2, 0.1], rtol=1e-6)
    assert action.dtype == np.float32
    assert state == [None, None, None]
    a = run_policy(Ensemble(members), ARRAYS, FREE, ROWS, BARS_PER_YEAR)
    b = run_policy(Constant(action), ARRAYS, FREE, ROWS, BARS_PER_YEAR)
    np.testing.assert_array_equal(a.equity, b.equity)


@pytest.mark.parametrize(
    ("choices", "expected"),
    [
        ([[0, 1, 2], [0, 2, 2], [1, 2, 0]], [0, 2, 2]),  # clear majorities
        ([[0, 2], [2, 0]], [HOLD, HOLD]),  # 1-1 ties hold
        ([[0, 2, 1]] * 2 + [[2, 0, 1]] * 2, [HOLD, HOLD, 1]),  # 2-2 ties hold
        ([[0], [1], [2]], [HOLD]),  # three-way tie
        ([[2, 2], [2, 0], [0, 0], [2, 0]], [2, 0]),  # 3-1
        ([[0, 2]], [0, 2]),  # one member decides
    ],
)
def test_ensemble_vote_is_a_per_asset_majority_and_ties_hold(choices, expected):
    members = [Constant(np.array(c, dtype=np.int64)) for c in choices]
    action, _ = Ensemble(members, combine="vote").predict(None)
    np.testing.assert_array_equal(action, expected)
    assert np.issubdtype(action.dtype, np.integer)


def test_ensemble_vote_drives_a_discrete_episode():
    cfg = replace(FREE, action_mode="discrete")
    members = [Constant([2, 0, 1]), Constant([2, 2, 0]), Constant([1, 0, 2])]
    path = run_policy(Ensemble(members, combine="vote"), ARRAYS, cfg, ROWS, BARS_PER_YEAR)
    fill0 = first_fill(ROWS, cfg.lookback)
    cash = cfg.initial_cash
    # buy A0, sell A1, A2 tied -> held at zero
    np.testing.assert_allclose(path.units[1], [cash / 3 / OPEN[fill0, 0], -cash / 3 / OPEN[fill0, 1], 0.0], rtol=1e-12)


def test_ensemble_carries_each_members_state():
    members = [Counter([0.1, 0.0, 0.0]), Counter([0.0, 0.1, 0.0], offset=100)]
    ensemble = Ensemble(members)
    path = run_policy(ensemble, ARRAYS, FREE, ROWS, BARS_PER_YEAR)
    n = len(path.turnover)
    assert members[0].seen == [None, *range(1, n)]
    assert members[1].seen == [None, *range(101, 100 + n)]
    _, state = ensemble.predict(None, [7, 9])
    assert state == [8, 10]
    with pytest.raises(ValueError):
        Ensemble([])


# ------------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------------


def test_evaluate_returns_policy_benchmarks_metrics_and_bootstrap():
    actor = Constant(np.array([0.3, 0.2, -0.1], dtype=np.float32))
    result = evaluate(actor, ARRAYS, FREE, ROWS, BARS_PER_YEAR, seed=3)
    assert set(result.benchmarks) == set(BENCHMARKS) == {"buy_and_hold", "equal_weight", "flat"}
    assert set(result.metrics) == {"policy", *BENCHMARKS, "random_turnover"}
    assert isinstance(result.policy, Evaluation)
    alone = run_policy(Constant(actor.action), ARRAYS, FREE, ROWS, BARS_PER_YEAR)
    np.testing.assert_array_equal(result.policy.equity, alone.equity)
    np.testing.assert_array_equal(
        result.benchmarks["buy_and_hold"].equity, buy_and_hold(ARRAYS, FREE, ROWS, BARS_PER_YEAR).equity
    )
    for name, path in [("policy", result.policy), *result.benchmarks.items()]:
        assert len(path.equity) == len(result.policy.equity)
        expected = compute_metrics(path.equity, BARS_PER_YEAR, turnover=path.turnover, costs=path.costs)
        np.testing.assert_equal(result.metrics[name].as_dict(), expected.as_dict())  # NaN equals NaN
        assert result.metrics[name].total_return == pytest.approx(path.equity[-1] / path.equity[0] - 1, rel=1e-12)
    boot = result.bootstrap
    assert set(boot.samples) == {"sharpe", "total_return", "annual_return", "max_drawdown"}
    n = len(result.policy.turnover)
    assert boot.block == max(1, round(n ** (1 / 3)))
    for key, (low, high) in boot.intervals.items():
        assert low <= high, key
    low, high = boot.intervals["total_return"]
    assert low <= result.metrics["policy"].total_return <= high
    again = evaluate(actor, ARRAYS, FREE, ROWS, BARS_PER_YEAR, seed=3)
    np.testing.assert_array_equal(again.bootstrap.samples["sharpe"], boot.samples["sharpe"])
    other = evaluate(actor, ARRAYS, FREE, ROWS, BARS_PER_YEAR, seed=4)
    assert not np.array_equal(other.bootstrap.samples["total_return"], boot.samples["total_return"])
