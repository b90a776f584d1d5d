"""Exponential backoff with full jitter, shared by the network bar sources and the paper broker.

A source wraps each request in :func:`retry_call` and translates its client library's failures
into two kinds: :class:`Transient` (HTTP 429, 5xx, a dropped connection: worth waiting for) and
:class:`~ploutos.errors.SourceError` (bad keys, a bad symbol: waiting will not help, so it is
raised at once). Keeping the policy here, and the classification in each source, means every
source waits the same way and gives up with the same kind of one-line message.

The policy (built on ``tenacity``):

* **Wait: full jitter.** Before retry ``k`` (``k = 0`` after the first failure) the wait is drawn
  uniformly from ``[0, min(retry_backoff_s * 2**k, MAX_DELAY_S)]``. Without jitter the 64 tasks
  of a Slurm array that hit a rate limit together would all come back together, again and again;
  with it they spread out.
  The draws come from :data:`_RNG`, an OS-entropy generator, so that a library seeding
  :mod:`random` (stable-baselines3 does) or a fork cannot put tasks back in lockstep.
* **Stop: attempts, then a deadline.** At most ``data.max_retries`` attempts in all, and no
  further attempt once an attempt fails more than :func:`deadline_s` =
  ``attempts * (request_timeout_s + MAX_DELAY_S)`` seconds after the first began. Each attempt
  is bounded by ``request_timeout_s`` (set by the sources on their HTTP clients) and each wait
  by ``MAX_DELAY_S``, so the attempt count normally ends things first; the deadline is the
  backstop for attempts that overrun their timeout (a read timeout is per socket read, and
  yfinance re-asks once inside an attempt). Past the deadline at most the wait and attempt
  already under way are added.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import NoReturn, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay
from tenacity.wait import wait_base

from ploutos.errors import SourceError

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_DELAY_S = 60.0
"""Ceiling of a single wait, so that a large ``max_retries`` cannot stall a job for hours."""

_RNG: random.Random = random.SystemRandom()
"""Source of the jitter: OS entropy, never reseeded by :func:`random.seed`, different in every process."""


class Transient(Exception):
    """A failure worth retrying; ``str()`` is a one-line reason such as ``HTTP 503``.

    ``hint`` says what the user can do if it persists after the last attempt.
    """

    def __init__(self, reason: str, *, hint: str = "try again later") -> None:
        super().__init__(reason)
        self.hint = hint


def _ceiling(retry: int, first_delay_s: float) -> float:
    """The largest wait before retry ``retry`` (0 after the first failure)."""
    return min(first_delay_s * 2**retry, MAX_DELAY_S)


class _FullJitter(wait_base):
    """Full jitter: before retry ``k`` a wait uniform in ``[0, _ceiling(k)]``, drawn from ``rng``
    (tenacity's ``wait_random_exponential`` draws from the global :mod:`random`)."""

    def __init__(self, first_delay_s: float, rng: random.Random) -> None:
        self.first_delay_s, self.rng = first_delay_s, rng

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.rng.uniform(0.0, _ceiling(retry_state.attempt_number - 1, self.first_delay_s))


def backoff_delays(attempts: int, first_delay_s: float) -> list[float]:
    """The ceilings of the waits between ``attempts`` tries: ``first, 2*first, 4*first, ...`` capped at
    :data:`MAX_DELAY_S`. Actual waits are drawn below them (:func:`jittered_delays`)."""
    return [_ceiling(retry, first_delay_s) for retry in range(max(attempts - 1, 0))]


def jittered_delays(attempts: int, first_delay_s: float, rng: random.Random | None = None) -> list[float]:
    """The waits between ``attempts`` tries, with full jitter: each uniform in ``[0, ceiling]`` of
    :func:`backoff_delays`. For retry loops that cannot be handed to :func:`retry_call`."""
    rng = rng if rng is not None else _RNG
    return [rng.uniform(0.0, ceiling) for ceiling in backoff_delays(attempts, first_delay_s)]


def deadline_s(attempts: int, timeout_s: float) -> float:
    """Seconds after the first attempt began past which a failed attempt is not retried."""
    return max(attempts, 1) * (timeout_s + MAX_DELAY_S)


def retry_call(
    call: Callable[[], T],
    *,
    attempts: int,
    backoff_s: float,
    what: str,
    timeout_s: float | None = None,
    secrets: Iterable[str] = (),
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """Run ``call`` until it succeeds, retrying on :class:`Transient` with jittered exponential backoff.

    ``what`` names the request in messages (``"alpaca SPY 2024-01-01..2025-01-01"``). At most
    ``attempts`` tries and, when ``timeout_s`` (the per-request timeout) is given, none after
    :func:`deadline_s`. After the last attempt the final reason becomes a :class:`SourceError`; any
    other exception passes through untouched, at once. ``secrets`` are masked in every message and
    log line this function writes. ``sleep`` and ``rng`` are there for tests.
    """
    attempts = max(int(attempts), 1)
    secrets = tuple(secrets)
    stop = stop_after_attempt(attempts)
    if timeout_s is not None:
        stop = stop | stop_after_delay(deadline_s(attempts, timeout_s))

    def warn(state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        reason = scrub(str(err), secrets)
        log.warning("%s: %s; retry %d/%d in %.2gs", what, reason, state.attempt_number, attempts - 1, delay)

    def give_up(state: RetryCallState) -> NoReturn:
        err = state.outcome.exception() if state.outcome else None
        hint = getattr(err, "hint", "try again later")
        raise SourceError(
            f"{what}: {scrub(str(err), secrets)}, gave up after {state.attempt_number} attempt(s); "
            f"{scrub(hint, secrets)} (or raise data.max_retries / data.retry_backoff_s)"
        ) from None

    retrying = Retrying(
        retry=retry_if_exception_type(Transient),
        stop=stop,
        wait=_FullJitter(backoff_s, rng if rng is not None else _RNG),
        sleep=sleep,
        before_sleep=warn,
        retry_error_callback=give_up,
    )
    return retrying(call)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` on one line with every secret replaced by ``***``.

    Secrets shorter than 6 characters are left alone: masking them would mangle ordinary words, and
    no real API key is that short.
    """
    for secret in secrets:
        if len(secret) >= 6:
            text = text.replace(secret, "***")
    return " ".join(text.split())


def one_line(text: str, limit: int = 200) -> str:
    """The first ``limit`` characters of ``text`` with whitespace collapsed, for server messages."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
