"""The on-disk dataset and incremental builds: atomic replace, no-op rebuilds, checksums."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl
import pytest

import ploutos
from ploutos.config.sections import DataConfig
from ploutos.data import store
from ploutos.data.build import build_dataset
from ploutos.data.sources.base import BarSource
from ploutos.errors import DataError, SourceError

UTC = timezone.utc
EARLIEST = datetime(2023, 12, 1, tzinfo=UTC)


def synthetic_bars(ticker: str, start: datetime | None, end: datetime | None) -> pl.DataFrame:
    """Deterministic hourly bars: the same timestamp always has the same prices."""
    lo, hi = start or EARLIEST, end or datetime(2024, 3, 1, tzinfo=UTC)
    ts = pl.datetime_range(lo, hi, "1h", closed="left", eager=True, time_zone="UTC")
    hours = ts.dt.epoch("s").to_numpy() / 3600.0
    close = 100.0 + 10 * np.sin(hours / 50.0) + (sum(map(ord, ticker)) % 7)
    return pl.DataFrame(
        {
            "timestamp": ts,
            "ticker": ticker,
            "open": close - 0.1,
            "high": close + 0.5,
            "low": close - 0.5,
            "close": close,
            "volume": 1000.0,
        }
    )


class FakeSource(BarSource):
    """Counts calls; can fail or corrupt bars on demand."""

    name: ClassVar[str] = "fake"

    def __init__(self, fail_on: str | None = None, bad_row: int | None = None) -> None:
        self.calls: list[tuple[str, datetime | None, datetime | None]] = []
        self.fail_on, self.bad_row = fail_on, bad_row

    def fetch(self, ticker: str, start: datetime | None, end: datetime | None) -> pl.DataFrame:
        self.calls.append((ticker, start, end))
        if ticker == self.fail_on:
            raise SourceError(f"HTTP 500 for {ticker}")
        frame = synthetic_bars(ticker, start, end)
        if self.bad_row is not None:
            index = pl.int_range(pl.len())
            frame = frame.with_columns(high=pl.when(index == self.bad_row).then(1.0).otherwise(pl.col("high")))
        return frame


def config(tmp_path: Path, **changes: object) -> DataConfig:
    base = DataConfig(
        source="synthetic",
        tickers=("AAA", "BBB"),
        start="2024-01-01",
        end="2024-01-15",
        session="24x7",
        store=str(tmp_path / "store"),
    )
    return replace(base, **changes)


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under ``root``: bytes, mtime and inode."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def siblings(root: Path) -> list[str]:
    return sorted(p.name for p in root.parent.iterdir() if p.name.startswith(f".{root.name}.") and "lock" not in p.name)


def test_first_build_writes_layout_and_manifest(tmp_path):
    cfg = config(tmp_path, session="regular")
    report = build_dataset(cfg, source=FakeSource(), progress=False)
    root = Path(cfg.store)
    assert (root / "ticker=AAA" / "data.parquet").is_file() and (root / "ticker=BBB" / "data.parquet").is_file()
    manifest = store.read_manifest(root)
    assert manifest["format_version"] == store.FORMAT_VERSION
    assert manifest["ploutos_version"] == ploutos.__version__
    assert manifest["source"] == "fake" and list(manifest["tickers"]) == ["AAA", "BBB"]
    assert (manifest["session"], manifest["calendar"], manifest["on_invalid"]) == ("regular", "XNYS", "refuse")
    assert (manifest["start"], manifest["end"]) == ("2024-01-01", "2024-01-15")
    info = manifest["tickers"]["AAA"]
    assert info["rows"] == 9 * 7 and info["first"] == "2024-01-02T14:00:00Z"  # 9 sessions (MLK day closed)
    assert info["session_dropped"] == 14 * 24 - 63 and report.session_dropped == 2 * info["session_dropped"]
    assert set(manifest["files"]) == {"ticker=AAA/data.parquet", "ticker=BBB/data.parquet"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    assert manifest["created"] and manifest["updated"] and manifest["repairs"] == []
    assert report.fetched == ("AAA", "BBB") and report.rows == 126 and not report.no_op
    assert siblings(root) == []


def test_read_dataset_round_trip(tmp_path):
    cfg = config(tmp_path)
    build_dataset(cfg, source=FakeSource(), progress=False)
    data = store.read_dataset(cfg.store)
    expected = pl.concat([synthetic_bars(t, cfg.start_utc, cfg.end_utc) for t in ("AAA", "BBB")])
    assert data.equals(expected)
    assert store.read_dataset(cfg.store, tickers=["BBB"])["ticker"].unique().to_list() == ["BBB"]
    with pytest.raises(DataError, match="ZZZ not in the dataset"):
        store.read_dataset(cfg.store, tickers=["ZZZ"])


def test_second_build_is_a_no_op(tmp_path):
    cfg = config(tmp_path)
    build_dataset(cfg, source=FakeSource(), progress=False)
    before = snapshot(Path(cfg.store))
    source = FakeSource()
    report = build_dataset(cfg, source=source, progress=False)
    assert report.no_op and source.calls == [] and report.fetched == () and report.rows == 2 * 14 * 24
    assert snapshot(Path(cfg.store)) == before


def test_adding_a_ticker_fetches_only_that_ticker(tmp_path):
    cfg = config(tmp_path)
    build_dataset(cfg, source=FakeSource(), progress=False)
    before = snapshot(Path(cfg.store))
    source = FakeSource()
    report = build_dataset(replace(cfg, tickers=("AAA", "BBB", "CCC")), source=source, progress=False)
    assert [c[0] for c in source.calls] == ["CCC"] and report.fetched == ("CCC",)
    after = snapshot(Path(cfg.store))
    for rel in ("ticker=AAA/data.parquet", "ticker=BBB/data.parquet"):
        assert after[rel] == before[rel]  # same bytes, mtime and inode: linked, not rewritten
    assert list(store.read_manifest(cfg.store)["tickers"]) == ["AAA", "BBB", "CCC"]


def test_extending_end_fetches_only_the_new_range(tmp_path):
    cfg = config(tmp_path)
    build_dataset(cfg, source=FakeSource(), progress=False)
    source = FakeSource()
    longer = replace(cfg, end="2024-01-20")
    build_dataset(longer, source=source, progress=False)
    assert source.calls == [(t, cfg.end_utc, longer.end_utc) for t in ("AAA", "BBB")]
    data = store.read_dataset(cfg.store, ["AAA"])
    assert data.equals(synthetic_bars("AAA", cfg.start_utc, longer.end_utc))


def test_extending_start_fetches_only_the_earlier_range(tmp_path):
    cfg = config(tmp_path, tickers=("AAA",))
    build_dataset(cfg, source=FakeSource(), progress=False)
    source = FakeSource()
    earlier = replace(cfg, start="2023-12-20")
    build_dataset(earlier, source=source, progress=False)
    assert source.calls == [("AAA", earlier.start_utc, cfg.start_utc)]
    assert store.read_dataset(cfg.store).equals(synthetic_bars("AAA", earlier.start_utc, cfg.end_utc))
    source = FakeSource()
    assert build_dataset(earlier, source=source, progress=False).no_op and source.calls == []


def test_narrowing_the_range_trims_without_fetching(tmp_path):
    cfg = config(tmp_path, tickers=("AAA",))
    build_dataset(cfg, source=FakeSource(), progress=False)
    source = FakeSource()
    shorter = replace(cfg, start="2024-01-05", end="2024-01-10")
    build_dataset(shorter, source=source, progress=False)
    assert source.calls == []
    assert store.read_dataset(cfg.store).equals(synthetic_bars("AAA", shorter.start_utc, shorter.end_utc))


def test_a_source_without_early_data_is_not_asked_again(tmp_path):
    class LateListing(FakeSource):
        def fetch(self, ticker, start, end):
            frame = super().fetch(ticker, start, end)
            return frame.filter(pl.col("timestamp") >= datetime(2024, 1, 10, tzinfo=UTC))

    cfg = config(tmp_path, tickers=("AAA",))
    build_dataset(cfg, source=LateListing(), progress=False)
    source = LateListing()
    assert build_dataset(cfg, source=source, progress=False).no_op and source.calls == []


def test_session_change_rebuilds_everything_and_says_so(tmp_path):
    cfg = config(tmp_path)
    build_dataset(cfg, source=FakeSource(), progress=False)
    source = FakeSource()
    report = build_dataset(replace(cfg, session="regular"), source=source, progress=False)
    assert [c[0] for c in source.calls] == ["AAA", "BBB"]
    assert any("session '24x7' -> 'regular'" in note and "rebuilding everything" in note for note in report.notes)
    assert store.read_manifest(cfg.store)["session"] == "regular"


def test_failure_in_the_middle_leaves_the_old_dataset_identical(tmp_path):
    cfg = config(tmp_path)
    build_dataset(cfg, source=FakeSource(), progress=False)
    root = Path(cfg.store)
    before = snapshot(root)
    with pytest.raises(SourceError):
        build_dataset(replace(cfg, end="2024-01-20"), source=FakeSource(fail_on="BBB"), progress=False)
    assert snapshot(root) == before
    assert siblings(root) == []
    assert store.read_dataset(root).height == 2 * 14 * 24


def test_sigkill_in_the_middle_leaves_the_old_dataset_and_the_next_build_cleans_up(tmp_path):
    cfg = config(tmp_path)
    build_dataset(cfg, source=FakeSource(), progress=False)
    root = Path(cfg.store)
    before = snapshot(root)
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from dataclasses import replace
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import polars as pl
        from ploutos.data import store
        from ploutos.data.build import build_dataset
        from test_data_store import FakeSource, config
        from pathlib import Path

        real_write = pl.DataFrame.write_parquet
        def write_then_die(self, path, **kw):
            real_write(self, path, **kw)
            os.kill(os.getpid(), signal.SIGKILL)  # after the first new file is on disk
        pl.DataFrame.write_parquet = write_then_die
        cfg = config(Path({str(tmp_path)!r}))
        build_dataset(replace(cfg, end="2024-01-20"), source=FakeSource(), progress=False)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    assert any(".tmp-" in name for name in siblings(root))  # the killed build's leftover
    assert snapshot(root) == before
    assert store.read_dataset(root).height == 2 * 14 * 24
    build_dataset(cfg, source=FakeSource(), progress=False)
    assert siblings(root) == []


def test_killed_between_the_two_renames_is_recovered(tmp_path):
    cfg = config(tmp_path)
    build_dataset(cfg, source=FakeSource(), progress=False)
    root = Path(cfg.store)
    stranded = root.parent / f".{root.name}.old-1-deadbeef"
    os.rename(root, stranded)  # as if killed after moving the old version aside
    assert store.read_dataset(root).height == 2 * 14 * 24  # readers use the intact previous version
    source = FakeSource()
    assert build_dataset(cfg, source=source, progress=False).no_op and source.calls == []
    assert root.is_dir() and siblings(root) == []


def test_leftover_temp_dir_is_cleaned_by_the_next_build(tmp_path):
    cfg = config(tmp_path)
    root = Path(cfg.store)
    leftover = root.parent / f".{root.name}.tmp-999-abcdef12"
    (leftover / "ticker=AAA").mkdir(parents=True)
    (leftover / "ticker=AAA" / "data.parquet").write_bytes(b"half a file")
    build_dataset(cfg, source=FakeSource(), progress=False)
    assert not leftover.exists()


def test_corrupted_file_is_detected_by_checksum(tmp_path):
    cfg = config(tmp_path)
    build_dataset(cfg, source=FakeSource(), progress=False)
    file = Path(cfg.store) / "ticker=BBB" / "data.parquet"
    data = bytearray(file.read_bytes())
    data[100] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        store.read_dataset(cfg.store)
    assert info.value.rule == "checksum" and info.value.ticker == "BBB" and str(file) in str(info.value)
    assert "sha256" in str(info.value)
    store.read_dataset(cfg.store, ["AAA"])  # the intact ticker still reads
    source = FakeSource()
    report = build_dataset(cfg, source=source, progress=False)
    assert [c[0] for c in source.calls] == ["BBB"] and any("fetching BBB again" in n for n in report.notes)
    assert store.read_dataset(cfg.store).height == 2 * 14 * 24


def test_missing_file_is_detected(tmp_path):
    cfg = config(tmp_path)
    build_dataset(cfg, source=FakeSource(), progress=False)
    (Path(cfg.store) / "ticker=AAA" / "data.parquet").unlink()
    with pytest.raises(DataError, match=r"is missing.*\[checksum\]|is missing"):
        store.read_dataset(cfg.store)


def test_refuse_policy_stops_and_writes_nothing(tmp_path):
    cfg = config(tmp_path)
    with pytest.raises(DataError) as info:
        build_dataset(cfg, source=FakeSource(bad_row=7), progress=False)
    assert (info.value.ticker, info.value.row, info.value.rule) == ("AAA", 7, "ohlc")
    assert "fake bars 2024-01-01T00:00:00Z..2024-01-15T00:00:00Z" in str(info.value)
    assert "on_invalid: repair" in str(info.value)
    assert not Path(cfg.store).exists() and siblings(Path(cfg.store)) == []


def test_repair_policy_lists_repairs_in_the_manifest(tmp_path):
    cfg = config(tmp_path, on_invalid="repair")
    report = build_dataset(cfg, source=FakeSource(bad_row=7), progress=False)
    manifest = store.read_manifest(cfg.store)
    assert manifest["repair_counts"] == {"AAA": {"ohlc": 1}, "BBB": {"ohlc": 1}}
    assert [(r["ticker"], r["row"], r["rule"]) for r in manifest["repairs"]] == [("AAA", 7, "ohlc"), ("BBB", 7, "ohlc")]
    assert len(report.repairs) == 2 and manifest["repairs"][0]["action"].startswith("clamped")


def test_gaps_are_refused_or_listed_never_filled(tmp_path):
    class Holey(FakeSource):
        def fetch(self, ticker, start, end):
            frame = super().fetch(ticker, start, end)
            return frame.filter(pl.col("timestamp") != datetime(2024, 1, 3, 5, tzinfo=UTC))

    with pytest.raises(DataError, match=r"ticker AAA \[gap\]: 1 expected bar\(s\) missing from 2024-01-03T05:00:00Z"):
        build_dataset(config(tmp_path), source=Holey(), progress=False)
    cfg = config(tmp_path, on_invalid="repair")
    build_dataset(cfg, source=Holey(), progress=False)
    manifest = store.read_manifest(cfg.store)
    assert manifest["repair_counts"]["AAA"] == {"gap": 1}
    assert manifest["tickers"]["AAA"]["rows"] == 14 * 24 - 1
    build_dataset(replace(cfg, max_gap_bars=1), source=Holey(), progress=False)  # re-checked without fetching
    assert store.read_manifest(cfg.store)["repair_counts"] == {}


def test_empty_ticker_is_an_error(tmp_path):
    class Empty(FakeSource):
        def fetch(self, ticker, start, end):
            return super().fetch(ticker, start, end).clear()

    with pytest.raises(DataError, match=r"ticker AAA \[empty\]"):
        build_dataset(config(tmp_path), source=Empty(), progress=False)


def test_macro_series_are_stored_with_the_bars(tmp_path):
    macro_dir = tmp_path / "macro"
    macro_dir.mkdir()
    days = pl.date_range(datetime(2023, 12, 20), datetime(2024, 1, 20), "1d", eager=True)
    pl.DataFrame({"Date": days, "Close": np.linspace(12, 14, len(days))}).write_csv(macro_dir / "vix.csv")
    cfg = config(tmp_path, macro=("VIX",), macro_source="csv", macro_csv_dir=str(macro_dir))
    report = build_dataset(cfg, source=FakeSource(), progress=False)
    assert report.macro == ("VIX",)
    assert (Path(cfg.store) / "macro" / "VIX.parquet").is_file()
    entry = store.read_manifest(cfg.store)["macro"]["VIX"]
    assert entry["symbol"] == "^VIX" and entry["close_time"] == "16:15 America/New_York"
    vix = store.read_macro(cfg.store)["VIX"]
    assert vix.columns == ["date", "value", "published_at"] and vix.height == len(days)
    source = FakeSource()
    assert build_dataset(cfg, source=source, progress=False).no_op
    build_dataset(replace(cfg, macro_lag_minutes=30), source=source, progress=False)
    assert source.calls == []  # only the macro series was redone
    assert store.read_manifest(cfg.store)["macro"]["VIX"]["identity"]["lag_minutes"] == 30


def test_read_bars_file_makes_canonical_utc(tmp_path):
    path = tmp_path / "bars.parquet"
    frame = synthetic_bars("AAA", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC))
    frame.with_columns(pl.col("timestamp").dt.replace_time_zone(None).cast(pl.Datetime("ns"))).write_parquet(path)
    assert store.read_bars_file(path).equals(frame)
    pl.DataFrame({"a": [1]}).write_parquet(path)
    with pytest.raises(DataError, match=r"\[schema\]"):
        store.read_bars_file(path)


def test_a_foreign_directory_is_not_replaced(tmp_path):
    cfg = config(tmp_path)
    Path(cfg.store).mkdir()
    (Path(cfg.store) / "precious.txt").write_text("mine")
    with pytest.raises(DataError, match="refusing to replace"):
        build_dataset(cfg, source=FakeSource(), progress=False)
    assert (Path(cfg.store) / "precious.txt").read_text() == "mine"


def test_concurrent_builds_are_refused(tmp_path):
    cfg = config(tmp_path)
    with store.store_lock(cfg.store), pytest.raises(DataError, match="another `ploutos data build`"):
        build_dataset(cfg, source=FakeSource(), progress=False)


def test_manifest_is_plain_json(tmp_path):
    cfg = config(tmp_path)
    build_dataset(cfg, source=FakeSource(), progress=False)
    text = (Path(cfg.store) / store.MANIFEST).read_text()
    assert json.loads(text)["tickers"]["BBB"]["covered_end"] == "2024-01-15T00:00:00Z"


def test_open_ended_end_asks_for_new_bars_but_writes_only_when_there_are_some(tmp_path, monkeypatch):
    import ploutos.data.build as build_module

    now = datetime(2024, 2, 1, 12, tzinfo=UTC)
    monkeypatch.setattr(build_module, "_last_whole_hour", lambda: now)
    cfg = config(tmp_path, end=None, tickers=("AAA",))

    class UpTo(FakeSource):
        def __init__(self, last: datetime) -> None:
            super().__init__()
            self.last = last

        def fetch(self, ticker, start, end):
            self.calls.append((ticker, start, end))
            return synthetic_bars(ticker, start, min(end, self.last) if end else self.last)

    build_dataset(cfg, source=UpTo(now), progress=False)
    before = snapshot(Path(cfg.store))
    monkeypatch.setattr(build_module, "_last_whole_hour", lambda: now + timedelta(hours=3))
    source = UpTo(now)  # no newer bars yet
    report = build_dataset(cfg, source=source, progress=False)
    assert report.no_op and source.calls == [("AAA", now, now + timedelta(hours=3))]
    assert "none yet" in report.summary() and snapshot(Path(cfg.store)) == before
    report = build_dataset(cfg, source=UpTo(now + timedelta(hours=2)), progress=False)
    assert not report.no_op and store.read_dataset(cfg.store)["timestamp"][-1] == now + timedelta(hours=1)


# --- damaged manifests and unreadable files (found by a hostile tester) -----------------------------


def _manifest(cfg: DataConfig) -> dict:
    return json.loads((Path(cfg.store) / store.MANIFEST).read_text())


def _write_manifest(cfg: DataConfig, manifest: object) -> None:
    (Path(cfg.store) / store.MANIFEST).write_text(json.dumps(manifest))


def _edited(manifest: dict, path: str, value: object) -> dict:
    """``manifest`` with the field at dotted ``path`` set to ``value`` (``...`` deletes it)."""
    edited = json.loads(json.dumps(manifest))
    *parents, last = path.split(".")
    node = edited
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return edited


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        ("tickers", ..., "manifest field tickers: missing"),
        ("tickers", ["AAA"], "manifest field tickers: expected an object"),
        ("tickers.AAA.rows", "many", "manifest field tickers.AAA.rows: expected a count, got 'many'"),
        ("tickers.AAA.rows", -1, "tickers.AAA.rows"),
        ("tickers.AAA.file", "../../elsewhere.parquet", "tickers.AAA.file: expected 'ticker=AAA/data.parquet'"),
        ("tickers.AAA.covered_end", "yesterday", "tickers.AAA.covered_end: 'yesterday' is not an ISO time"),
        ("tickers.AAA", 5, "tickers.AAA: expected an object"),
        ("session", "lunar", "manifest field session: 'lunar' is not one of"),
        ("calendar", ..., "manifest field calendar: missing"),
        ("files", [], "manifest field files: expected an object"),
        ("macro", "VIX", "manifest field macro: expected an object"),
        ("repairs", {"a": 1}, "manifest field repairs"),
        ("format_version", "1", "format version '1' is not 1"),
    ],
)
def test_a_damaged_manifest_is_refused_naming_the_file_and_field(tmp_path, path, value, fragment):
    cfg = config(tmp_path)
    build_dataset(cfg, source=FakeSource(), progress=False)
    _write_manifest(cfg, _edited(_manifest(cfg), path, value))
    for read in (store.read_manifest, store.read_dataset):
        with pytest.raises(DataError) as info:
            read(cfg.store)
        message = str(info.value)
        assert str(Path(cfg.store) / store.MANIFEST) in message and fragment in message, message
        assert "\n" not in message and info.value.rule == "manifest"


@pytest.mark.parametrize("text", ["[]", '"a string"', "17", "null", '{"format_version": 1}', "[" * 100_000])
def test_a_manifest_that_is_not_a_manifest_object_is_refused(tmp_path, text):
    cfg = config(tmp_path)
    build_dataset(cfg, source=FakeSource(), progress=False)
    (Path(cfg.store) / store.MANIFEST).write_text(text)
    with pytest.raises(DataError, match=r"manifest\.json \[manifest\]: ") as info:
        store.read_manifest(cfg.store)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["[]", '{"format_version": 1, "rows": "many"}', "{not json"])
def test_build_over_a_damaged_manifest_rebuilds_atomically(tmp_path, text):
    cfg = config(tmp_path)
    build_dataset(cfg, source=FakeSource(), progress=False)
    expected = store.read_dataset(cfg.store)
    (Path(cfg.store) / store.MANIFEST).write_text(text)
    source = FakeSource()
    report = build_dataset(cfg, source=source, progress=False)
    assert sorted(c[0] for c in source.calls) == ["AAA", "BBB"]
    assert any("manifest cannot be read" in note and "rebuilding everything" in note for note in report.notes)
    assert store.read_dataset(cfg.store).equals(expected)
    assert siblings(Path(cfg.store)) == []  # the new version was swapped in; nothing left over
    assert build_dataset(cfg, source=FakeSource(), progress=False).no_op


def _truncate_and_reseal(cfg: DataConfig, ticker: str, size: int = 200) -> Path:
    """Cut a ticker's Parquet file and update its manifest sha256 to match: the checksum alone cannot tell."""
    file = Path(cfg.store) / store.ticker_file(ticker)
    file.write_bytes(file.read_bytes()[:size])
    manifest = _manifest(cfg)
    manifest["files"][store.ticker_file(ticker)] = {"sha256": store.sha256_file(file), "bytes": size}
    _write_manifest(cfg, manifest)
    return file


