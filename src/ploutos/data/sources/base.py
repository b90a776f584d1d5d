"""The interface every bar source implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime
from typing import ClassVar

import polars as pl


class BarSource(ABC):
    """Fetches hourly bars for one ticker.

    ``fetch`` returns a frame in :data:`ploutos.data.bars.BAR_SCHEMA` (UTC, bar start times)
    covering ``start <= timestamp < end`` as far as the source has data. It need not be sorted
    or validated: :mod:`ploutos.data.validate` does that for every source alike. Constructors do
    no I/O; credentials and network are touched in ``fetch`` only.
    """

    name: ClassVar[str]
    """Short name used in configs and manifests (``data.source``)."""

    @abstractmethod
    def fetch(self, ticker: str, start: datetime | None, end: datetime | None) -> pl.DataFrame:
        """Bars of ``ticker`` in ``[start, end)``; ``None`` means as far as the source reaches."""
