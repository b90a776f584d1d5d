"""retry_call and jittered_delays: full-jitter exponential backoff, bounded attempts and time.

Nothing sleeps for real: ``sleep`` is injected and records the waits it is asked for.
"""

from __future__ import annotations

import logging
import random
import time

import pytest

from ploutos.data.sources import retry
from ploutos.data.sources.retry import (
    MAX_DELAY_S,
    Transient,
    backoff_delays,
    deadline_s,
    jittered_delays,
    retry_call,
)
from ploutos.errors import SourceError

SECRET = "s3cr3t-do-not-leak-9f8e7d"


class Script:
    """A call that raises ``failures`` in order, then returns ``"ok"``; counts its calls."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def run(call: Script, *, attempts: int = 5, backoff_s: float = 1.0, seed: int | None = 0, **kwargs: object):
    """``retry_call`` with a recording sleep; returns (result or exception, waits)."""
    waits: list[float] = []
    rng = random.Random(seed) if seed is not None else None
    try:
        result: object = retry_call(
            call, attempts=attempts, backoff_s=backoff_s, what="alpaca SPY", sleep=waits.append, rng=rng, **kwargs
        )
    except Exception as err:  # returned for the test to inspect
        result = err
    return result, waits


def test_waits_are_full_jitter_under_a_doubling_ceiling() -> None:
    for seed in range(50):
        result, waits = run(Script(*[Transient("HTTP 503")] * 10), attempts=10, backoff_s=1.0, seed=seed)
        assert isinstance(result, SourceError)
        assert len(waits) == 9
        for k, wait in enumerate(waits):
            assert 0.0 <= wait <= min(1.0 * 2**k, MAX_DELAY_S)
    # the draws fill the window rather than sitting at its top (that would be no jitter at all)
    _, waits = run(Script(*[Transient("HTTP 503")] * 10), attempts=10, backoff_s=1.0, seed=1)
    assert any(wait < 0.9 * min(2**k, MAX_DELAY_S) for k, wait in enumerate(waits))


def test_the_ceiling_is_max_delay() -> None:
    assert backoff_delays(10, 1.0)[-1] == MAX_DELAY_S
    _, waits = run(Script(*[Transient("HTTP 503")] * 20), attempts=20, backoff_s=30.0)
    assert max(waits) <= MAX_DELAY_S


def test_two_tasks_with_different_draws_do_not_retry_in_lockstep() -> None:
    _, first = run(Script(Transient("HTTP 429"), Transient("HTTP 429")), seed=1)
    _, second = run(Script(Transient("HTTP 429"), Transient("HTTP 429")), seed=2)
    assert len(first) == len(second) == 2
    assert first != second


def test_default_generator_is_not_reset_by_seeding_random() -> None:
    """Libraries (stable-baselines3) call random.seed(cfg.seed): 64 tasks with one seed must still differ."""
    random.seed(123)
    _, first = run(Script(Transient("HTTP 429"), Transient("HTTP 429")), seed=None)
    random.seed(123)
    _, second = run(Script(Transient("HTTP 429"), Transient("HTTP 429")), seed=None)
    assert first != second


def test_success_after_transients_returns_the_value() -> None:
    call = Script(Transient("HTTP 429"), Transient("HTTP 503"))
    result, waits = run(call)
    assert result == "ok" and call.calls == 3 and len(waits) == 2


def test_attempts_are_bounded_by_max_retries() -> None:
    call = Script(*[Transient("HTTP 500")] * 10)
    result, waits = run(call, attempts=4)
    assert isinstance(result, SourceError)
    assert call.calls == 4 and len(waits) == 3


def test_a_single_attempt_never_waits() -> None:
    call = Script(Transient("HTTP 500"))
    result, waits = run(call, attempts=1)
    assert isinstance(result, SourceError) and "gave up after 1 attempt(s)" in str(result)
    assert call.calls == 1 and waits == []


def test_a_non_transient_error_passes_through_at_once() -> None:
    boom = SourceError("alpaca SPY: HTTP 403 forbidden")
    call = Script(boom)
    result, waits = run(call)
    assert result is boom
    assert call.calls == 1 and waits == []
    other = ValueError("not ours")
    result, waits = run(Script(other))
    assert result is other and waits == []


def test_final_message_format() -> None:
    result, _ = run(Script(*[Transient("HTTP 500 server error", hint="try again later")] * 3), attempts=3)
    assert isinstance(result, SourceError)
    assert str(result) == (
        "alpaca SPY: HTTP 500 server error, gave up after 3 attempt(s); try again later"
        " (or raise data.max_retries / data.retry_backoff_s)"
    )
    assert result.__cause__ is None and result.__suppress_context__


def test_secrets_are_scrubbed_in_messages_and_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    failures = [Transient(f"HTTP 500 for key {SECRET}\nsecond line", hint=f"check {SECRET}")] * 3
    with caplog.at_level(logging.DEBUG, logger="ploutos.data.sources.retry"):
        result, _ = run(Script(*failures), attempts=3, secrets=(SECRET, "abc"))
    assert isinstance(result, SourceError)
    message = str(result)
    assert SECRET not in message and "***" in message and "\n" not in message
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == 2
    assert all(SECRET not in line and "***" in line and "\n" not in line for line in retries)
    assert "retry 1/2" in retries[0] and "retry 2/2" in retries[1]


def test_total_time_is_bounded_by_a_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no wait at all, attempts that overrun their timeout still stop at attempts * (timeout + max wait)."""
    monkeypatch.setattr(retry, "MAX_DELAY_S", 0.0)
    assert deadline_s(10, 0.02) == pytest.approx(0.2)

    class Slow(Script):
        def __call__(self) -> str:
            self.calls += 1
            time.sleep(0.05)  # each attempt overruns its 0.02 s budget
            raise Transient("connection failed (ReadTimeout)")

    call = Slow()
    result, _ = run(call, attempts=10, timeout_s=0.02)
    assert isinstance(result, SourceError)
    assert 1 <= call.calls < 10
    assert f"gave up after {call.calls} attempt(s)" in str(result)


def test_deadline_is_derived_from_attempts_and_timeout() -> None:
    assert deadline_s(5, 60.0) == 5 * (60.0 + MAX_DELAY_S)
    assert deadline_s(0, 1.0) == 1.0 + MAX_DELAY_S


def test_jittered_delays_for_the_broker() -> None:
    rng = random.Random(7)
    for _ in range(50):
        delays = jittered_delays(6, 0.5, rng)
        assert len(delays) == 5
        assert all(0.0 <= d <= c for d, c in zip(delays, backoff_delays(6, 0.5), strict=True))
    assert jittered_delays(1, 0.5) == []
    assert jittered_delays(4, 1.0, random.Random(1)) != jittered_delays(4, 1.0, random.Random(2))
    assert jittered_delays(4, 1.0) != jittered_delays(4, 1.0)  # default generator: OS entropy
