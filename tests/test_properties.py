"""Accounting properties, each tested so that the test fails when the property breaks.

1. Normalization statistics are a fit on exactly the rows the training envs are given.
2. The embargo holds in the rows the training envs fill and mark, not only in the fold plan.
3. A 24h session has 6,240 bars a year, and the task Sharpe is annualized with it.
4. Cross-asset features are causal; the same check catches a one-bar look-ahead.
5. The probabilistic Sharpe ratio matches Bailey & Lopez de Prado (2012) for returns of known
   skew and kurtosis.
6. An ensemble holds the mean of its members' target weights.

Every test holds a negative control next to its claim (a shifted window, another annualization,
a look-ahead input, the normal-assumption PSR, another combination of the members) so that a
check which cannot tell right from wrong does not pass unnoticed.
"""

from __future__ import annotations

import math
from dataclasses import fields, replace
from datetime import datetime, timedelta, timezone
from statistics import NormalDist

import numpy as np
import polars as pl
import pytest

import ploutos.train.trainer as trainer
from ploutos.analytics.metrics import _psr, compute_metrics
from ploutos.config import Config, DataConfig, EnvConfig, FeaturesConfig, WalkForwardConfig
from ploutos.config.sections import SESSION_BARS_PER_YEAR
from ploutos.data.build import build_dataset
from ploutos.data.calendar import expected_timestamps
from ploutos.features.arrays import FeatureArrays
from ploutos.features.engine import compute
from ploutos.features.normalize import normalize
from ploutos.features.pipeline import load_bars, observation_arrays
from ploutos.node.hardware import Machine, plan
from ploutos.pipeline.record import evaluate_fold
from ploutos.train.evaluate import Ensemble, run_policy
from ploutos.train.folds import Fold, fold_features

FOLD = 1
"""The fold the tests use: its training rows start after row 0, so a window shifted back exists."""
CROSS_COLUMNS = {f"{kind}_ret_{n}" for kind in ("excess", "rank") for n in (1, 8, 32)}


# ------------------------------------------------------------------------------------------------
# fixtures and helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """Three synthetic 24h tickers over ~5 months: two rolling folds of 3 months' training, 1 of test."""
    store = tmp_path_factory.mktemp("properties") / "store"
    data = DataConfig(
        source="synthetic", tickers=("AAA", "BBB", "CCC"), start="2021-01-04", session="24h",
        max_gap_bars=24, synthetic_bars=2600, store=str(store),
    )  # fmt: skip
    build_dataset(data, progress=False)
    return Config(
        name="properties",
        data=data,
        features=FeaturesConfig(windows=(5, 10, 20), normalize="zscore", clip=10.0, max_saturation=0.2),
        env=EnvConfig(lookback=8, episode_bars=64),
        walkforward=WalkForwardConfig(train_months=3, test_months=1, embargo_bars=24),
    )


def in_process_plan(config: Config, n_envs: int = 3):
    """A hardware plan whose envs step in this process (no worker processes)."""
    return replace(plan(config, environ={}, machine=Machine(2, 8.0, 0, "test")), workers=0, n_envs=n_envs)


def training_envs(config: Config, fold: Fold, arrays: FeatureArrays, monkeypatch: pytest.MonkeyPatch) -> list:
    """The envs the trainer builds for ``fold``, after checking that env workers would get the same rows."""
    venv = trainer.make_venv(config, fold, in_process_plan(config), arrays, "unused", "unused")
    envs = list(venv.envs)
    windows = {(env.row_start, env.row_stop) for env in envs}
    assert len(windows) == 1, windows

    factories: list = []
    monkeypatch.setattr(trainer, "ShmVecEnv", lambda fns, **_: factories.extend(fns))
    trainer.make_venv(config, fold, replace(in_process_plan(config), workers=1), arrays, "unused", "unused")
    assert {tuple(factory.rows) for factory in factories} == windows  # worker envs get the same rows
    return envs


