"""Bar sources behind one interface (:class:`BarSource`), chosen by ``data.source``."""

from __future__ import annotations

from importlib import import_module

from ploutos.config import DataConfig
from ploutos.data.sources.base import BarSource

SOURCES: dict[str, str] = {
    "sample": "ploutos.data.sources.sample:SampleSource",
    "synthetic": "ploutos.data.sources.synthetic:SyntheticSource",
    "csv": "ploutos.data.sources.csv:CsvSource",
    "alpaca": "ploutos.data.sources.alpaca:AlpacaSource",
    "yahoo": "ploutos.data.sources.yahoo:YahooSource",
}
"""Source name -> ``module:class``; imported on use, so alpaca-py and yfinance load only when needed."""

NETWORK_SOURCES = frozenset({"alpaca", "yahoo"})
"""Sources that download and so take a ``progress`` flag."""


def make_source(cfg: DataConfig, *, progress: bool = True) -> BarSource:
    """The source ``cfg.source`` names, configured by ``cfg``."""
    module_name, _, class_name = SOURCES[cfg.source].partition(":")
    source_class = getattr(import_module(module_name), class_name)
    if cfg.source in NETWORK_SOURCES:
        return source_class(cfg, progress=progress)
    return source_class(cfg)


__all__ = ["NETWORK_SOURCES", "SOURCES", "BarSource", "make_source"]
