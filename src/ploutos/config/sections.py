"""Typed run configuration: one frozen dataclass per concern.

A config is YAML with one mapping per section (``data:``, ``ppo:``, ...) plus a few top-level
keys. Every field has a type and a one-line doc, kept in its field metadata (see :func:`setting`)
so that it survives installs without sources; derived values are properties. :func:`load` reads
a file (or an embedded config by name), applies the files named by ``extends:`` underneath it and
``--set section.key=value`` overrides on top, and refuses an unknown key, a wrong type or an
impossible value with one line naming the file, the key, what was wrong and, for a misspelt key,
the closest valid name.
"""

from __future__ import annotations

import difflib
import re
import zoneinfo
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from functools import cache
from typing import Literal, TypeVar

from ploutos.errors import ConfigError


class InvalidValue(ConfigError):
    """An impossible value found by a section's own checks; :func:`load` adds where it came from."""

    def __init__(self, key: str, message: str, related: tuple[str, ...] = ()) -> None:
        self.key, self.message, self.related = key, message, related
        super().__init__(f"{key}: {message}")


def _require(condition: bool, key: str, message: str, related: tuple[str, ...] = ()) -> None:
    """Refuse an impossible value; ``related`` names the other keys a cross-field rule reads."""
    if not condition:
        raise InvalidValue(key, message, related)


_T = TypeVar("_T")


def setting(default: _T, doc: str) -> _T:
    """A config field with its default and one-line doc; :func:`~ploutos.config.field_docs` reads the doc back."""
    return field(default=default, metadata={"doc": doc})


TICKER_PATTERN = re.compile(r"[A-Za-z0-9.\-^=_/]{1,32}")
"""A ticker symbol: 1 to 32 letters, digits and ``. - ^ = _ /`` (SPY, BRK.B, BRK/B, ^VIX, EURUSD=X, DX-Y.NYB)."""
TICKER_RULE = "a ticker is 1 to 32 letters, digits and . - ^ = _ / (e.g. SPY, BRK.B, ^VIX, EURUSD=X)"

MAX_SEED = 2**32 - 1
"""numpy's legacy seeding (which stable-baselines3 uses) takes seeds up to 2**32 - 1."""
YEARS = (1900, 2199)
"""Dates in a config (and bar timestamps) must fall in these years: hourly bars exist in neither extreme."""
MAX_SPAN_YEARS = 100
"""Largest span of generated history (source synthetic)."""


def ticker_problem(ticker: object) -> str | None:
    """Why ``ticker`` is not a usable symbol (it names files in the store), or None when it is."""
    if not isinstance(ticker, str) or TICKER_PATTERN.fullmatch(ticker) is None:
        shown = repr(ticker) if len(repr(ticker)) <= 40 else repr(ticker)[:37] + "..."
        length = f" ({len(ticker)} characters)" if isinstance(ticker, str) and len(ticker) > 32 else ""
        return f"{shown}{length} is not a ticker symbol; {TICKER_RULE}"
    if not any(c.isalnum() for c in ticker):
        return f"{ticker!r} is not a ticker symbol: it has no letter or digit"
    return None