def frictionless(cfg: EnvConfig) -> EnvConfig:
    """``cfg`` with every cost at 0 and every action rule (band, partial adjustment, decision spacing) off."""
    neutral = {
        "commission_bps": 0.0, "half_spread_bps": 0.0, "slippage_range_mult": 0.0,
        "impact_coef": 0.0, "borrow_bps_per_year": 0.0, "sec_fee_per_million": 0.0,
        "rebalance_band": 0.0, "max_weight_change": None, "decide_every": 1,
    }  # fmt: skip
    present = {f.name for f in fields(EnvConfig)}
    return replace(cfg, **{key: value for key, value in neutral.items() if key in present})


def wavy_arrays(n_time: int = 200, n_asset: int = 3) -> FeatureArrays:
    """Deterministic prices with intrabar moves and gaps between bars, so that weights drift after a fill."""
    t = np.arange(n_time, dtype=float)[:, None]
    a = np.arange(n_asset, dtype=float)[None, :]
    close = 100.0 * np.exp(0.05 * np.sin(t / 7.0 + a) + 0.0004 * (a - 1.0) * t)
    open_ = np.vstack([close[:1], close[:-1] * (1.0 + 0.003 * np.cos(t[1:] * 1.7 + a))])
    prices = np.stack([open_, np.maximum(open_, close) * 1.001, np.minimum(open_, close) * 0.999, close,
                       np.full_like(close, 1e6)], axis=-1)  # fmt: skip
    present = np.ones((n_time, n_asset), bool)
    return FeatureArrays(
        timestamps=np.datetime64("2024-01-02T00:00", "us") + np.arange(n_time) * np.timedelta64(1, "h"),
        tickers=tuple(f"A{i}" for i in range(n_asset)),
        names=("f0",),
        values=np.zeros((n_time, n_asset, 1), np.float32),
        valid=present.copy(),
        present=present,
        prices=prices,
    )


class Fixed:
    """An actor that always asks for the same target weights."""

    def __init__(self, weights) -> None:
        self.weights = np.asarray(weights, dtype=np.float32)

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        return self.weights.copy(), state


class LastStart:
    """Stands in for an env's ``np_random``: every draw is the highest value allowed."""

    def integers(self, low, high=None, *args, **kwargs):
        return (low if high is None else high) - 1


def sharpe_by_hand(equity: np.ndarray, bars_per_year: int) -> float:
    r = equity[1:] / equity[:-1] - 1.0
    return float(r.mean() / r.std(ddof=1) * math.sqrt(bars_per_year))


def cross_features(bars: pl.DataFrame, features: FeaturesConfig) -> pl.DataFrame:
    return compute(bars, features, kinds=("cross",)).sort("timestamp", "ticker")


def changed_by_the_future(features_of, bars: pl.DataFrame, cuts: list) -> list:
    """The cut times at which features of the bars up to the cut differ from those of all bars, at or before it."""
    full = features_of(bars)
    changed = []
    for cut in cuts:
        past = full.filter(pl.col("timestamp") <= cut)
        cut_short = features_of(bars.filter(pl.col("timestamp") <= cut))
        assert cut_short.height == past.height
        columns = [c for c in past.columns if c not in ("timestamp", "ticker")]
        a = past.select(columns).to_numpy().astype(np.float64)
        b = cut_short.select(columns).to_numpy().astype(np.float64)
        if not np.array_equal(a, b, equal_nan=True):
            changed.append(cut)
    return changed


def two_point_returns(n: int, n_low: int, high: float, low: float) -> tuple[np.ndarray, float, float]:
    """``n`` returns: ``n_low`` of ``low`` spread evenly, the rest ``high``; with their exact skew and kurtosis.

    The sample is a two-point distribution, ``low`` with share ``p = n_low / n``: its (population)
    skew is ``(2p - 1) / sqrt(p q)`` and its kurtosis ``3 + (1 - 6 p q) / (p q)``, in closed form.
    """
    assert low < high
    r = np.full(n, high)
    r[np.linspace(0, n - 1, n_low).round().astype(int)] = low
    p = n_low / n
    pq = p * (1 - p)
    skew = (2 * p - 1) / math.sqrt(pq)
    kurt = 3.0 + (1 - 6 * pq) / pq
    return r, skew, kurt


