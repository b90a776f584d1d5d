"""What ``ploutos data check`` and ``ploutos data info`` see: any bars file or a dataset.

``check_path`` lists *every* problem (the build stops at the first); a file is checked the way a
build would take it in: read, cut to the session, validated with the config's rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from ploutos.config import DataConfig
from ploutos.data.calendar import apply_session
from ploutos.data.sources.csv import read_csv_bars
from ploutos.data.store import read_bars_file, read_dataset, read_manifest, verify_file
from ploutos.data.validate import Problem, validate
from ploutos.errors import DataError

ROW = "__input_row"


def read_bars_path(path: Path, cfg: DataConfig) -> pl.DataFrame:
    """A CSV or Parquet file of bars in the canonical schema; other paths are refused in one line."""
    if not path.exists():
        raise DataError("no such file or dataset", path=str(path))
    suffixes = [s.lower() for s in path.suffixes]
    if ".parquet" in suffixes or ".pq" in suffixes:
        return read_bars_file(path)
    if ".csv" in suffixes or ".txt" in suffixes:
        return read_csv_bars(path, timezone=cfg.csv_timezone, time_format=cfg.csv_time_format)
    raise DataError("not a bars file: expected .csv, .parquet or a dataset directory", path=str(path))


def check_path(path: Path, cfg: DataConfig) -> list[Problem]:
    """Every problem of a bars file (under ``cfg``'s session and rules) or of a dataset directory."""
    if path.is_dir():
        return _check_dataset(path, cfg)
    bars = read_bars_path(path, cfg).with_row_index(ROW)
    kept, _ = apply_session(bars, cfg.session, cfg.calendar)
    return validate(
        kept,
        path=str(path),
        session=cfg.session,
        calendar=cfg.calendar,
        max_gap_bars=cfg.max_gap_bars,
        row_index=ROW,
    )


def _check_dataset(root: Path, cfg: DataConfig) -> list[Problem]:
    """Checksums first (a changed file is reported, not read), then the rules the dataset was built with."""
    manifest = read_manifest(root)
    problems: list[Problem] = []
    intact: list[str] = []
    for ticker, entry in manifest["tickers"].items():
        error = verify_file(root, manifest, entry["file"])
        if error:
            problems.append(Problem(str(root / entry["file"]), ticker, None, "checksum", error))
        else:
            intact.append(ticker)
    if intact:
        bars = read_dataset(root, intact)
        max_gap = manifest.get("max_gap_bars", cfg.max_gap_bars)
        problems += validate(
            bars,
            path=str(root),
            session=manifest["session"],
            calendar=manifest["calendar"],
            max_gap_bars=max_gap if manifest.get("on_invalid") == "refuse" else None,
        )
    return problems


def describe_path(path: Path, cfg: DataConfig | None = None) -> dict[str, Any]:
    """A summary of a dataset (from its manifest) or of a bars file (from its rows)."""
    if path.is_dir():
        manifest = read_manifest(path)
        return {
            "dataset": str(path),
            "source": manifest["source"],
            "session": manifest["session"],
            "calendar": manifest["calendar"],
            "on_invalid": manifest["on_invalid"],
            "tickers": len(manifest["tickers"]),
            "bars": sum(entry["rows"] for entry in manifest["tickers"].values()),
            "repairs": sum(sum(counts.values()) for counts in manifest.get("repair_counts", {}).values())
            if manifest.get("repair_counts")
            else len(manifest.get("repairs", [])),
            "macro": ", ".join(manifest.get("macro", {})) or "none",
            "updated": manifest.get("updated"),
            "ploutos_version": manifest.get("ploutos_version"),
            "tickers_detail": [
                {"ticker": ticker, "rows": entry["rows"], "first": entry["first"], "last": entry["last"]}
                for ticker, entry in manifest["tickers"].items()
            ],
        }
    bars = read_bars_path(path, cfg or DataConfig())
    per_ticker = (
        bars.group_by("ticker", maintain_order=True)
        .agg(rows=pl.len(), first=pl.col("timestamp").min(), last=pl.col("timestamp").max())
        .to_dicts()
    )
    return {"file": str(path), "tickers": len(per_ticker), "bars": bars.height, "tickers_detail": per_ticker}
