"""The data commands end to end, as a new user runs them: `ploutos data build/check/info` and `run`."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from conftest import assert_one_line_error

GOOD_ROWS = [
    "2024-01-02T15:00:00Z,100,101,99,100.5,1000",
    "2024-01-02T16:00:00Z,100.5,102,100,101,1200",
    "2024-01-02T17:00:00Z,101,101.5,100.2,100.8,900",
]
HEADER = "timestamp,open,high,low,close,volume"


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _csv(tmp_path: Path, rows: list[str], name: str = "SPY.csv") -> Path:
    path = tmp_path / "bars" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def test_quickstart_build_writes_a_dataset_and_a_second_run_is_a_no_op(ploutos, tmp_path: Path):
    first = ploutos("data", "build", "--config", "quickstart", "--no-progress")
    assert first.returncode == 0, first.stderr
    store = tmp_path / "data/quickstart"
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["source"] == "sample"
    assert manifest["session"] == "24h"
    assert manifest["tickers"]["EURUSD"]["rows"] > 6000
    before = _tree_digest(store)
    mtimes = {p: p.stat().st_mtime_ns for p in store.rglob("*")}

    second = ploutos("data", "build", "--config", "quickstart", "--no-progress")
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout.lower() or "no-op" in second.stdout.lower(), second.stdout
    assert _tree_digest(store) == before
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == mtimes

    info = ploutos("data", "info", "data/quickstart")
    assert info.returncode == 0, info.stderr
    assert "EURUSD" in info.stdout and "24h" in info.stdout


def test_run_is_the_main_job_on_the_embedded_default(ploutos, tmp_path: Path):
    budget = ("--set", "ppo.total_timesteps=512", "--set", "hardware.n_envs=2")
    result = ploutos("run", "--no-progress", *budget)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data/quickstart/manifest.json").is_file()
    assert "3 folds x 2 members = 6 tasks" in result.stdout
    assert "task 6/6 fold 2 member 1: 512 steps" in result.stdout
    tasks = tmp_path / "results/quickstart/tasks"
    assert sorted(p.name for p in tasks.glob("*.h5")) == sorted(
        [f"fold{f}_member{m}.h5" for f in range(3) for m in range(2)] + [f"fold{f}_ensemble.h5" for f in range(3)]
    )
    table = result.stdout.split("[4/4]")[1].splitlines()[3:7]
    assert [row.split()[0] for row in table] == ["0", "1", "2", "stitched"]
    assert "6 of 6 member task(s) and 3 of 3 ensemble(s) ok" in result.stdout
    assert (tmp_path / "results/quickstart/summary.h5").is_file()
    assert (tmp_path / "results/quickstart/report/summary.md").is_file()

    again = ploutos("run", "--no-progress", *budget)  # the main job continues where it stopped
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already done") == 6


@pytest.mark.parametrize(
    ("rows", "rule", "row"),
    [
        (GOOD_ROWS + [GOOD_ROWS[-1]], "duplicate", 3),
        ([GOOD_ROWS[1], GOOD_ROWS[0], GOOD_ROWS[2]], "unsorted", 1),
        (["2024-01-02T15:00:00Z,100,101,99,102,1000"], "ohlc", 0),
        (["2024-01-02T15:00:00Z,100,101,-1,100,1000"], "price", 0),
        (["2024-01-02T15:00:00Z,100,101,99,100,-5"], "volume", 0),
        (["2024-01-02T15:00:00Z,100,101,99,NaN,1000"], "missing", 0),
        (["2024-01-02T15:00:00Z,100,101,99,,1000"], "missing", 0),
        ([GOOD_ROWS[0], "2024-01-02T19:00:00Z,100.5,102,100,101,1200"], "gap", None),
    ],
)
def test_data_check_names_file_ticker_row_and_rule(ploutos, tmp_path: Path, rows, rule, row):
    path = _csv(tmp_path, rows)
    result = ploutos("data", "check", str(path), "--set", "data.session=24x7", "--set", "data.max_gap_bars=0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    line = next(line for line in result.stdout.splitlines() if f"[{rule}]" in line)
    assert "SPY.csv" in line and "ticker SPY" in line
    if row is not None:  # the line named is the line of the file that holds the bad row
        number = int(re.search(r" line (\d+) ", line)[1])
        assert path.read_text().splitlines()[number - 1] == rows[row]
        assert " row " not in line


def test_data_check_lists_every_problem_and_passes_clean_files(ploutos, tmp_path: Path):
    bad = _csv(tmp_path, [GOOD_ROWS[0], "2024-01-02T16:00:00Z,100,101,-1,100,1000", "2024-01-02T17:00:00Z,1,1,1,1,-1"])
    result = ploutos("data", "check", str(bad), "--set", "data.session=24x7")
    assert result.returncode == 1
    assert "[price]" in result.stdout and "[volume]" in result.stdout
    clean = _csv(tmp_path, GOOD_ROWS, "QQQ.csv")
    result = ploutos("data", "check", str(clean), "--set", "data.session=24x7")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("", ["SPY.csv"]),
        ("a,b,c\n1,2,3\n", ["SPY.csv", "[schema]"]),
        (HEADER + "\n2024-01-02T15:00:00Z,1,1,1,oops,1\n", ["SPY.csv", "line 2 [schema]", "oops"]),
        (HEADER + "\nnot a time,1,1,1,1,1\n", ["SPY.csv", "[timestamp]"]),
    ],
)
def test_unreadable_files_give_one_line(ploutos, tmp_path: Path, content: str, fragments: list[str]):
    path = tmp_path / "SPY.csv"
    path.write_text(content)
    assert_one_line_error(ploutos("data", "check", str(path)), *fragments)


def test_a_refused_build_leaves_the_existing_dataset_untouched(ploutos, tmp_path: Path):
    path = _csv(tmp_path, GOOD_ROWS)
    args = [
        "--set",
        "data.source=csv",
        "--set",
        f"data.csv_path={path.parent}",
        "--set",
        "data.tickers=[SPY]",
        "--set",
        "data.session=24x7",
        "--set",
        "data.store=data/mine",
        "--no-progress",
    ]
    assert ploutos("data", "build", *args).returncode == 0
    store = tmp_path / "data/mine"
    before = _tree_digest(store)

    # New bars arrive, one of them broken: the build is refused and nothing already written changes.
    path.write_text("\n".join([HEADER, *GOOD_ROWS, "2024-01-02T18:00:00Z,101,101.5,100.2,130,900"]) + "\n")
    result = ploutos("data", "build", *args)
    assert_one_line_error(result, "SPY", "[ohlc]")
    assert _tree_digest(store) == before


def test_repair_policy_records_repairs_in_the_manifest(ploutos, tmp_path: Path):
    path = _csv(tmp_path, [*GOOD_ROWS, GOOD_ROWS[-1], "2024-01-02T18:00:00Z,101,101.5,100.2,130,900"])
    result = ploutos(
        "data",
        "build",
        "--set",
        "data.source=csv",
        "--set",
        f"data.csv_path={path}",
        "--set",
        "data.tickers=[SPY]",
        "--set",
        "data.session=24x7",
        "--set",
        "data.on_invalid=repair",
        "--set",
        "data.store=data/fixed",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "data/fixed/manifest.json").read_text())
    rules = {repair["rule"] for repair in manifest["repairs"]}
    assert {"duplicate", "ohlc"} <= rules


def test_missing_credentials_for_alpaca_are_one_line(ploutos, tmp_path: Path):
    result = ploutos(
        "data",
        "build",
        "--set",
        "data.source=alpaca",
        "--set",
        "data.tickers=[SPY]",
        "--set",
        "data.session=regular",
        "--no-progress",
        env={"ALPACA_API_KEY": "", "ALPACA_SECRET_KEY": ""},
    )
    assert_one_line_error(result, "ALPACA_API_KEY")


def test_data_info_on_nothing_is_one_line(ploutos, tmp_path: Path):
    assert_one_line_error(ploutos("data", "info", "no/such/dataset"), "no/such/dataset")


# --- found by a hostile tester: epoch units, impossible years, long tickers, damaged manifests ------

EPOCH = 1704207600  # 2024-01-02T15:00:00Z


def test_data_check_and_build_read_epoch_nanoseconds(ploutos, tmp_path: Path):
    path = _csv(tmp_path, [f"{(EPOCH + 3600 * i) * 10**9},100,101,99,100.5,1000" for i in range(3)])
    check = ploutos("data", "check", str(path), "--set", "data.session=24x7")
    assert check.returncode == 0 and "no problems" in check.stdout, check.stderr
    build = ploutos(
        "data", "build", "--no-progress", "--set", "data.source=csv", "--set", f"data.csv_path={path}",
        "--set", "data.tickers=[SPY]", "--set", "data.session=24x7", "--set", "data.store=data/ns",
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    entry = json.loads((tmp_path / "data/ns/manifest.json").read_text())["tickers"]["SPY"]
    assert (entry["rows"], entry["first"]) == (3, "2024-01-02T15:00:00Z")


@pytest.mark.parametrize(
    ("rows", "fragments"),
    [
        ([GOOD_ROWS[0], "9999-12-31T23:00:00Z,100,101,99,100.5,1000"], ["SPY.csv", "line 3", "[timestamp]", "9999"]),
        (
            [f"{EPOCH},100,101,99,100.5,1000", f"{EPOCH * 1000},100,101,99,100.5,1000"],
            ["SPY.csv line 3", "line 2 (", "one unit"],
        ),
    ],
)
def test_data_check_refuses_impossible_times_in_one_line(ploutos, tmp_path: Path, rows, fragments):
    assert_one_line_error(ploutos("data", "check", str(_csv(tmp_path, rows))), *fragments)


def test_data_check_refuses_a_ticker_column_value_that_is_no_symbol(ploutos, tmp_path: Path):
    path = tmp_path / "universe.csv"
    path.write_text(f"timestamp,ticker,open,high,low,close,volume\n2024-01-02T15:00:00Z,{'X' * 300},1,2,0.5,1.5,10\n")
    assert_one_line_error(ploutos("data", "check", str(path)), "universe.csv line 2 [schema]", "300 characters")


def test_a_ticker_too_long_for_a_file_name_is_refused_before_any_write(ploutos, tmp_path: Path):
    long = "A" * 300
    result = ploutos("data", "build", "--no-progress", "--set", f"data.tickers=[{long}]", "--set", "data.store=data/x")
    assert_one_line_error(result, f"--set data.tickers=[{long}]", "data.tickers", "not a ticker symbol")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("manifest", "fragments"),
    [
        ("[]", ["manifest.json", "a JSON list, not an object"]),
        ("{broken", ["manifest.json", "not valid JSON"]),
        ("DROP:tickers", ["manifest.json", "manifest field tickers: missing"]),
        ("ROWS:many", ["manifest.json", "tickers.EURUSD.rows", "'many'"]),
    ],
)
def test_data_info_and_features_on_a_damaged_manifest_are_one_line(ploutos, tmp_path: Path, manifest, fragments):
    assert ploutos("data", "build", "--no-progress", "--set", "data.store=data").returncode == 0
    file = tmp_path / "data" / "manifest.json"
    good = json.loads(file.read_text())
    if manifest == "DROP:tickers":
        manifest = json.dumps({k: v for k, v in good.items() if k != "tickers"})
    elif manifest == "ROWS:many":
        good["tickers"]["EURUSD"]["rows"] = "many"
        manifest = json.dumps(good)
    file.write_text(manifest)
    assert_one_line_error(ploutos("data", "info", "data"), *fragments)
    assert_one_line_error(ploutos("data", "check", "data"), *fragments)
    rebuilt = ploutos("data", "build", "--no-progress", "--set", "data.store=data")
    assert rebuilt.returncode == 0 and "rebuilding everything" in rebuilt.stdout, rebuilt.stderr
    assert ploutos("data", "info", "data").returncode == 0