def psr_reference(sr: float, n: int, skew: float, kurt: float) -> float:
    """PSR(0), Bailey & Lopez de Prado (2012), eq. 3: Phi(SR sqrt(n - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2))."""
    return NormalDist().cdf(sr * math.sqrt(n - 1) / math.sqrt(1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr**2))


# ------------------------------------------------------------------------------------------------
# 1. normalization
# ------------------------------------------------------------------------------------------------


def test_normalization_statistics_are_a_fit_on_exactly_the_training_env_rows(config, monkeypatch):
    normalized, fold, stats = fold_features(config, FOLD)
    ((start, stop),) = {(env.row_start, env.row_stop) for env in training_envs(config, fold, normalized, monkeypatch)}
    assert start > 0

    raw = observation_arrays(load_bars(config), config)
    _, own = normalize(raw, slice(start, stop), config.features)
    np.testing.assert_array_equal(stats.center, own.center)
    np.testing.assert_array_equal(stats.scale, own.scale)

    embargo = config.walkforward.embargo_bars
    for other in (slice(start + 1, stop + 1), slice(start - 1, stop - 1), slice(start, stop + embargo)):
        _, wrong = normalize(raw, other, config.features)
        assert not np.array_equal(stats.center, wrong.center), other
        assert not np.array_equal(stats.scale, wrong.scale), other


# ------------------------------------------------------------------------------------------------
# 2. embargo
# ------------------------------------------------------------------------------------------------


def test_training_envs_never_fill_or_mark_a_row_of_the_embargo(config, monkeypatch):
    arrays, fold, _ = fold_features(config, FOLD)
    embargo = config.walkforward.embargo_bars
    limit = fold.test.start - embargo  # the first row a training env may not touch
    validation = getattr(fold, "validation", None)
    if validation is not None and validation.stop > validation.start:
        limit = min(limit, validation.start - embargo)

    envs = training_envs(config, fold, arrays, monkeypatch)
    assert all(env.row_stop <= limit for env in envs), ([env.row_stop for env in envs], limit)

    env = envs[-1]
    env.np_random = LastStart()
    env.reset()
    first = env.decision_row
    assert first == env.core.start_rows()[1]  # the latest start a training episode can draw
    touched = list(range(first - config.env.lookback + 1, first + 1))  # the first observation's window
    hold = np.zeros((1, env.n_assets))
    while True:
        step = env.core.step(hold, np.array([env.index]))
        touched.extend(int(row) for row in step.fill_rows)
        if step.terminated[0] or step.truncated[0]:
            break
    assert touched[-1] == env.row_stop - 1  # the episode ran to the last row it was given
    assert max(touched) < limit, (max(touched), limit)
    assert min(touched) >= env.row_start


# ------------------------------------------------------------------------------------------------
# 3. annualization
# ------------------------------------------------------------------------------------------------


def test_24h_session_has_6240_bars_a_year_and_the_task_sharpe_uses_them(config):
    monday = datetime(2021, 1, 4, tzinfo=timezone.utc)
    assert len(expected_timestamps("24h", "XNYS", monday, monday + timedelta(weeks=52))) == 6240
    assert SESSION_BARS_PER_YEAR["24h"] == 6240 == config.data.bars_per_year

    arrays, fold, _ = fold_features(config, FOLD)
    evaluation = evaluate_fold(Fixed([0.5, -0.3, 0.2]), arrays, fold, config, seed=0)
    equity = evaluation.policy.equity
    assert len(equity) == fold.test_bars + 1

    recorded = evaluation.metrics["policy"].sharpe
    assert recorded == pytest.approx(sharpe_by_hand(equity, 6240), rel=1e-12)
    for wrong in (252 * 24, 24 * 365):
        assert recorded != pytest.approx(sharpe_by_hand(equity, wrong), rel=1e-3), wrong


# ------------------------------------------------------------------------------------------------
# 4. cross-asset causality
# ------------------------------------------------------------------------------------------------