def timezone_problem(name: str) -> str | None:
    """Why ``name`` is not an IANA time zone (with the closest one when cheap to find), or None."""
    if name == "UTC" or name in _zones() or len(_zones()) <= 1:  # <= 1: no time zone database to check against
        return None
    close = difflib.get_close_matches(name, sorted(_zones()), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else " (e.g. UTC, America/New_York, Europe/London)"
    return f"unknown time zone '{name}'{hint}"


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


def _bounded(value: int | None, key: str, low: int, high: int) -> None:
    """Refuse an integer outside ``[low, high]`` (None passes: "empty" means derived)."""
    if value is not None:
        _require(value >= low, key, f"must be >= {low}")
        _require(value <= high, key, f"{value} is too large: at most {high}")


SESSION_BARS_PER_YEAR = {"regular": 7 * 252, "extended": 16 * 252, "24h": 24 * 5 * 52, "24x7": 24 * 365}
"""Hourly bars in a year for each session policy; Sharpe ratios are annualized with these."""


@dataclass(frozen=True)
class DataConfig:
    source: Literal["sample", "synthetic", "csv", "alpaca", "yahoo"] = setting(
        "sample", "Where bars come from: the shipped EURUSD sample, generated bars, CSV files, Alpaca or Yahoo."
    )
    tickers: tuple[str, ...] = setting(("EURUSD",), "Symbols to load, in the order assets appear in arrays.")
    start: str | None = setting(
        None, "First bar, ISO date or datetime (UTC unless an offset is given); empty: as far back as the source goes."
    )
    end: str | None = setting(
        None, "End of the range, exclusive, same format; empty: up to now or the end of the file."
    )
    session: Literal["regular", "extended", "24h", "24x7"] = setting(
        "regular", "Trading hours kept: NYSE regular, NYSE extended (04:00-20:00 ET), 24h on weekdays (FX), or 24x7."
    )
    calendar: str = setting(
        "XNYS",
        "exchange_calendars code of the exchange whose holidays and early closes define regular/extended sessions.",
    )
    on_invalid: Literal["refuse", "repair"] = setting(
        "refuse",
        "What validation does with bad bars: stop with an error, or repair and list each repair in the manifest.",
    )
    max_gap_bars: int = setting(0, "In-session bars that may be missing in a row before the gap rule fires.")
    store: str = setting("data/quickstart", "Dataset directory: Parquet partitioned by ticker plus manifest.json.")
    csv_path: str | None = setting(
        None, "For source csv: one file (with a ticker column or one ticker) or a directory of <TICKER>.csv files."
    )
    csv_timezone: str = setting("UTC", "Timezone of naive timestamps in CSV files (aware ones keep their offset).")
    csv_time_format: str | None = setting(
        None, "strftime format of the CSV time column; empty: detect ISO 8601 and dd.mm.yyyy HH:MM:SS."
    )
    alpaca_feed: Literal["iex", "sip"] = setting("iex", "Alpaca market data feed.")
    alpaca_adjustment: Literal["raw", "split", "dividend", "all"] = setting(
        "all", "Corporate-action adjustment Alpaca applies to prices."
    )
    alpaca_url: str | None = setting(
        None, "Base URL of the Alpaca data API; empty: Alpaca's own (set for a proxy or a local fake server)."
    )
    yahoo_url: str | None = setting(
        None, "Base URL of Yahoo's chart API; empty: Yahoo's own (set for a local fake server)."
    )
    max_retries: int = setting(5, "Attempts per request on HTTP 429/5xx, dropped connections and timeouts.")
    request_timeout_s: float = setting(
        60.0, "Seconds a request may wait for the server before it counts as failed (and is retried)."
    )
    retry_backoff_s: float = setting(1.0, "First retry delay in seconds; it doubles on every further attempt.")
    macro: tuple[str, ...] = setting(
        (), "Macro series aligned to the bars as of their publication time: any of VIX, TNX, DXY."
    )
    macro_source: Literal["yahoo", "csv"] = setting(
        "yahoo", "Where macro series come from; csv reads <macro_csv_dir>/<NAME>.csv with date and close columns."
    )
    macro_csv_dir: str | None = setting(None, "Directory of macro CSV files for macro_source csv.")
    macro_lag_minutes: int = setting(
        15, "Minutes after a series' official close before its daily value counts as published."
    )
    synthetic_bars: int = setting(50_000, "Bars per ticker generated by source synthetic.")
    synthetic_seed: int = setting(
        0, "Seed of source synthetic; a ticker's bars depend only on this seed, its name and the session."
    )

    def __post_init__(self) -> None:
        _require(len(self.tickers) > 0, "tickers", "at least one ticker is needed")
        for ticker in self.tickers:
            problem = ticker_problem(ticker)
            _require(problem is None, "tickers", problem or "")
        _require(len(set(self.tickers)) == len(self.tickers), "tickers", "a ticker is listed twice")
        for key in ("start", "end"):
            value = getattr(self, key)
            if value is not None:
                _check_moment(key, value)
        if self.start and self.end:
            _require(
                self.start_utc < self.end_utc, "end", f"end {self.end} is not after start {self.start}", ("start",)
            )
        zone_problem = timezone_problem(self.csv_timezone)
        _require(zone_problem is None, "csv_timezone", zone_problem or "")
        _bounded(self.max_gap_bars, "max_gap_bars", 0, 10_000_000)
        _bounded(self.max_retries, "max_retries", 1, 100)
        _require(self.retry_backoff_s >= 0, "retry_backoff_s", "must be >= 0")
        _require(0 < self.request_timeout_s <= 86_400, "request_timeout_s", "must be > 0 and at most 86400 (a day)")
        _bounded(self.macro_lag_minutes, "macro_lag_minutes", 0, 7 * 24 * 60)
        _require(self.synthetic_bars >= 2, "synthetic_bars", "must be >= 2")
        most = MAX_SPAN_YEARS * self.bars_per_year
        _require(
            self.synthetic_bars <= most,
            "synthetic_bars",
            f"{self.synthetic_bars} bars are more than {MAX_SPAN_YEARS} years of the {self.session} session "
            f"(at most {most})",
            ("session",),
        )
        _bounded(self.synthetic_seed, "synthetic_seed", 0, MAX_SEED)
        unknown = sorted(set(self.macro) - {"VIX", "TNX", "DXY"})
        _require(not unknown, "macro", f"unknown series {', '.join(unknown)}; known: VIX, TNX, DXY")
        _require(
            self.source != "csv" or self.csv_path is not None, "csv_path", "source csv needs csv_path", ("source",)
        )
        _require(
            self.macro_source != "csv" or not self.macro or self.macro_csv_dir is not None,
            "macro_csv_dir",
            "macro_source csv needs macro_csv_dir",
            ("macro_source", "macro"),
        )
        _require(len(set(self.macro)) == len(self.macro), "macro", "a series is listed twice")
        for key in ("store", "calendar", "csv_path", "macro_csv_dir"):
            value = getattr(self, key)
            _require(value is None or bool(value.strip()), key, "must not be empty")

    @property
    def start_utc(self) -> datetime | None:
        """``start`` as an aware UTC datetime."""
        return _utc(self.start)

    @property
    def end_utc(self) -> datetime | None:
        """``end`` as an aware UTC datetime."""
        return _utc(self.end)

    @property
    def bars_per_year(self) -> int:
        """Hourly bars in a trading year under the session policy."""
        return SESSION_BARS_PER_YEAR[self.session]


@dataclass(frozen=True)
class FeaturesConfig:
    windows: tuple[int, ...] = setting(
        (5, 10, 20, 50, 100, 200), "Lookback windows (bars) of the trend and volatility features."
    )
    normalize: Literal["zscore", "robust", "none"] = setting(
        "zscore", "How observation features are scaled, with statistics from the fold's training window only."
    )
    clip: float = setting(5.0, "Normalized features are clipped to [-clip, clip].")
    max_saturation: float = setting(
        0.02, "Largest share of a feature's values at the clip bounds before the build fails."
    )
    max_ffill_bars: int = setting(2, "Missing bars forward-filled at most this many in a row; longer gaps are masked.")
    cross_asset: bool = setting(True, "Add cross-asset features (return against the universe, rank).")

    def __post_init__(self) -> None:
        _require(len(self.windows) > 0 and min(self.windows) >= 2, "windows", "windows must be >= 2 bars")
        _require(max(self.windows) <= 100_000, "windows", "windows must be at most 100000 bars")
        _require(len(self.windows) <= 64, "windows", "at most 64 windows")
        _require(self.clip > 0, "clip", "must be > 0")
        _require(0 <= self.max_saturation <= 1, "max_saturation", "must be a share between 0 and 1")
        _bounded(self.max_ffill_bars, "max_ffill_bars", 0, 1_000_000)


@dataclass(frozen=True)
class CostRates:
    """The cost settings an env trades with, once the profile and the config's overrides are resolved."""

    commission_bps: float
    """Commission, bp of traded notional."""
    half_spread_bps: float
    """Half the bid-ask spread, bp of traded notional."""
    slippage_range_mult: float
    """Slippage per unit of notional as a multiple of the fill bar's relative range ``(high - low) / close``."""
    impact_coef: float
    """``Y`` of the square-root law ``Y * sigma * sqrt(units / average volume)`` per unit of notional; 0: off."""
    borrow_bps_per_year: float
    """Financing of short positions, bp of short notional per year."""


COST_PROFILES: dict[str, CostRates] = {
    # FX majors on an ECN: ~$2 per $100k a side, EURUSD spread ~0.9 bp; the volume column of FX data is a tick
    # count, not units traded, so square-root impact has nothing to stand on and is off; rollover is not modelled.
    "fx": CostRates(commission_bps=0.2, half_spread_bps=0.5, slippage_range_mult=0.02, impact_coef=0.0,
                    borrow_bps_per_year=0.0),
    # Liquid US equities and ETFs: ~$0.005 a share on a $100 share, 1-2 bp spreads on large caps, Y ~ 1 (Toth et
    # al. 2011), general-collateral borrow ~0.5 % a year.
    "equity": CostRates(commission_bps=0.5, half_spread_bps=1.0, slippage_range_mult=0.05, impact_coef=1.0,
                        borrow_bps_per_year=50.0),
    # Crypto on a major exchange: 0.1 % taker fee, a few bp of spread, perpetual funding ~10 % a year for shorts.
    "crypto": CostRates(commission_bps=10.0, half_spread_bps=2.0, slippage_range_mult=0.05, impact_coef=1.0,
                        borrow_bps_per_year=1000.0),
}  # fmt: skip
"""Cost defaults per asset class; an env field set in the config overrides its profile value."""


@dataclass(frozen=True)
class EnvConfig:
    lookback: int = setting(32, "Bars of features in one observation.")
    action_mode: Literal["continuous", "discrete"] = setting(
        "continuous", "Continuous target weights per asset, or buy/hold/sell per asset."
    )
    long_only: bool = setting(False, "Restrict target weights to [0, 1] instead of [-1, 1].")
    initial_cash: float = setting(100_000.0, "Cash at the start of an episode.")
    rebalance_band: float = setting(
        0.0, "No trade in an asset while |target - current weight| is at most this (weight units, 0 to 2)."
    )
    max_weight_change: float | None = setting(
        None, "Largest change of an asset's weight at one decision (partial adjustment); empty: no limit."
    )
    decide_every: int = setting(
        1, "Bars between decisions; on the bars between, the action is ignored and positions are held."
    )
    cost_profile: Literal["fx", "equity", "crypto"] = setting(
        "equity", "Asset class whose cost defaults apply (COST_PROFILES in config/sections.py)."
    )
    commission_bps: float | None = setting(None, "Commission, bp of traded notional; empty: the profile's.")
    half_spread_bps: float | None = setting(
        None, "Half the bid-ask spread, bp of traded notional, paid on every fill; empty: the profile's."
    )
    slippage_range_mult: float | None = setting(
        None, "Slippage as this multiple of the fill bar's relative range (high - low) / close; empty: the profile's."
    )
    impact_coef: float | None = setting(
        None,
        "Y of the square-root law: impact per unit of notional Y * bar volatility * sqrt(units traded / average bar "
        "volume); 0: off; empty: the profile's (off for fx, whose volume is a tick count).",
    )
    impact_window: int = setting(
        100, "Bars before the fill over which impact's volatility and average volume are measured."
    )
    borrow_bps_per_year: float | None = setting(
        None, "Financing of short positions, bp of short notional a year, accrued every bar; empty: the profile's."
    )
    sec_fee_per_million: float = setting(
        0.0, "Regulatory fee on sells in currency per million of sell notional (US SEC Section 31: 27.80 in 2024)."
    )
    reward: Literal["log_return", "dsr"] = setting(
        "log_return", "Reward: log return of equity, or the Moody-Saffell differential Sharpe ratio."
    )
    dsr_eta: float = setting(0.01, "Adaptation rate of the differential Sharpe ratio's moving moments.")
    dsr_clip: float = setting(10.0, "The differential Sharpe ratio of a step is clipped to [-dsr_clip, dsr_clip].")
    drawdown_penalty: float = setting(0.0, "Weight of the drawdown penalty subtracted from the reward.")
    turnover_penalty: float = setting(
        0.0,
        "Reward minus this times the step's turnover, sum |change of weight| over assets (traded notional over "
        "equity: 1.0 for going from cash to fully invested, 2.0 for a flip from short to long).",
    )
    episode_bars: int = setting(1024, "Training episodes are truncated after this many bars.")
    bankruptcy_equity: float = setting(
        0.5, "An episode terminates when equity falls below this share of the initial cash."
    )
    obs_layout: Literal["flat", "asset_lookback_feature", "reference"] = setting(
        "flat",
        "Observation layout: one flat vector (MLP, LSTM), (asset, lookback, feature) for attention, or reference: "
        "the decision row and the portfolio, the policy's encoder reads the window from the store.",
    )

    def __post_init__(self) -> None:
        _bounded(self.lookback, "lookback", 1, 10_000)
        _require(0 < self.initial_cash <= 1e15, "initial_cash", "must be > 0 and at most 1e15")
        for key in (
            "commission_bps", "half_spread_bps", "slippage_range_mult", "impact_coef", "borrow_bps_per_year",
            "sec_fee_per_million",
        ):  # fmt: skip
            value = getattr(self, key)
            _require(value is None or value >= 0, key, "costs cannot be negative")
        _bounded(self.impact_window, "impact_window", 2, 1_000_000)
        _require(0 <= self.rebalance_band < 2, "rebalance_band", "must be in [0, 2): weights change by at most 2")
        _require(
            self.max_weight_change is None or 0 < self.max_weight_change <= 2,
            "max_weight_change",
            "must be in (0, 2], or empty for no limit",
        )
        _bounded(self.decide_every, "decide_every", 1, 100_000)
        _require(0 < self.dsr_eta < 1, "dsr_eta", "must be between 0 and 1")
        _require(self.dsr_clip > 0, "dsr_clip", "must be > 0")
        _require(
            self.drawdown_penalty >= 0 and self.turnover_penalty >= 0, "drawdown_penalty", "penalties must be >= 0"
        )
        _bounded(self.episode_bars, "episode_bars", 2, 100_000_000)
        _require(0 <= self.bankruptcy_equity < 1, "bankruptcy_equity", "must be a share in [0, 1)")

    @property
    def costs(self) -> CostRates:
        """The profile's cost rates with every field the config sets in their place."""
        profile = COST_PROFILES[self.cost_profile]
        return CostRates(
            **{
                f.name: getattr(self, f.name) if getattr(self, f.name) is not None else getattr(profile, f.name)
                for f in fields(CostRates)
            }
        )


@dataclass(frozen=True)
class PPOConfig:
    algo: Literal["ppo", "recurrent_ppo"] = setting(
        "ppo", "PPO with an MLP policy, or sb3-contrib RecurrentPPO with an LSTM."
    )
    total_timesteps: int = setting(100_000, "Environment steps to train one member for.")
    n_steps: int = setting(256, "Rollout length per environment between updates.")
    batch_size: int = setting(256, "Minibatch size of the PPO update.")
    n_epochs: int = setting(5, "Passes over each rollout.")
    learning_rate: float = setting(3e-4, "Adam learning rate.")
    gamma: float = setting(0.99, "Discount factor.")
    gae_lambda: float = setting(0.95, "GAE smoothing factor.")
    clip_range: float = setting(0.2, "PPO clipping range.")
    ent_coef: float = setting(0.0, "Entropy bonus coefficient.")
    vf_coef: float = setting(0.5, "Value loss coefficient.")
    max_grad_norm: float = setting(0.5, "Gradient clipping norm.")
    net_arch: tuple[int, ...] = setting((64, 64), "Hidden layer sizes of the policy and value networks.")
    log_std_init: float = setting(
        0.0, "Initial log standard deviation of the Gaussian policy (continuous actions): exploration noise."
    )
    lstm_hidden: int = setting(64, "LSTM hidden size for recurrent_ppo.")
    encoder: Literal["flat", "shared", "attention"] = setting(
        "flat",
        "How the policy reads the window: flattened into the MLP; shared: one embedding per (asset, bar) shared "
        "across assets, pooled over the lookback and the assets; or attention: shared's per-asset summaries, then "
        "one self-attention layer across the assets (shared and attention need env.obs_layout reference).",
    )
    encoder_embed: int = setting(16, "Width of the shared and attention encoders' per-(asset, bar) embedding.")
    encoder_heads: int = setting(2, "Attention heads of the attention encoder (divides encoder_embed).")
    asset_heads: bool = setting(
        True,
        "With the shared and attention encoders under ppo: one small actor shared by every asset reads that "
        "asset's summary, the market and the portfolio (off: SB3's MLP over all features; recurrent_ppo's LSTM "
        "mixes the assets, so it always uses the MLP).",
    )
    checkpoint_every: int = setting(50_000, "Environment steps between checkpoints (also written on SIGTERM/SIGUSR2).")
    device: Literal["auto", "cpu", "cuda"] = setting(
        "auto", "Where the learner runs; auto takes a GPU when there is one."
    )

    def __post_init__(self) -> None:
        for key, most in (
            ("total_timesteps", 10**12),
            ("n_steps", 1_000_000),
            ("batch_size", 10_000_000),
            ("n_epochs", 1_000),
            ("lstm_hidden", 65_536),
            ("encoder_embed", 65_536),
            ("encoder_heads", 65_536),
            ("checkpoint_every", 10**12),
        ):
            _bounded(getattr(self, key), key, 1, most)
        _require(
            self.encoder != "attention" or self.encoder_embed % self.encoder_heads == 0,
            "encoder_heads",
            f"{self.encoder_heads} heads do not divide encoder_embed {self.encoder_embed} (each head reads "
            "encoder_embed / encoder_heads dimensions)",
            related=("encoder_embed", "encoder"),
        )
        _require(self.learning_rate > 0, "learning_rate", "must be > 0")
        _require(0 < self.gamma <= 1, "gamma", "must be in (0, 1]")
        _require(0 <= self.gae_lambda <= 1, "gae_lambda", "must be in [0, 1]")
        _require(self.clip_range > 0, "clip_range", "must be > 0")
        _require(-20 <= self.log_std_init <= 5, "log_std_init", "must be in [-20, 5]")
        _require(all(1 <= width <= 65_536 for width in self.net_arch), "net_arch", "layer sizes must be 1 to 65536")
        _require(len(self.net_arch) <= 64, "net_arch", "at most 64 layers")

    @property
    def per_asset_heads(self) -> bool:
        """Whether the actor is per-asset heads (:mod:`ploutos.train.policies`): asked for, and applicable."""
        return self.asset_heads and self.encoder != "flat" and self.algo == "ppo"

    @property
    def asset_head_width(self) -> int:
        """Hidden width of the per-asset heads: the width of the asset summary they read (2 x encoder_embed)."""
        return 2 * self.encoder_embed


@dataclass(frozen=True)
class WalkForwardConfig:
    mode: Literal["rolling", "expanding"] = setting(
        "rolling", "Rolling train windows of fixed length, or expanding ones from the first bar."
    )
    train_months: int = setting(6, "Length of each training window in months.")
    test_months: int = setting(2, "Length of each out-of-sample test window in months.")
    step_months: int | None = setting(
        None, "Months between fold starts; empty: test_months (test windows tile without overlap)."
    )
    embargo_bars: int = setting(24, "Bars dropped between train and test so that no label or feature straddles them.")
    max_folds: int | None = setting(None, "Keep only the latest this-many folds; empty: every fold that fits.")
    validation_months: int = setting(
        1,
        "The last months of each training window, embargoed from the rows trained on, that choose the model; 0: none.",
    )
    validate_every: int = setting(
        4096, "Environment steps (over every rank) between evaluations on the validation window."
    )
    select_by: Literal["sharpe", "total_return", "last"] = setting(
        "sharpe", "Validation metric that picks the kept checkpoint (flat counts as Sharpe 0); last: the final model."
    )
    patience: int = setting(
        0, "Stop training after this many validations without a better metric; 0: train to total_timesteps."
    )

    def __post_init__(self) -> None:
        months = 12 * MAX_SPAN_YEARS
        _bounded(self.train_months, "train_months", 1, months)
        _bounded(self.validation_months, "validation_months", 0, months)
        _require(
            self.validation_months < self.train_months,
            "validation_months",
            f"{self.validation_months} must be less than train_months {self.train_months}: nothing would be left to "
            "train on",
            ("train_months",),
        )
        _bounded(self.validate_every, "validate_every", 1, 10**12)
        _bounded(self.patience, "patience", 0, 1_000_000)
        _bounded(self.test_months, "test_months", 1, months)
        _bounded(self.step_months, "step_months", 1, months)
        _bounded(self.embargo_bars, "embargo_bars", 0, 1_000_000)
        _bounded(self.max_folds, "max_folds", 1, 100_000)

    @property
    def step(self) -> int:
        """Months between fold starts."""
        return self.step_months or self.test_months


@dataclass(frozen=True)
class EnsembleConfig:
    members: int = setting(2, "Independently seeded agents trained per fold.")
    combine: Literal["mean", "vote"] = setting(
        "mean", "How members' actions combine: mean target weight, or majority vote (discrete actions)."
    )

    def __post_init__(self) -> None:
        _require(self.members >= 1, "members", "an ensemble needs at least 1 member")
        _bounded(self.members, "members", 1, 1_000)


@dataclass(frozen=True)
class HardwareConfig:
    cpus: int | None = setting(None, "Cores to use; empty: the CPU affinity mask and Slurm's allocation.")
    gpus: int | None = setting(None, "GPUs to use; empty: detect.")
    mpi_ranks: int = setting(1, "Data-parallel learner ranks per node.")
    n_envs: int | None = setting(None, "Environments per rank; empty: derived from the cores.")
    env_workers: int | None = setting(
        None, "Env worker processes per rank; 0: the envs step in the learner's process; empty: the plan decides."
    )
    envs_per_worker: int | None = setting(None, "Environments stepped by one worker process; empty: derived.")
    learner_threads: int | None = setting(
        None, "Torch threads of the learner; empty: derived (env workers always get 1)."
    )
    keep_freed_memory: bool = setting(
        True, "Learners keep freed memory for reuse (glibc's malloc thresholds raised); false: glibc's defaults."
    )

    def __post_init__(self) -> None:
        for key in ("cpus", "n_envs", "envs_per_worker", "learner_threads"):
            _bounded(getattr(self, key), key, 1, 65_536)
        _bounded(self.env_workers, "env_workers", 0, 65_536)
        _bounded(self.gpus, "gpus", 0, 1_024)
        _bounded(self.mpi_ranks, "mpi_ranks", 1, 65_536)


@dataclass(frozen=True)
class SlurmConfig:
    partition: str | None = setting(None, "Partition to submit to; empty: the cluster's default.")
    account: str | None = setting(None, "Account to charge; empty: the user's default.")
    qos: str | None = setting(None, "Quality of service; empty: the default.")
    time_limit: str = setting("02:00:00", "Wall time per array task, HH:MM:SS or D-HH:MM:SS.")
    mem_gb: int | None = setting(None, "Memory per node in GB; empty: the whole node (with --exclusive).")
    exclusive: bool = setting(True, "One array task per whole node.")
    array_parallelism: int = setting(64, "Array tasks running at once.")
    signal_before_s: int = setting(300, "Seconds before the time limit at which tasks are signalled to checkpoint.")
    extra_directives: tuple[str, ...] = setting((), "Extra #SBATCH lines for site specifics, e.g. '--constraint=amd'.")

    def __post_init__(self) -> None:
        parts = self.time_limit.replace("-", ":").split(":")
        _require(
            2 <= len(parts) <= 4 and all(p.isdigit() for p in parts),
            "time_limit",
            f"'{self.time_limit}' is not HH:MM:SS or D-HH:MM:SS",
        )
        _bounded(self.mem_gb, "mem_gb", 1, 1_048_576)
        _bounded(self.array_parallelism, "array_parallelism", 1, 1_000_000)
        _bounded(self.signal_before_s, "signal_before_s", 0, 65_535)  # Slurm's --signal=SIG@TIME limit

    @property
    def time_limit_minutes(self) -> int:
        """``time_limit`` in whole minutes, rounded up (submitit's ``timeout_min``)."""
        days, _, clock = self.time_limit.rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        if days:  # Slurm: D-HH, D-HH:MM, D-HH:MM:SS
            parts += [0] * (3 - len(parts))
        hours, minutes, seconds = [0] * (3 - len(parts)) + parts  # else MM:SS or HH:MM:SS
        return int(days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)


@dataclass(frozen=True)
class PaperConfig:
    max_weight: float = setting(0.25, "Largest absolute target weight per asset.")
    max_daily_turnover: float = setting(1.0, "Largest traded notional per day as a share of equity.")
    drawdown_halt: float = setting(0.10, "Stop trading when equity falls this share below its peak.")
    poll_seconds: int = setting(60, "Seconds between checks for a new bar in --loop mode.")
    market_hours_only: bool = setting(True, "Send orders only while the market is open.")
    trading_url: str | None = setting(None, "Base URL of the Alpaca trading API; empty: Alpaca's paper endpoint.")
    drift_halt: float = setting(
        0.5,
        "Stop trading when this share of (feature, asset) pairs drifts from the fold's training window "
        "(PSI >= 0.25 and KS past its 5% critical value, over the last drift_bars bars); 0 turns the check off.",
    )
    drift_bars: int = setting(
        1000,
        "Recent bars scored for drift, by paper trading and by `ploutos drift` (fewer: long-window features "
        "of a short stretch differ from a whole training window even without drift).",
    )

    def __post_init__(self) -> None:
        _require(0 < self.max_weight <= 1, "max_weight", "must be in (0, 1]")
        _require(0 <= self.drift_halt <= 1, "drift_halt", "must be in [0, 1] (0: no drift check)")
        _bounded(self.drift_bars, "drift_bars", 20, 100_000)
        _require(self.max_daily_turnover > 0, "max_daily_turnover", "must be > 0")
        _require(0 < self.drawdown_halt <= 1, "drawdown_halt", "must be in (0, 1]")
        _bounded(self.poll_seconds, "poll_seconds", 1, 86_400)


@dataclass(frozen=True)
class Config:
    name: str = setting("quickstart", "Run name; results go to <results_dir>/<name>.")
    seed: int = setting(0, "Base seed; fold and member seeds derive from it.")
    results_dir: str = setting("results", "Directory that holds one folder per run.")
    data: DataConfig = field(
        default_factory=DataConfig, metadata={"doc": "Bars: source, tickers, range, session policy, validation, store."}
    )
    features: FeaturesConfig = field(
        default_factory=FeaturesConfig, metadata={"doc": "Feature engine: windows, normalization, missing bars."}
    )
    env: EnvConfig = field(
        default_factory=EnvConfig,
        metadata={"doc": "Trading environment: observation, actions, costs, reward, episodes."},
    )
    ppo: PPOConfig = field(default_factory=PPOConfig, metadata={"doc": "Learner: algorithm and hyperparameters."})
    walkforward: WalkForwardConfig = field(default_factory=WalkForwardConfig, metadata={"doc": "Walk-forward folds."})
    ensemble: EnsembleConfig = field(
        default_factory=EnsembleConfig, metadata={"doc": "Members per fold and how they combine."}
    )
    hardware: HardwareConfig = field(
        default_factory=HardwareConfig, metadata={"doc": "Cores, GPUs, ranks and env workers."}
    )
    slurm: SlurmConfig = field(default_factory=SlurmConfig, metadata={"doc": "Slurm submission."})
    paper: PaperConfig = field(default_factory=PaperConfig, metadata={"doc": "Paper trading risk limits."})

    def __post_init__(self) -> None:
        _require(bool(self.name.strip()) and "/" not in self.name, "name", "must be a non-empty name without '/'")
        _require(bool(self.results_dir.strip()), "results_dir", "must not be empty (use . for this folder)")
        _require(self.name not in (".", ".."), "name", f"'{self.name}' is not a run name: it names a folder itself")
        _require(len(self.name.encode()) <= 200, "name", "must be at most 200 bytes (it names a folder)")
        _bounded(self.seed, "seed", 0, MAX_SEED)
        _require(
            self.ppo.encoder == "flat" or self.env.obs_layout == "reference",
            "ppo.encoder",
            f"{self.ppo.encoder} reads the window from the store: it needs env.obs_layout reference, not "
            f"{self.env.obs_layout}",
            related=("env.obs_layout",),
        )
        data, wf = self.data, self.walkforward
        if data.start and data.end:
            span_months = _months_between(data.start_utc, data.end_utc)
            needed = wf.train_months + wf.test_months
            _require(
                needed <= span_months,
                "walkforward.test_months",
                f"train {wf.train_months} + test {wf.test_months} months do not fit in the data range "
                f"{data.start}..{data.end} ({span_months:.1f} months)",
                related=("data.start", "data.end", "walkforward.train_months"),
            )

    @property
    def run_dir(self) -> str:
        """Folder of this run's results."""
        return f"{self.results_dir.rstrip('/')}/{self.name}"


def _check_moment(key: str, value: str) -> None:
    """Refuse a start/end that is not an ISO date or datetime, or lies outside :data:`YEARS`."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as err:
        reason = str(err).rstrip(".")
        if "offset" in reason:
            reason = "a UTC offset must be less than 24 hours"
        why = "" if reason.startswith("Invalid isoformat") else f" ({reason})"
        raise InvalidValue(key, f"'{value}' is not an ISO date or datetime{why}; e.g. 2021-01-04") from None
    _require(YEARS[0] <= parsed.year <= YEARS[1], key, f"'{value}' is outside the years {YEARS[0]}..{YEARS[1]}")


def _utc(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


def _months_between(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() / (365.2425 / 12 * 86400)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "features": FeaturesConfig,
    "env": EnvConfig,
    "ppo": PPOConfig,
    "walkforward": WalkForwardConfig,
    "ensemble": EnsembleConfig,
    "hardware": HardwareConfig,
    "slurm": SlurmConfig,
    "paper": PaperConfig,
}
"""Config sections by YAML key."""
