"""Build or update the bars dataset of a config, fetching only what the store is missing.

The manifest records, per ticker, the time range already fetched (``covered_start`` /
``covered_end``, not the first/last bar, so a ticker that listed after ``start`` is not
re-requested forever). A build compares that with the config and fetches only the uncovered
ranges before and after; new tickers are fetched whole; bars outside the config's range are
trimmed, and tickers no longer listed are dropped, so the store always mirrors the config. When
nothing is missing the build is a no-op that writes nothing. A change of source (or its options),
session policy, calendar or ``on_invalid`` invalidates everything fetched, so it all is rebuilt.

Every fetched piece goes through the session filter and validation (refuse or repair); gaps are
checked on the merged series of each ticker, so a hole at the seam of two fetches is caught too.
With ``end`` empty the range ends at the last whole hour, so a bar still forming is never stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl

import ploutos
from ploutos.config.sections import DataConfig
from ploutos.data import store
from ploutos.data.bars import BAR_SCHEMA, canonical
from ploutos.data.calendar import apply_session
from ploutos.data.macro import SERIES, load_macro, macro_csv_path
from ploutos.data.sources.base import BarSource
from ploutos.data.validate import Repair, check, gaps
from ploutos.errors import DataError
from ploutos.progress import progress_bar

log = logging.getLogger(__name__)

MAX_REPAIRS_LISTED = 1000
"""Repairs kept in the manifest per ticker (counts per rule are always complete)."""


@dataclass
class BuildReport:
    """What a build did; ``no_op`` means nothing was fetched and nothing written."""

    path: str
    fetched: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    rows: int = 0
    repairs: list[Repair] = field(default_factory=list)
    no_op: bool = False
    session_dropped: int = 0
    macro: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the terminal: notes first, then what was fetched, kept and repaired."""
        lines = [f"note: {note}" for note in self.notes]
        if self.no_op:
            asked = f"; asked for newer bars of {', '.join(self.fetched)}: none yet" if self.fetched else ""
            count = len(self.fetched) + len(self.skipped)
            lines.append(f"{self.path}: up to date (no-op): {count} ticker(s), {self.rows} bars{asked}")
            return "\n".join(lines)
        parts = [f"fetched {', '.join(self.fetched)}" if self.fetched else "nothing fetched"]
        if self.skipped:
            parts.append(f"kept {', '.join(self.skipped)}")
        if self.macro:
            parts.append(f"macro {', '.join(self.macro)}")
        parts.append(f"{self.rows} bars")
        if self.session_dropped:
            parts.append(f"{self.session_dropped} outside the session dropped")
        if self.repairs:
            parts.append(f"{len(self.repairs)} repair(s) listed in manifest.json")
        lines.append(f"{self.path}: " + "; ".join(parts))
        return "\n".join(lines)


def build_dataset(cfg: DataConfig, *, source: BarSource | None = None, progress: bool = True) -> BuildReport:
    """Bring ``cfg.store`` up to date with ``cfg``: fetch missing bars and macro series, validate, write atomically."""
    if source is None:
        from ploutos.data.sources import make_source  # the lead's factory; imports network clients lazily

        source = make_source(cfg, progress=progress)
    root = Path(cfg.store)
    with store.store_lock(root):
        return _Build(cfg, source, root, progress).run()


