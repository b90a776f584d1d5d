"""`ploutos features list|compute` as a user runs them, and the README's feature table."""

from __future__ import annotations

from pathlib import Path

import polars as pl

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


def test_features_compute_writes_parquet(ploutos, tmp_path: Path):
    bars = tmp_path / "bars.csv"
    rows = [
        f"2024-01-{1 + i // 24:02d}T{i % 24:02d}:00:00Z,{100 + i % 7},{102 + i % 7},{99 + i % 7},{100.5 + i % 7},{i}"
        for i in range(240)
    ]
    bars.write_text("timestamp,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
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
