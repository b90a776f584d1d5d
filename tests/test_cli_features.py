"""`ploutos features list|compute` as a user runs them, and the README's feature table."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from conftest import REPO, assert_one_line_error


def test_features_list_prints_every_feature_with_definition_and_warmup(ploutos):
    result = ploutos("features", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rsi = next(line for line in lines if line.startswith("rsi_14 "))
    assert "raw" in rsi and "warm-up" in rsi and "Wilder" in rsi
    assert "features (" in lines[-1]


def test_readme_feature_table_is_the_generated_one(ploutos):
    table = ploutos("features", "list", "--markdown").stdout.strip()
    readme = (REPO / "README.md").read_text()
    assert table in readme, "regenerate the README table: ploutos features list --markdown"


def _bars(tmp_path: Path) -> Path:
    bars = tmp_path / "bars.csv"
    rows = [
        f"2024-01-{1 + i // 24:02d}T{i % 24:02d}:00:00Z,{100 + i % 7},{102 + i % 7},{99 + i % 7},{100.5 + i % 7},{i}"
        for i in range(240)
    ]
    bars.write_text("timestamp,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    return bars


def test_features_compute_writes_parquet(ploutos, tmp_path: Path):
    bars = _bars(tmp_path)
    result = ploutos("features", "compute", str(bars), "--out", "features.parquet")
    assert result.returncode == 0, result.stderr
    features = pl.read_parquet(tmp_path / "features.parquet")
    assert features.height == 240 and "rsi_14" in features.columns
    assert not list(tmp_path.glob(".features.parquet.tmp-*"))


def test_features_compute_refuses_bad_input_in_one_line(ploutos, tmp_path: Path):
    bars = tmp_path / "bars.csv"
    bars.write_text("timestamp,open,high,low,close,volume\n2024-01-01T00:00:00Z,1,1,1,-3,1\n")
    assert_one_line_error(ploutos("features", "compute", str(bars), "--out", "f.parquet"), "bars.csv", "[price]")
    assert not (tmp_path / "f.parquet").exists()
    assert_one_line_error(ploutos("features", "compute", "nothing.csv", "--out", "f.parquet"), "nothing.csv")
    assert_one_line_error(ploutos("features", "compute", str(bars), "--out", "no/dir/f.parquet"), "no/dir")


@pytest.mark.parametrize(
    ("name", "read"),
    [("features.csv", pl.read_csv), ("features.pq", pl.read_parquet), ("features.arrow", pl.read_ipc)],
)
def test_features_compute_writes_the_format_of_the_extension(ploutos, tmp_path: Path, name, read):
    bars = _bars(tmp_path)
    result = ploutos("features", "compute", str(bars), "--out", name)
    assert result.returncode == 0, result.stderr
    written = tmp_path / name
    features = read(written)
    listed = ploutos("features", "list").stdout.splitlines()[:-1]  # every feature of one ticker, one per line
    assert features.columns[:2] == ["timestamp", "ticker"]
    assert features.columns[2:] == [line.split()[0] for line in listed]  # raw and observation kinds, in order
    assert features.height == 240
    assert f"{len(listed)} features" in result.stdout


def test_features_compute_refuses_an_unknown_extension_before_reading_the_input(ploutos, tmp_path: Path):
    result = ploutos("features", "compute", "no-such-input.csv", "--out", "features.xlsx")
    assert_one_line_error(result, "features.xlsx", "--out writes .parquet", ".csv", "not .xlsx")
    assert not (tmp_path / "features.xlsx").exists()


def test_features_compute_help_says_what_the_file_holds(ploutos):
    text = " ".join(ploutos("features", "compute", "--help").stdout.split())
    for fragment in ("timestamp and ticker", "raw and observation", "unnormalized", ".csv", ".parquet"):
        assert fragment in text
