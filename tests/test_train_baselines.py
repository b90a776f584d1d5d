"""The baselines of every fold evaluation: flat, and random policies with the evaluated policy's turnover."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ploutos.analytics.evaluation import COST_COMPONENTS, RANDOM
from ploutos.bench.env import synthetic_arrays
from ploutos.config import EnvConfig
from ploutos.env.core import MarketCore
from ploutos.features.arrays import FeatureArrays
from ploutos.train.evaluate import (
    HOLD,
    TURNOVER_TOLERANCE,
    _random_paths,
    evaluate,
    flat,
    random_turnover,
    run_episode,
)

BARS_PER_YEAR = 252 * 7
CFG = replace(EnvConfig(), lookback=8)  # the default (equity) cost profile: every component but fees is on
ARRAYS = synthetic_arrays(700, 3, 2, seed=7)
ROWS = slice(100, 700)


def trending_arrays(n_time: int = 400, step: float = 0.01, seed: int = 1) -> FeatureArrays:
    """One asset that moves +-``step`` from open to close at every bar, opening at the previous close
    (no gaps): a policy that knows the next bar's sign earns ``|w| * step`` on every bar."""
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], n_time)
    close = 100.0 * np.cumprod(1.0 + step * signs)
    open_ = np.concatenate([[100.0], close[:-1]])
    arrays = synthetic_arrays(n_time, 1, 2, seed=seed)
    prices = np.stack(
        [open_, np.maximum(open_, close) * 1.001, np.minimum(open_, close) * 0.999, close, np.full(n_time, 1e7)],
        axis=-1,
    )[:, None, :]
    return replace(arrays, prices=prices)


class Oracle:
    """Long ``size`` before every bar that closes above its open, short before every other (``size < 0``:
    the mirror, always on the wrong side)."""

    def __init__(self, arrays: FeatureArrays, first_decision: int, size: float) -> None:
        moves = arrays.prices[:, 0, 3] - arrays.prices[:, 0, 0]
        self.signs, self.first, self.size = np.sign(moves), first_decision, size

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        step = 0 if state is None else state
        fill_row = self.first + step + 1  # decided on the bar before the fill
        return np.array([self.size * self.signs[fill_row]], dtype=np.float32), step + 1


class Switcher:
    """Cycles through ``targets``, holding each for ``every`` bars (a policy that changes its mind rarely)."""

    def __init__(self, targets: list[list[float]], every: int, dtype=np.float32) -> None:
        self.targets, self.every, self.dtype = [np.array(t, dtype=dtype) for t in targets], every, dtype

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        step = 0 if state is None else state
        return self.targets[(step // self.every) % len(self.targets)].copy(), step + 1


# ------------------------------------------------------------------------------------------------
# flat
# ------------------------------------------------------------------------------------------------


def test_flat_never_trades_and_keeps_its_cash():
    path = flat(ARRAYS, CFG, ROWS, BARS_PER_YEAR)
    np.testing.assert_array_equal(path.equity, CFG.initial_cash)
    np.testing.assert_array_equal(path.turnover, 0.0)
    np.testing.assert_array_equal(path.costs, 0.0)
    np.testing.assert_array_equal(path.cost_parts, 0.0)
    metrics = path.metrics(BARS_PER_YEAR)
    assert metrics.total_return == metrics.gross_return == metrics.turnover == metrics.cost_drag == 0.0
    assert np.isnan(metrics.sharpe) and np.isnan(metrics.psr)  # no variance: nothing to test against


def test_flat_is_flat_in_discrete_mode_too():
    path = flat(ARRAYS, replace(CFG, action_mode="discrete"), ROWS, BARS_PER_YEAR)
    np.testing.assert_array_equal(path.equity, CFG.initial_cash)


# ------------------------------------------------------------------------------------------------
# calibration of the random policies' turnover
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "policy"),
    [
        (CFG, Switcher([[0.5, -0.3, 0.1], [-0.2, 0.4, 0.0], [0.1, 0.1, 0.6]], every=4)),
        (CFG, Switcher([[0.5, -0.3, 0.1], [-0.2, 0.4, 0.0]], every=60)),
        (replace(CFG, long_only=True), Switcher([[0.6, 0.0, 0.3], [0.0, 0.5, 0.5], [0.2, 0.2, 0.2]], every=12)),
        (replace(CFG, action_mode="discrete"), Switcher([[2, HOLD, 0], [0, 2, HOLD], [HOLD, 0, 2]], 8, np.int64)),
    ],
    ids=["often", "rarely", "long-only", "discrete"],
)
def test_the_random_policies_median_turnover_is_the_policys(cfg, policy):
    result = evaluate(policy, ARRAYS, cfg, ROWS, BARS_PER_YEAR, seed=4)
    target = result.metrics["policy"].turnover
    random = result.random
    assert target > 0 and random.target_turnover == target
    assert random.seeds == 200 and random.turnover.shape == random.total_return.shape == (200,)
    median = float(np.median(random.turnover))
    assert abs(median - target) <= 0.10 * target, (median, target, random.probability, random.passes)
    assert 0 < random.probability < 1
    assert result.metrics[RANDOM].turnover == pytest.approx(median)
    assert np.ptp(random.total_return) > 0  # the seeds differ