def test_cross_asset_features_are_causal_and_a_one_bar_look_ahead_is_caught(config):
    bars = load_bars(config).sort("ticker", "timestamp")
    times = bars["timestamp"].unique().sort()
    cuts = [times[i] for i in (100, 777, len(times) - 2)]
    features = config.features

    honest = cross_features(bars, features)
    assert set(honest.columns) >= CROSS_COLUMNS
    assert honest.filter(pl.col("timestamp") <= cuts[0]).drop_nulls().height > 0  # not vacuous
    assert changed_by_the_future(lambda b: cross_features(b, features), bars, cuts) == []

    def peeking(b: pl.DataFrame) -> pl.DataFrame:  # the input close of every ticker is its next bar's
        next_close = pl.col("close").shift(-1).over("ticker").fill_null(pl.col("close"))
        return cross_features(b.with_columns(next_close), features)

    assert changed_by_the_future(peeking, bars, cuts) == cuts


# ------------------------------------------------------------------------------------------------
# 5. probabilistic Sharpe ratio
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_low", "high", "low", "skewed"),
    [
        (5, 0.002, -0.02, True),  # rare crashes: skew -4.13, kurtosis 18.05
        (95, 0.02, -0.0005, True),  # rare jackpots: skew +4.13, kurtosis 18.05
        (50, 0.01, -0.008, False),  # a coin: skew 0, kurtosis 1
    ],
)
def test_psr_matches_bailey_lopez_de_prado_for_known_skew_and_kurtosis(n_low, high, low, skewed):
    n = 100
    r, skew, kurt = two_point_returns(n, n_low, high, low)
    dev = r - r.mean()
    assert np.mean(dev**3) / np.mean(dev**2) ** 1.5 == pytest.approx(skew, rel=1e-9)
    assert np.mean(dev**4) / np.mean(dev**2) ** 2 == pytest.approx(kurt, rel=1e-9)
    sr = float(r.mean() / r.std(ddof=1))
    assert sr > 0

    expected = psr_reference(sr, n, skew, kurt)
    assert 0.5 < expected < 0.999  # informative, not saturated
    assert _psr(r, sr) == pytest.approx(expected, rel=1e-9)
    equity = 100.0 * np.concatenate([[1.0], np.cumprod(1.0 + r)])
    assert compute_metrics(equity, 6240).psr == pytest.approx(expected, rel=1e-9)

    normal = psr_reference(sr, n, 0.0, 3.0)
    if skewed:
        assert abs(expected - normal) > 0.03, (expected, normal)


# ------------------------------------------------------------------------------------------------
# 6. ensemble
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "members",
    [
        pytest.param(
            [[0.8, 0.8, 0.0], [0.8, -0.8, 0.0], [0.0, 0.0, 0.5]],  # gross 1.6: alone, the env scales them to 0.5s
            id="members-above-gross-1",
        ),
        pytest.param(
            [[0.6, -0.3, 0.0], [0.0, 0.3, 0.3], [0.3, -0.5, 0.2]],  # each gross <= 1: actions are target weights
            id="members-within-gross-1",
        ),
    ],
)
def test_ensemble_holds_the_mean_of_its_members_target_weights(members):
    arrays, rows = wavy_arrays(), slice(20, 180)
    cfg = frictionless(EnvConfig(lookback=4))
    targets = [np.asarray(m) / max(1.0, float(np.abs(m).sum())) for m in members]  # the env's no-leverage rule
    mean = np.mean(targets, axis=0)
    assert not any(np.allclose(mean, other) for other in (*targets, np.median(targets, axis=0)))

    path = run_policy(Ensemble([Fixed(m) for m in members]), arrays, cfg, rows, 6240)
    fill_rows = np.arange(rows.start + cfg.lookback, rows.stop)
    opens, closes = arrays.prices[fill_rows, :, 0], arrays.prices[fill_rows, :, 3]
    np.testing.assert_array_equal(path.fill_prices, opens)
    held = path.units[1:]
    # without costs equity is continuous through a fill: equity at the open from the close after it
    equity_at_open = path.equity[1:] + (held * (opens - closes)).sum(axis=1)
    realized = held * opens / equity_at_open[:, None]
    # actions are float32: the mean target is exact to float32 precision
    np.testing.assert_allclose(realized, np.broadcast_to(mean, realized.shape), rtol=1e-6, atol=1e-7)
    assert not np.allclose(path.weights[1:], mean, atol=1e-4)  # the marks drift: weights at the fill are the test
