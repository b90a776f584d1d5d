"""Progress bars for long steps, one policy everywhere.

In a terminal the bar redraws as usual. In a file (a Slurm log, CI) a redrawing bar would be
thousands of carriage returns, so it prints a plain line at most every 30 seconds and at the end.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

LOG_INTERVAL_S = 30.0
"""Seconds between progress lines when stderr is not a terminal."""


def progress_bar(iterable: Iterable[T] | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (or a manual one with ``total=``); silent when not ``enabled``."""
    interactive = sys.stderr.isatty()
    options: dict[str, Any] = {"disable": not enabled, "dynamic_ncols": interactive}
    if not interactive:
        options.update(mininterval=LOG_INTERVAL_S, ascii=True)
    return tqdm(iterable, **{**options, **kwargs})
