"""Metrics of an equity curve against hand-computed values, and the block bootstrap."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from ploutos.analytics.metrics import (
    Bootstrap,
    Metrics,
    block_bootstrap,
    compute_metrics,
    cost_breakdown,
    deflated_sharpe,
    expected_max_sharpe,
    gross_returns,
    moments,
    p_at_least,
    probabilistic_sharpe,
    returns_of,
)

# Returns +10 %, -10 %, +10 %, 0 on 4 bars; 8 bars a year so that annualizing is not a no-op.
EQUITY = np.array([100.0, 110.0, 99.0, 108.9, 108.9])
BPY = 8


def test_returns_of():
    np.testing.assert_allclose(returns_of(EQUITY), [0.1, -0.1, 0.1, 0.0], atol=1e-15)
    assert returns_of(EQUITY).shape == (4,)


@pytest.mark.filterwarnings("error")
def test_hand_computed_small_curve():
    m = compute_metrics(EQUITY, BPY)
    assert isinstance(m, Metrics)
    assert m.n_bars == 4
    assert m.total_return == pytest.approx(0.089)
    assert m.annual_return == pytest.approx(1.089**2 - 1)  # (1 + total) ** (8 / 4) - 1
    # mean 0.025; deviations .075, -.125, .075, -.025 -> sum of squares .0275, ddof=1 -> /3
    std = math.sqrt(0.0275 / 3)
    assert m.volatility == pytest.approx(std * math.sqrt(8))
    assert m.sharpe == pytest.approx(0.025 / std * math.sqrt(8))
    # downside: only -0.1 -> mean of squares 0.01 / 4 = 0.0025 -> 0.05
    assert m.sortino == pytest.approx(0.025 / 0.05 * math.sqrt(8))
    assert m.max_drawdown == pytest.approx(1 - 99 / 110)
    assert m.calmar == pytest.approx((1.089**2 - 1) / 0.1)
    assert m.win_rate == pytest.approx(2 / 3)  # the flat last bar does not count
    assert m.turnover == 0.0 and m.cost_drag == 0.0
    assert 0.5 < m.psr < 1.0
    d = m.as_dict()
    assert set(d) == {
        "total_return",
        "annual_return",
        "volatility",
        "sharpe",
        "sortino",
        "calmar",
        "max_drawdown",
        "win_rate",
        "turnover",
        "cost_drag",
        "psr",
        "n_bars",
        "gross_return",
    }
    assert d["sharpe"] == m.sharpe and d["n_bars"] == 4
    assert m.gross_return == pytest.approx(m.total_return, rel=1e-12)  # no costs: nothing to give back


def test_turnover_and_cost_drag_are_annualized():
    turnover = np.array([1.0, 0.5, 0.5, 0.0])
    costs = np.array([0.1, 0.11, 0.099, 0.0])  # 0.1 % of the equity before each of the first 3 steps
    m = compute_metrics(EQUITY, BPY, turnover=turnover, costs=costs)
    assert m.turnover == pytest.approx(2.0 / 4 * 8)
    assert m.cost_drag == pytest.approx(0.003 / 4 * 8)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(
    "equity",
    # The power form leaves ~1e-16 of rounding noise in the returns; it must not give a Sharpe of 1e12.
    [np.cumprod(np.r_[1.0, np.full(500, 1.0001)]), 1.0001 ** np.arange(501.0)],
    ids=["cumprod", "power"],
)
def test_constant_growth_has_no_volatility(equity):
    m = compute_metrics(equity, 1764)
    assert m.volatility == 0.0
    assert math.isnan(m.sharpe) and math.isnan(m.psr)
    assert m.max_drawdown == 0.0
    assert math.isnan(m.calmar)
    assert math.isnan(m.sortino)  # no losing bar
    assert m.win_rate == 1.0
    assert m.annual_return == pytest.approx(1.0001**1764 - 1)


@pytest.mark.filterwarnings("error")
def test_flat_curve_is_nan_not_an_error():
    m = compute_metrics(np.ones(10), 1764)
    assert m.total_return == 0.0 and m.annual_return == 0.0 and m.max_drawdown == 0.0
    assert math.isnan(m.sharpe) and math.isnan(m.win_rate) and math.isnan(m.calmar)


def test_single_return_has_undefined_ratios():
    m = compute_metrics(np.array([1.0, 1.1]), 1764)
    assert m.n_bars == 1
    assert math.isnan(m.volatility) and math.isnan(m.sharpe) and math.isnan(m.psr)
    assert m.total_return == pytest.approx(0.1)


def test_rounding_noise_is_no_drawdown():
    m = compute_metrics(np.array([1.0, 1.0 - 1e-15, 1.0, 1.1]), 1764)
    assert m.max_drawdown == 0.0
    assert math.isnan(m.calmar)


def test_known_max_drawdown():
    equity = np.array([1.0, 2.0, 1.5, 3.0, 1.2, 2.5])
    m = compute_metrics(equity, 252)
    assert m.max_drawdown == pytest.approx(0.6)  # 3.0 -> 1.2, deeper than 2.0 -> 1.5
    assert m.calmar == pytest.approx(m.annual_return / 0.6)


@pytest.mark.filterwarnings("error")
def test_bankrupt_curve():
    equity = np.array([1.0, 0.5, 0.0, 0.0, 0.0])
    m = compute_metrics(equity, 1764, costs=np.array([0.01, 0.01, 0.01, 0.0]))
    assert m.annual_return == -1.0
    assert m.total_return == -1.0
    assert m.max_drawdown == pytest.approx(1.0)
    np.testing.assert_allclose(returns_of(equity), [-0.5, -1.0, 0.0, 0.0])
    assert all(not math.isinf(v) for v in m.as_dict().values())


def test_explosive_short_curve_is_nan_not_inf():
    m = compute_metrics(np.array([1.0, 3.0, 9.0]), 1764)  # 9 ** 882 is beyond the float range
    assert math.isnan(m.annual_return) and math.isnan(m.calmar)
    assert m.total_return == pytest.approx(8.0)


def test_psr_is_one_half_for_zero_mean():
    r = np.tile([0.01, -0.01, 0.02, -0.02], 50)
    m = compute_metrics(np.r_[1.0, np.cumprod(1 + r)], 1764)
    assert m.psr == pytest.approx(0.5, abs=1e-9)


def test_psr_is_high_for_a_strong_series():
    r = np.random.default_rng(1).normal(0.001, 0.005, 2000)
    assert compute_metrics(np.r_[1.0, np.cumprod(1 + r)], 1764).psr > 0.95


def test_psr_matches_the_formula():
    rng = np.random.default_rng(7)
    r = rng.standard_t(4, 300) * 0.01 + 0.0005
    m = compute_metrics(np.r_[1.0, np.cumprod(1 + r)], 1764)
    r = returns_of(np.r_[1.0, np.cumprod(1 + r)])
    sr = r.mean() / r.std(ddof=1)
    dev = r - r.mean()
    skew = np.mean(dev**3) / np.mean(dev**2) ** 1.5
    kurt = np.mean(dev**4) / np.mean(dev**2) ** 2
    z = sr * math.sqrt(len(r) - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2)
    assert m.psr == pytest.approx(0.5 * (1 + math.erf(z / math.sqrt(2))), rel=1e-12)
    assert m.sharpe == pytest.approx(sr * math.sqrt(1764))


def test_win_rate_ignores_zero_returns():
    r = np.array([0.01, 0.0, 0.0, -0.01, 0.0, 0.02, 0.0])
    m = compute_metrics(np.r_[1.0, np.cumprod(1 + r)], 1764)
    assert m.win_rate == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("equity", "kwargs", "match"),
    [
        (np.ones((3, 2)), {}, "1-D"),
        (np.array([1.0]), {}, "at least 2"),
        (np.array([1.0, np.nan, 1.0]), {}, "non-finite"),
        (np.array([1.0, np.inf]), {}, "non-finite"),
        (np.array([0.0, 1.0]), {}, "positive"),
        (np.ones(5), {"turnover": np.ones(5)}, "turnover must have shape \\(4,\\)"),
        (np.ones(5), {"costs": np.ones((4, 1))}, "costs must have shape"),
    ],
)
def test_bad_inputs_raise_value_error(equity, kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(equity, 1764, **kwargs)


def _iid(n: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0003, 0.005, n)


def test_bootstrap_is_deterministic_given_the_seed():
    r = _iid(500)
    a, b = block_bootstrap(r, 1764, n_samples=200, seed=5), block_bootstrap(r, 1764, n_samples=200, seed=5)
    c = block_bootstrap(r, 1764, n_samples=200, seed=6)
    assert isinstance(a, Bootstrap)
    assert set(a.samples) == set(a.intervals) == {"sharpe", "total_return", "max_drawdown", "annual_return"}
    for key in a.samples:
        assert a.samples[key].shape == (200,) and a.samples[key].dtype == np.float64
        np.testing.assert_array_equal(a.samples[key], b.samples[key])
        assert not np.array_equal(a.samples[key], c.samples[key])
    assert a.block == round(500 ** (1 / 3)) == 8
    assert a.confidence == 0.95


def test_bootstrap_interval_contains_the_point_sharpe():
    r = _iid(5000)
    point = compute_metrics(np.r_[1.0, np.cumprod(1 + r)], 1764).sharpe
    boot = block_bootstrap(r, 1764, n_samples=1000)
    low, high = boot.intervals["sharpe"]
    assert low < point < high
    assert low < np.median(boot.samples["sharpe"]) < high


def test_bootstrap_with_a_full_block_is_a_rotation():
    r = _iid(300)
    boot = block_bootstrap(r, 1764, n_samples=50, block=300)
    total = np.prod(1 + r) - 1
    np.testing.assert_allclose(boot.samples["total_return"], total, rtol=1e-10)
    # A rotation keeps the multiset of returns, hence mean and std: every Sharpe is the same.
    np.testing.assert_allclose(boot.samples["sharpe"], boot.samples["sharpe"][0], rtol=1e-10)
    # ... but not the order, so drawdowns differ between samples.
    assert np.unique(boot.samples["max_drawdown"].round(12)).size > 1


def test_bootstrap_block_length_is_respected():
    # Runs of 25 up bars then 25 down bars: blocks of 25 keep runs (deep drawdowns, wide swings),
    # blocks of 1 shuffle them away (shallow drawdowns).
    r = np.tile(np.r_[np.full(25, 0.01), np.full(25, -0.01)], 8)
    runs = block_bootstrap(r, 1764, n_samples=300, block=25)
    shuffled = block_bootstrap(r, 1764, n_samples=300, block=1)
    assert runs.block == 25 and shuffled.block == 1
    assert np.median(runs.samples["max_drawdown"]) > 1.5 * np.median(shuffled.samples["max_drawdown"])
    # Every sample's returns are the original ones (only +-1 %), whatever the block.
    assert np.all(np.abs(runs.samples["total_return"]) < 1.01**200)


def test_bootstrap_interval_narrows_with_more_bars():
    short = block_bootstrap(_iid(500), 1764, n_samples=500).intervals["sharpe"]
    long = block_bootstrap(_iid(8000), 1764, n_samples=500).intervals["sharpe"]
    assert long[1] - long[0] < 0.5 * (short[1] - short[0])


def test_bootstrap_interval_has_the_requested_coverage():
    boot = block_bootstrap(_iid(1000), 1764, n_samples=2000, confidence=0.9)
    for key, (low, high) in boot.intervals.items():
        inside = np.mean((boot.samples[key] >= low) & (boot.samples[key] <= high))
        assert inside == pytest.approx(0.9, abs=0.01), key


@pytest.mark.filterwarnings("error")
def test_bootstrap_wiped_out_paths_stay_at_zero():
    # A loss beyond the whole equity (leverage) ends the path at 0 instead of flipping its sign.
    r = np.r_[_iid(49), -1.5]
    boot = block_bootstrap(r, 1764, n_samples=500, block=5)
    total = boot.samples["total_return"]
    assert np.all(total >= -1.0) and np.any(total == -1.0)
    np.testing.assert_array_equal(boot.samples["annual_return"][total == -1.0], -1.0)
    assert np.all(boot.samples["max_drawdown"] <= 1.0)


def test_bootstrap_is_fast():
    r = _iid(2000)
    started = time.perf_counter()
    block_bootstrap(r, 1764, n_samples=1000)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"block": 0}, "block"),
        ({"block": 11}, "block"),
        ({"n_samples": 0}, "n_samples"),
        ({"confidence": 1.0}, "confidence"),
    ],
)
def test_bootstrap_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        block_bootstrap(_iid(10), 1764, **kwargs)
    with pytest.raises(ValueError):
        block_bootstrap(np.array([0.01]), 1764)


# ------------------------------------------------------------------------------------------------
# gross return, cost breakdown, significance
# ------------------------------------------------------------------------------------------------


def test_gross_return_gives_each_steps_costs_back():
    equity = np.array([100.0, 99.0, 100.5, 100.5])
    costs = np.array([1.0, 0.5, 0.0])
    np.testing.assert_allclose(gross_returns(equity, costs), [0.0, 2.0 / 99.0, 0.0], atol=1e-15)
    m = compute_metrics(equity, BPY, costs=costs)
    assert m.total_return == pytest.approx(0.005)
    assert m.gross_return == pytest.approx(101.0 / 99.0 - 1.0)  # (99 + 1) / 100 = 1, then (100.5 + 0.5) / 99
    assert m.gross_return > m.total_return


def test_gross_return_of_a_dead_account_stops_at_death():
    equity = np.array([100.0, -5.0, 10.0])
    m = compute_metrics(equity, BPY, costs=np.array([5.0, 0.0]))
    assert m.gross_return == pytest.approx(-1.0)  # (-5 + 5) / 100 - 1; the bar after death earns nothing


def test_cost_breakdown_sums_to_the_cost_drag():
    equity = np.array([100.0, 110.0, 99.0, 108.9, 108.9])
    parts = np.array([[1.0, 0.5, 0.0], [0.0, 0.2, 0.1], [0.3, 0.0, 0.0], [0.0, 0.0, 0.0]])
    shares = cost_breakdown(equity, parts, BPY)
    assert shares.shape == (3,)
    assert shares[0] == pytest.approx((1.0 / 100 + 0.3 / 99) / 4 * BPY)
    drag = compute_metrics(equity, BPY, costs=parts.sum(axis=1)).cost_drag
    assert shares.sum() == pytest.approx(drag, rel=1e-12)
    with pytest.raises(ValueError, match="one row per step"):
        cost_breakdown(equity, parts[:3], BPY)


def test_p_at_least_counts_ties_as_at_least():
    samples = np.array([-0.1, 0.0, 0.05, 0.1, np.nan])
    assert p_at_least(0.05, samples) == pytest.approx(0.5)  # 0.05 and 0.1 of the four finite samples
    assert p_at_least(1.0, samples) == 0.0 and p_at_least(-1.0, samples) == 1.0
    assert math.isnan(p_at_least(0.0, np.array([]))) and math.isnan(p_at_least(math.nan, samples))


def test_deflated_sharpe_reproduces_bailey_and_lopez_de_prado_2014():
    """Their numerical example: 100 trials whose annualized Sharpe ratios vary by 0.5, the best at an
    annualized 2.5 over 1,250 daily returns of skew -3 and kurtosis 10: SR* = 0.1132 a day, DSR = 0.9004."""
    sr_star = expected_max_sharpe(0.5 / 250, 100)
    assert sr_star == pytest.approx(0.1132, abs=5e-5)
    dsr = probabilistic_sharpe(2.5 / math.sqrt(250), sr_star, 1250, -3.0, 10.0)
    assert dsr == pytest.approx(0.9004, abs=5e-5)
    # by hand: z = (0.158114 - 0.113172) * sqrt(1249) / sqrt(1 + 3 * 0.158114 + 9 / 4 * 0.025) = 1.28382
    assert dsr == pytest.approx(0.5 * (1 + math.erf(1.28382 / math.sqrt(2))), abs=1e-5)


def test_one_trial_selects_nothing_and_more_trials_deflate_more():
    assert expected_max_sharpe(0.01, 1) == 0.0 and expected_max_sharpe(0.01, 0) == 0.0
    assert expected_max_sharpe(0.0, 50) == 0.0  # identical trials: no selection bias
    assert math.isnan(expected_max_sharpe(math.nan, 5))
    assert 0 < expected_max_sharpe(0.01, 2) < expected_max_sharpe(0.01, 10) < expected_max_sharpe(0.01, 1000)
    r = np.random.default_rng(3).normal(0.02, 0.1, 500)
    psr = compute_metrics(np.concatenate([[1.0], np.cumprod(1 + r)]), BPY).psr
    assert deflated_sharpe(r, np.array([0.2])) == pytest.approx(psr, rel=1e-12)  # N = 1: DSR = PSR
    assert deflated_sharpe(r, np.array([0.2, np.nan])) == pytest.approx(psr, rel=1e-12)  # NaN trials do not count
    trials = np.array([0.2, -0.1, 0.05, 0.0, 0.12])
    assert deflated_sharpe(r, trials) < psr
    assert deflated_sharpe(r, np.concatenate([trials, trials])) < deflated_sharpe(r, trials)


def test_deflated_sharpe_uses_the_returns_moments_and_the_trials_variance():
    r = np.random.default_rng(5).standard_t(4, 800) * 0.01 + 0.001
    trials = np.array([0.05, -0.02, 0.01, 0.08, 0.0, -0.04])
    skew, kurt = moments(r)
    assert kurt > 3  # fat tails, as drawn
    sr = r.mean() / r.std(ddof=1)
    expected = probabilistic_sharpe(sr, expected_max_sharpe(trials.var(ddof=1), 6), 800, skew, kurt)
    assert deflated_sharpe(r, trials) == pytest.approx(expected, rel=1e-12)


def test_deflated_sharpe_is_nan_without_variance_or_returns():
    assert math.isnan(deflated_sharpe(np.zeros(50), np.array([0.1, 0.2])))
    assert math.isnan(deflated_sharpe(np.array([0.01]), np.array([0.1, 0.2])))
    assert math.isnan(deflated_sharpe(np.array([0.01, np.nan, 0.02]), np.array([0.1, 0.2])))
    assert math.isnan(probabilistic_sharpe(math.nan, 0.0, 100, 0.0, 3.0))
    assert math.isnan(probabilistic_sharpe(0.1, 0.0, 1, 0.0, 3.0))