def test_an_unreadable_parquet_file_with_a_matching_checksum_names_the_file(tmp_path):
    cfg = config(tmp_path)
    build_dataset(cfg, source=FakeSource(), progress=False)
    file = _truncate_and_reseal(cfg, "BBB")
    with pytest.raises(DataError) as info:
        store.read_dataset(cfg.store)
    message = str(info.value)
    assert str(file) in message and "ticker BBB" in message and "cannot read Parquet" in message, message
    assert "\n" not in message
    store.read_dataset(cfg.store, ["AAA"])  # the intact ticker still reads


def test_build_notices_an_unreadable_file_and_fetches_it_again(tmp_path):
    cfg = config(tmp_path)
    build_dataset(cfg, source=FakeSource(), progress=False)
    expected = store.read_dataset(cfg.store)
    _truncate_and_reseal(cfg, "AAA")
    source = FakeSource()
    report = build_dataset(cfg, source=source, progress=False)
    assert not report.no_op and [c[0] for c in source.calls] == ["AAA"]
    assert any("cannot be read" in note and "fetching AAA again" in note for note in report.notes)
    assert store.read_dataset(cfg.store).equals(expected)


def test_build_notices_an_unreadable_macro_file(tmp_path):
    macro_dir = tmp_path / "macro"
    macro_dir.mkdir()
    days = pl.date_range(datetime(2023, 12, 20), datetime(2024, 1, 20), "1d", eager=True)
    pl.DataFrame({"Date": days, "Close": np.linspace(12, 14, len(days))}).write_csv(macro_dir / "vix.csv")
    cfg = config(tmp_path, macro=("VIX",), macro_source="csv", macro_csv_dir=str(macro_dir))
    build_dataset(cfg, source=FakeSource(), progress=False)
    file = Path(cfg.store) / store.macro_file("VIX")
    file.write_bytes(b"PAR1 but not really")
    manifest = _manifest(cfg)
    manifest["files"][store.macro_file("VIX")]["sha256"] = store.sha256_file(file)
    _write_manifest(cfg, manifest)
    with pytest.raises(DataError, match=r"VIX\.parquet.*cannot read Parquet"):
        store.read_macro(cfg.store)
    report = build_dataset(cfg, source=FakeSource(), progress=False)
    assert report.macro == ("VIX",)
    assert store.read_macro(cfg.store)["VIX"].height == len(days)