def test_calibration_reaches_its_tolerance_on_a_smooth_target():
    baseline = random_turnover(ARRAYS, CFG, ROWS, BARS_PER_YEAR, 40.0, seed=1)
    assert abs(np.median(baseline.turnover) - 40.0) <= TURNOVER_TOLERANCE * 40.0
    assert baseline.passes <= 16


def test_a_policy_that_never_trades_gets_flat_random_policies():
    result = evaluate(Switcher([[0.0, 0.0, 0.0]], every=1), ARRAYS, CFG, ROWS, BARS_PER_YEAR)
    assert result.random.probability == 0.0 and result.random.passes == 1
    np.testing.assert_array_equal(result.random.total_return, 0.0)
    np.testing.assert_array_equal(result.random.turnover, 0.0)
    assert result.p_random == 1.0  # every random path did at least as well: nothing to beat


def test_a_policy_that_trades_more_than_chance_can_gets_a_redraw_at_every_bar():
    arrays = trending_arrays()
    rows = slice(0, 400)
    result = evaluate(Oracle(arrays, CFG.lookback - 1, 1.0), arrays, CFG, rows, BARS_PER_YEAR)
    # flipping between -1 and +1 half the time: 1.0 a bar; a uniform redraw moves E|U - U'| = 2/3
    assert result.random.probability == 1.0
    assert np.median(result.random.turnover) < result.metrics["policy"].turnover


def test_the_baseline_is_reproducible_from_the_seed():
    policy = Switcher([[0.5, -0.3, 0.1], [-0.2, 0.4, 0.0]], every=10)
    a = evaluate(policy, ARRAYS, CFG, ROWS, BARS_PER_YEAR, seed=11)
    b = evaluate(policy, ARRAYS, CFG, ROWS, BARS_PER_YEAR, seed=11)
    c = evaluate(policy, ARRAYS, CFG, ROWS, BARS_PER_YEAR, seed=12)
    np.testing.assert_array_equal(a.random.total_return, b.random.total_return)
    assert a.random.probability == b.random.probability and a.p_random == b.p_random
    assert not np.array_equal(a.random.total_return, c.random.total_return)


def test_fewer_than_100_seeds_are_refused():
    with pytest.raises(ValueError, match="at least 100"):
        evaluate(Switcher([[0.1, 0.0, 0.0]], every=1), ARRAYS, CFG, ROWS, BARS_PER_YEAR, random_seeds=50)


