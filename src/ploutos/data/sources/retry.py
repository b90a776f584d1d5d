"""Exponential backoff shared by the network bar sources.

A source wraps each request in :func:`retry_call` and translates its client library's failures
into two kinds: :class:`Transient` (HTTP 429, 5xx, a dropped connection: worth waiting for) and
:class:`~ploutos.errors.SourceError` (bad keys, a bad symbol: waiting will not help, so it is
raised at once). Keeping the loop here, and the classification in each source, means every
source waits the same way (``cfg.max_retries`` attempts, ``cfg.retry_backoff_s`` doubling) and
gives up with the same kind of one-line message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from ploutos.errors import SourceError

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_DELAY_S = 60.0
"""Ceiling of a single wait, so that a large ``max_retries`` cannot stall a job for hours."""


class Transient(Exception):
    """A failure worth retrying; ``str()`` is a one-line reason such as ``HTTP 503``.

    ``hint`` says what the user can do if it persists after the last attempt.
    """

    def __init__(self, reason: str, *, hint: str = "try again later") -> None:
        super().__init__(reason)
        self.hint = hint


def backoff_delays(attempts: int, first_delay_s: float) -> list[float]:
    """The waits between ``attempts`` tries: ``first, 2*first, 4*first, ...`` capped at :data:`MAX_DELAY_S`."""
    return [min(first_delay_s * 2**i, MAX_DELAY_S) for i in range(max(attempts - 1, 0))]


def retry_call(
    call: Callable[[], T],
    *,
    attempts: int,
    backoff_s: float,
    what: str,
    secrets: Iterable[str] = (),
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``call`` until it succeeds, retrying on :class:`Transient` with exponential backoff.

    ``what`` names the request in messages (``"alpaca SPY 2024-01-01..2025-01-01"``). After the last
    attempt the final reason becomes a :class:`SourceError`; any other exception passes through
    untouched. ``secrets`` are masked in every message this function writes.
    """
    delays = backoff_delays(max(attempts, 1), backoff_s)
    for attempt in range(1, max(attempts, 1) + 1):
        try:
            return call()
        except Transient as err:
            reason = scrub(str(err), secrets)
            if attempt > len(delays):
                raise SourceError(
                    f"{what}: {reason}, gave up after {attempt} attempt(s); {err.hint}"
                    " (or raise data.max_retries / data.retry_backoff_s)"
                ) from None
            delay = delays[attempt - 1]
            log.warning("%s: %s; retry %d/%d in %.2gs", what, reason, attempt, len(delays), delay)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


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