def test_a_store_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    cfg = config(tmp_path, store=str(tmp_path / "file" / "store"))
    with pytest.raises(DataError, match=r"file/store: cannot create the dataset here \(.*\); check data\.store"):
        build_dataset(cfg, source=FakeSource(), progress=False)


def test_bars_outside_the_supported_years_are_refused_naming_the_row(tmp_path):
    class FarFuture(FakeSource):
        def fetch(self, ticker, start, end):
            frame = super().fetch(ticker, start, end)
            far = pl.Series([datetime(9999, 12, 31, tzinfo=UTC)], dtype=pl.Datetime("us", "UTC"))
            row_3 = pl.int_range(pl.len()) == 3
            return frame.with_columns(timestamp=pl.when(row_3).then(far.first()).otherwise("timestamp"))

    with pytest.raises(DataError) as info:
        build_dataset(config(tmp_path), source=FarFuture(), progress=False)
    message = str(info.value)
    # a source's bars are not a file: rows are counted from 1, so the fourth (index 3) is row 4
    assert "row 4" in message and "9999-12-31" in message and "outside the years" in message, message


@pytest.mark.parametrize(
    ("ticker", "fragment"),
    [([[1]], "column 'ticker' has type List(Int64), expected text"), (["A" * 300], "300 characters")],
)
def test_read_bars_file_refuses_unusable_ticker_columns(tmp_path, ticker, fragment):
    path = tmp_path / "bars.parquet"
    stamp = [datetime(2024, 1, 2, 15, tzinfo=UTC)]
    prices = {name: [1.0] for name in ("open", "high", "low", "close", "volume")}
    pl.DataFrame({"timestamp": stamp, "ticker": ticker, **prices}).write_parquet(path)
    with pytest.raises(DataError, match=r"\[schema\]") as info:
        store.read_bars_file(path)
    assert str(path) in str(info.value) and fragment in str(info.value)