def test_a_random_seed_trades_through_the_same_env_and_costs_as_the_policy():
    """Replay seed ``s``'s targets (the same draws as the baseline) through the one-env evaluation path:
    the equity must agree to 1e-9, costs included. (One pass at a fixed probability, no calibration.)"""
    probability, seed, seeds = 0.05, 3, 128
    core = MarketCore(ARRAYS, replace(CFG, bankruptcy_equity=0.0), rows=ROWS, n_envs=seeds, evaluation=True,
                      bars_per_year=BARS_PER_YEAR)  # fmt: skip
    paths = _random_paths(core, probability, seed)
    rng = np.random.default_rng(seed)
    n = paths.turnover.shape[0]
    targets, target = np.empty((n, seeds, 3)), np.zeros((seeds, 3))
    for k in range(n):
        redraw = rng.random(seeds) < probability
        fresh = rng.uniform(-1.0, 1.0, (seeds, 3))
        target[redraw] = fresh[redraw]
        targets[k] = target
    for s in (0, 17, 101):
        replay = run_episode(lambda step, *_, s=s: targets[step, s], ARRAYS, CFG, ROWS, BARS_PER_YEAR)
        np.testing.assert_allclose(paths.equity[:, s], replay.equity, rtol=1e-9)
        np.testing.assert_allclose(paths.costs[:, s], replay.costs, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(paths.turnover[:, s], replay.turnover, rtol=1e-9, atol=1e-12)
    assert (paths.costs.sum(axis=0) > 0).mean() > 0.9  # nearly every seed traded and paid


# ------------------------------------------------------------------------------------------------
# p_random
# ------------------------------------------------------------------------------------------------


def test_an_oracle_beats_every_random_path_and_its_mirror_none():
    arrays = trending_arrays()
    rows = slice(0, 400)
    first = CFG.lookback - 1
    oracle = evaluate(Oracle(arrays, first, 0.5), arrays, CFG, rows, BARS_PER_YEAR, seed=2)
    mirror = evaluate(Oracle(arrays, first, -0.5), arrays, CFG, rows, BARS_PER_YEAR, seed=2)
    assert oracle.metrics["policy"].total_return > 1.0 and mirror.metrics["policy"].total_return < -0.5
    assert oracle.p_random == 0.0
    assert mirror.p_random == 1.0
    for result in (oracle, mirror):
        assert abs(np.median(result.random.turnover) - result.metrics["policy"].turnover) <= 0.1 * (
            result.metrics["policy"].turnover
        )


def test_p_random_is_the_share_of_seeds_at_least_as_good():
    result = evaluate(Switcher([[0.5, -0.3, 0.1], [-0.2, 0.4, 0.0]], every=10), ARRAYS, CFG, ROWS, BARS_PER_YEAR)
    own = result.metrics["policy"].total_return
    assert result.p_random == pytest.approx(np.mean(result.random.total_return >= own))
    assert 0.0 < result.p_random < 1.0


# ------------------------------------------------------------------------------------------------
# gross return and the cost breakdown
# ------------------------------------------------------------------------------------------------


def test_cost_parts_sum_to_the_costs_and_the_breakdown_to_the_cost_drag():
    result = evaluate(Switcher([[0.5, -0.3, 0.1], [-0.2, 0.4, 0.0]], every=5), ARRAYS, CFG, ROWS, BARS_PER_YEAR)
    policy, metrics = result.policy, result.metrics["policy"]
    assert policy.cost_parts.shape == (len(policy.costs), len(COST_COMPONENTS))
    np.testing.assert_allclose(policy.cost_parts.sum(axis=1), policy.costs, rtol=1e-9, atol=1e-9)
    assert list(result.cost_breakdown) == list(COST_COMPONENTS)
    assert sum(result.cost_breakdown.values()) == pytest.approx(metrics.cost_drag, rel=1e-9)
    for name in ("commission", "spread", "slippage", "financing"):  # shorts are held: financing accrues
        assert result.cost_breakdown[name] > 0, name
    rates = CFG.costs
    assert result.cost_breakdown["commission"] / result.cost_breakdown["spread"] == pytest.approx(
        rates.commission_bps / rates.half_spread_bps, rel=1e-9
    )
    assert metrics.gross_return > metrics.total_return
    for name in ("flat", "buy_and_hold"):
        assert result.metrics[name].gross_return >= result.metrics[name].total_return