class _Build:
    def __init__(self, cfg: DataConfig, source: BarSource, root: Path, progress: bool) -> None:
        self.cfg, self.source, self.root, self.progress = cfg, source, root, progress
        self.start = cfg.start_utc
        self.end = cfg.end_utc or _last_whole_hour()
        self.report = BuildReport(path=str(root))
        self._stored: dict[str, pl.DataFrame] = {}
        self.old = self._previous_manifest()

    def run(self) -> BuildReport:
        plans = {ticker: self._plan(ticker) for ticker in self.cfg.tickers}
        macro_stale = self._stale_macro()
        gap_changed = bool(self.old) and self.old.get("max_gap_bars") != self.cfg.max_gap_bars
        write: dict[str, pl.DataFrame] = {}
        keep: list[str] = []
        per_ticker: dict[str, Any] = {}
        repairs: dict[str, list[dict[str, Any]]] = {}
        todo = [t for t, p in plans.items() if p is not None or gap_changed]
        for ticker in _bar(todo, self.progress, "fetch bars"):
            updated = self._update_ticker(ticker, plans[ticker] or [], force=gap_changed)
            if updated is not None:
                frame, per_ticker[ticker], repairs[ticker] = updated
                write[per_ticker[ticker]["file"]] = frame
        unchanged = [t for t in self.cfg.tickers if t not in per_ticker]
        for ticker in unchanged:
            keep.append(self.old["tickers"][ticker]["file"])  # type: ignore[index]
            per_ticker[ticker] = self.old["tickers"][ticker]  # type: ignore[index]
            repairs[ticker] = self._old_repairs(ticker)
        self.report.skipped = tuple(t for t in self.cfg.tickers if t not in self.report.fetched)
        self.report.rows = sum(int(per_ticker[t]["rows"]) for t in self.cfg.tickers)
        if (
            self.old is not None
            and not write
            and not macro_stale
            and list(self.old["tickers"]) == list(self.cfg.tickers)
            and set(self.old.get("macro", {})) == set(self.cfg.macro)
            and not gap_changed
        ):
            self.report.no_op = True  # nothing new: leave every file, the manifest included, untouched
            return self.report
        macro_entries = self._macro(macro_stale, write, keep)
        manifest = self._manifest(per_ticker, repairs, macro_entries)
        store.replace_store(self.root, manifest, write, keep)
        return self.report

    # -- planning ---------------------------------------------------------------------------

    def _previous_manifest(self) -> dict[str, Any] | None:
        """The stored manifest if it was built the same way and its files are intact, else None (with a note)."""
        if not (self.root / store.MANIFEST).is_file():
            return None
        try:
            old = store.read_manifest(self.root)
        except Exception as err:  # an unreadable manifest is rebuilt, not fatal
            self._note(f"the existing manifest cannot be read ({err}); rebuilding everything")
            return None
        ours = self._identity()
        changed = [k for k, v in ours.items() if old.get(k) != v]
        if changed:
            diffs = ", ".join(_change(k, old.get(k), ours[k]) for k in changed)
            self._note(f"{diffs} differ from the stored dataset; rebuilding everything")
            return None
        for ticker, info in list(old["tickers"].items()):
            problem = store.verify_file(self.root, old, info["file"])
            if problem is None and ticker in self.cfg.tickers:
                problem = self._unreadable(info["file"])
            if problem:
                self._note(f"{info['file']} {problem}; fetching {ticker} again")
                del old["tickers"][ticker]
        return old

    def _unreadable(self, rel: str) -> str | None:
        """Why a stored file whose checksum matches cannot be used (Polars cannot read it), or None.

        A file can be damaged and its manifest entry edited to match; reading it here means such a
        file is fetched again instead of the build calling the dataset up to date. The frame is
        kept for the update that follows.
        """
        try:
            self._stored[rel] = canonical(store.read_parquet(self.root / rel), path=str(self.root / rel))
        except DataError as err:
            return f"cannot be read ({err})"
        return None

    def _identity(self) -> dict[str, Any]:
        """What, if changed, invalidates every stored bar."""
        return {
            "source": self.source.name,
            "source_options": _source_options(self.cfg, self.source.name),
            "session": self.cfg.session,
            "calendar": self.cfg.calendar,
            "on_invalid": self.cfg.on_invalid,
        }

    def _plan(self, ticker: str) -> list[tuple[datetime | None, datetime]] | None:
        """Ranges to fetch for ``ticker`` ([] = only trim), or None when the stored file is already right."""
        info = (self.old or {}).get("tickers", {}).get(ticker)
        if info is None:
            return [(self.start, self.end)]
        covered_start, covered_end = _parse(info["covered_start"]), _parse(info["covered_end"])
        ranges: list[tuple[datetime | None, datetime]] = []
        if covered_start is not None and (self.start is None or self.start < covered_start):
            ranges.append((self.start, covered_start))
        if self.end > covered_end:
            ranges.append((covered_end, self.end))
        trim = (self.start is not None and (covered_start is None or covered_start < self.start)) or (
            covered_end > self.end
        )
        return ranges if ranges or trim else None

    # -- fetching ---------------------------------------------------------------------------

    def _update_ticker(
        self, ticker: str, ranges: list[tuple[datetime | None, datetime]], *, force: bool = False
    ) -> tuple[pl.DataFrame, dict[str, Any], list[dict[str, Any]]] | None:
        """The ticker's new bars, manifest entry and repairs; None when an open-ended fetch found nothing new."""
        info = (self.old or {}).get("tickers", {}).get(ticker)
        stored = self._stored_bars(info) if info else pl.DataFrame(schema=BAR_SCHEMA)
        pieces, repairs, dropped = [stored], self._old_repairs(ticker) if info else [], 0
        covered_start = _parse(info["covered_start"]) if info else self.start
        covered_end = _parse(info["covered_end"]) if info else self.end
        for lo, hi in ranges:
            piece, piece_repairs, n_dropped = self._fetch(ticker, lo, hi)
            pieces.append(piece)
            repairs += [r.as_dict() for r in piece_repairs]
            dropped += n_dropped
            covered_start = None if lo is None or covered_start is None else min(covered_start, lo)
            covered_end = max(covered_end, hi)
        if ranges:
            self.report.fetched += (ticker,)
        merged = _trim(pl.concat(pieces).unique(["ticker", "timestamp"], keep="last"), self.start, self.end)
        merged = merged.sort("timestamp")
        nothing_new = all(p.is_empty() for p in pieces[1:]) and merged.height == stored.height
        if info and nothing_new and self.cfg.end is None and not force:
            return None  # "up to now" and no new bars yet: keep the stored version and ask again next time
        if merged.is_empty():
            raise DataError(
                f"{self.source.name} returned no bars in the {self.cfg.session} session between "
                f"{_iso(self.start) or 'the beginning'} and {_iso(self.end)}; check the symbol and the range",
                ticker=ticker,
                rule="empty",
            )
        repairs = [r for r in repairs if r["rule"] != "gap"] + self._gaps(ticker, merged)
        covered_start = covered_start if self.start is None else max(covered_start or self.start, self.start)
        entry = {
            "file": store.ticker_file(ticker),
            "rows": merged.height,
            "first": _iso(merged["timestamp"][0]),
            "last": _iso(merged["timestamp"][-1]),
            "covered_start": _iso(covered_start),
            "covered_end": _iso(min(covered_end, self.end)),
            "session_dropped": int(info["session_dropped"] if info else 0) + dropped,
        }
        self.report.session_dropped += dropped
        return merged, entry, repairs

    def _fetch(self, ticker: str, lo: datetime | None, hi: datetime) -> tuple[pl.DataFrame, list[Repair], int]:
        """One range from the source: kept to ``[lo, hi)``, session-filtered, validated per ``on_invalid``."""
        where = f"{self.source.name} bars {_iso(lo) or 'earliest'}..{_iso(hi)}"
        raw = canonical(self.source.fetch(ticker, lo, hi), path=where).with_row_index("__src_row")
        raw = raw.filter(pl.col("ticker").is_null() | (pl.col("ticker") == ticker))
        raw = _trim(raw, lo, hi, keep_null=True)
        kept, dropped = apply_session(raw, self.cfg.session, self.cfg.calendar)
        bars, repairs = check(
            kept,
            self.cfg.on_invalid,
            path=where,
            session=self.cfg.session,
            calendar=self.cfg.calendar,
            max_gap_bars=None,
            row_index="__src_row",
            hint="set data.on_invalid: repair to repair them (each repair is listed in the manifest)",
        )
        self.report.repairs += repairs
        return bars, repairs, dropped

    def _gaps(self, ticker: str, merged: pl.DataFrame) -> list[dict[str, Any]]:
        """Gap problems of the merged series: refused, or listed as repairs (gaps are never filled)."""
        where = f"{self.source.name} bars"
        found = gaps(
            merged, path=where, session=self.cfg.session, calendar=self.cfg.calendar, max_gap_bars=self.cfg.max_gap_bars
        )
        found = [replace(p, row=None) for p in found]  # rows of the merged series mean nothing to a user
        if found and self.cfg.on_invalid == "refuse":
            raise found[0].error(len(found) - 1, "raise data.max_gap_bars, or set data.on_invalid: repair to list them")
        gap_repairs = [
            Repair(p.path, p.ticker, None, p.rule, p.message, "left as is (gaps are not filled)") for p in found
        ]
        self.report.repairs += gap_repairs
        return [r.as_dict() for r in gap_repairs]

    def _stored_bars(self, info: dict[str, Any]) -> pl.DataFrame:
        rel = info["file"]
        if rel not in self._stored:
            self._stored[rel] = canonical(store.read_parquet(self.root / rel), path=str(self.root / rel))
        return self._stored[rel]

    def _old_repairs(self, ticker: str) -> list[dict[str, Any]]:
        return [r for r in (self.old or {}).get("repairs", []) if r.get("ticker") == ticker]

    # -- macro ------------------------------------------------------------------------------

    def _stale_macro(self) -> list[str]:
        """Configured macro series whose stored version is missing, altered or fetched differently."""
        entries = (self.old or {}).get("macro", {})
        stale = []
        for name in self.cfg.macro:
            entry = entries.get(name)
            if (
                entry is None
                or entry.get("identity") != self._macro_identity(name)
                or store.verify_file(self.root, self.old or {}, entry["file"])
                or self._unreadable_macro(entry["file"])
            ):
                stale.append(name)
        return stale

    def _unreadable_macro(self, rel: str) -> bool:
        try:
            store.read_parquet(self.root / rel)
        except DataError as err:
            self._note(f"{rel} cannot be read ({err}); fetching it again")
            return True
        return False

    def _macro_identity(self, name: str) -> dict[str, Any]:
        identity: dict[str, Any] = {
            "source": self.cfg.macro_source,
            "lag_minutes": self.cfg.macro_lag_minutes,
            "start": _iso(self.start),
            "end": _iso(self.end),
        }
        if self.cfg.macro_source == "csv":
            identity["csv_sha256"] = store.sha256_file(macro_csv_path(self.cfg.macro_csv_dir or ".", name))
        return identity

    def _macro(self, stale: list[str], write: dict[str, pl.DataFrame], keep: list[str]) -> dict[str, Any]:
        entries = {n: e for n, e in (self.old or {}).get("macro", {}).items() if n in self.cfg.macro}
        keep += [entries[n]["file"] for n in entries if n not in stale]
        if not stale:
            return entries
        fetch_start = self.start - timedelta(days=10) if self.start else None
        loaded = load_macro(_only_macro(self.cfg, stale), start=fetch_start, end=self.end)
        for name, frame in loaded.items():
            if frame.is_empty():
                raise DataError(f"macro series {name} has no values in the range", rule="macro")
            write[store.macro_file(name)] = frame
            entries[name] = {
                "file": store.macro_file(name),
                "symbol": SERIES[name]["symbol"],
                "close_time": f"{SERIES[name]['close']:%H:%M} America/New_York",
                "rows": frame.height,
                "first_date": str(frame["date"][0]),
                "last_date": str(frame["date"][-1]),
                "identity": self._macro_identity(name),
            }
        self.report.macro = tuple(stale)
        return entries

    # -- manifest ---------------------------------------------------------------------------

    def _manifest(
        self, per_ticker: dict[str, Any], repairs: dict[str, list[dict[str, Any]]], macro: dict[str, Any]
    ) -> dict[str, Any]:
        counts = {t: _count_rules(r) for t, r in repairs.items() if r}
        listed = [r for t in self.cfg.tickers for r in repairs.get(t, [])[:MAX_REPAIRS_LISTED]]
        return {
            "format_version": store.FORMAT_VERSION,
            "ploutos_version": ploutos.__version__,
            "created": (self.old or {}).get("created") or store.now_iso(),
            "updated": store.now_iso(),
            **self._identity(),
            "start": self.cfg.start,
            "end": self.cfg.end,
            "max_gap_bars": self.cfg.max_gap_bars,
            "tickers": {t: per_ticker[t] for t in self.cfg.tickers},
            "session_dropped": sum(int(per_ticker[t]["session_dropped"]) for t in self.cfg.tickers),
            "repair_counts": counts,
            "repairs": listed,
            "macro": macro,
        }

    def _note(self, message: str) -> None:
        log.info("%s: %s", self.root, message)
        self.report.notes.append(message)


def _source_options(cfg: DataConfig, name: str) -> dict[str, Any]:
    """Config fields that change what a source returns; a change invalidates the stored bars."""
    if name == "csv" and cfg.csv_path:
        path = Path(cfg.csv_path)
        files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
        stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.exists()]
        return {
            "csv_path": str(path.resolve()),
            "timezone": cfg.csv_timezone,
            "format": cfg.csv_time_format,
            "files": stamp,
        }
    if name == "alpaca":
        return {"feed": cfg.alpaca_feed, "adjustment": cfg.alpaca_adjustment}
    if name == "synthetic":
        return {"bars": cfg.synthetic_bars}
    return {}


def _change(key: str, old: Any, new: Any) -> str:
    """``key 'a' -> 'b'``, or for option dicts the names of the options that changed."""
    if isinstance(old, dict) and isinstance(new, dict):
        names = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        return ", ".join(f"{key}.{name} changed" for name in names)
    return f"{key} {old!r} -> {new!r}"


def _only_macro(cfg: DataConfig, names: list[str]) -> DataConfig:
    return replace(cfg, macro=tuple(names))


def _trim(frame: pl.DataFrame, lo: datetime | None, hi: datetime | None, *, keep_null: bool = False) -> pl.DataFrame:
    ts = pl.col("timestamp")
    inside = pl.lit(True)
    if lo is not None:
        inside &= ts >= lo
    if hi is not None:
        inside &= ts < hi
    return frame.filter(inside | ts.is_null()) if keep_null else frame.filter(inside)


def _count_rules(repairs: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in repairs:
        counts[r["rule"]] = counts.get(r["rule"], 0) + 1
    return counts


def _bar(items: list[str], progress: bool, desc: str) -> Any:
    return progress_bar(items, enabled=progress, desc=desc, unit="ticker")


def _last_whole_hour() -> datetime:
    now = datetime.now(timezone.utc)
    return now.replace(minute=0, second=0, microsecond=0)


def _parse(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
