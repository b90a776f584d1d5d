"""Config sections, YAML loading, overrides and their one-line errors."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from conftest import REPO, assert_one_line_error
from ploutos.config import SECTIONS, Config, config_hash, configs_dir, dump, field_docs, load, starter_config
from ploutos.errors import ConfigError


def test_every_field_of_every_section_has_a_one_line_doc():
    for cls in (Config, *SECTIONS.values()):
        docs = field_docs(cls)
        for item in dataclasses.fields(cls):
            doc = item.metadata.get("doc")
            assert isinstance(doc, str) and doc.strip(), f"{cls.__name__}.{item.name} has no doc in its metadata"
            assert "\n" not in doc, f"{cls.__name__}.{item.name}: the doc must be one line"
            assert docs[item.name] == doc.strip()


def test_field_docs_work_without_sources(tmp_path: Path):
    """A .pyc-only install (no .py files, so no inspect.getsource) still dumps every doc."""
    copy = tmp_path / "site"
    package = copy / "ploutos"
    shutil.copytree(REPO / "src/ploutos", package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "configs", package / "_configs")
    subprocess.run([sys.executable, "-m", "compileall", "-b", "-q", str(package)], check=True)
    for source in package.rglob("*.py"):
        source.unlink()
    assert not list(package.rglob("*.py")) and (package / "config/loader.pyc").is_file()
    script = (
        "import inspect, ploutos.config.sections as sections\n"
        "from ploutos.config import load, dump\n"
        "print(sections.__file__)\n"
        "try:\n"
        "    inspect.getsource(sections.DataConfig)\n"
        "except (OSError, TypeError):\n"
        "    print('no source')\n"
        "print(dump(load('quickstart'), with_docs=True))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(copy)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    where, proof, *dumped = result.stdout.splitlines()
    assert Path(where).is_relative_to(copy) and where.endswith(".pyc"), where
    assert proof == "no source"
    assert 'name: "quickstart"  # Run name; results go to <results_dir>/<name>.' in dumped
    assert '  tickers: ["EURUSD"]  # Symbols to load, in the order assets appear in arrays.' in dumped


def test_sections_are_frozen():
    config = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.data.source = "csv"  # type: ignore[misc]


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path):
    config = load(path)
    assert isinstance(config, Config)


def test_quickstart_is_embedded_and_the_default():
    assert (configs_dir() / "quickstart.yaml").is_file()
    default = load()
    assert default == load("quickstart") == load(REPO / "configs/quickstart.yaml")
    assert default.data.source == "sample"  # runs with no network and no keys
    assert default.data.session == "24h"


def test_full_config_extends_the_node_profile():
    full = load("full")
    assert full.hardware.mpi_ranks == 8
    assert len(full.data.tickers) == 15
    assert full.data.source == "alpaca"


def test_overrides_are_typed_like_yaml():
    config = load(
        None,
        [
            "data.tickers=[SPY, QQQ]",
            "ppo.learning_rate=1e-3",
            "ppo.net_arch=[32,32]",
            "env.long_only=true",
            "data.start=2020-01-01",
            "walkforward.step_months=1",
            "hardware.cpus=null",
            "seed=3",
        ],
    )
    assert config.data.tickers == ("SPY", "QQQ")
    assert config.ppo.learning_rate == pytest.approx(1e-3)
    assert config.ppo.net_arch == (32, 32)
    assert config.env.long_only is True
    assert config.data.start == "2020-01-01"
    assert config.walkforward.step == 1
    assert config.seed == 3


def test_derived_values_are_properties():
    config = load(None, ["data.session=regular", "walkforward.test_months=3"])
    assert config.data.bars_per_year == 7 * 252
    assert config.walkforward.step == 3
    assert config.run_dir == "results/quickstart"
    assert config.data.start_utc is None


def test_override_wins_over_file_and_file_over_extends(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("ppo:\n  n_steps: 64\n  batch_size: 32\n")
    (tmp_path / "run.yaml").write_text("extends: base.yaml\nppo:\n  n_steps: 128\n")
    config = load(tmp_path / "run.yaml", ["ppo.batch_size=16"])
    assert (config.ppo.n_steps, config.ppo.batch_size) == (128, 16)


def test_hash_changes_with_any_value():
    assert config_hash(load()) == config_hash(load())
    assert config_hash(load()) != config_hash(load(None, ["seed=8"]))


def test_dump_round_trips(tmp_path: Path):
    config = load("full")
    (tmp_path / "dumped.yaml").write_text(dump(config))
    assert load(tmp_path / "dumped.yaml") == config
    assert "# Symbols to load" in dump(config, with_docs=True)


@pytest.mark.parametrize(
    ("yaml_text", "fragments"),
    [
        ("data:\n  sesion: 24h\n", ["bad.yaml", "data.sesion", "unknown key", "did you mean 'data.session'"]),
        ("dta:\n  source: csv\n", ["bad.yaml", "dta", "did you mean 'data.source'?"]),
        ("dta:\n  zzzzzz: csv\n", ["bad.yaml", "dta", "did you mean 'data'?"]),
        ("ppo:\n  n_steps: many\n", ["bad.yaml", "ppo.n_steps", "expected an integer", "'many'"]),
        ("ppo:\n  n_steps: 1.5\n", ["ppo.n_steps", "expected an integer"]),
        ("env:\n  long_only: yes please\n", ["env.long_only", "expected true or false"]),
        ("data:\n  session: regulr\n", ["data.session", "not one of", "did you mean 'regular'"]),
        ("ensemble:\n  members: 0\n", ["bad.yaml", "ensemble.members", "at least 1"]),
        ("env:\n  lookback: -5\n", ["env.lookback", ">= 1"]),
        ("walkforward:\n  train_months: -1\n", ["walkforward.train_months", ">= 1"]),
        (
            "data:\n  start: 2021-01-01\n  end: 2021-06-01\nwalkforward:\n  train_months: 6\n  test_months: 2\n",
            ["bad.yaml", "walkforward.test_months", "do not fit", "2021-01-01..2021-06-01"],
        ),
        ("data:\n  start: 2022-01-01\n  end: 2021-01-01\n", ["data.end", "not after start"]),
        ("data:\n  start: last tuesday\n", ["data.start", "not an ISO date"]),
        ("data:\n  source: csv\n", ["data.csv_path", "source csv needs csv_path"]),
        ("data:\n  macro: [VIX, GOLD]\n", ["data.macro", "GOLD"]),
        ("data:\n  tickers: []\n", ["data.tickers", "at least one"]),
        ("slurm:\n  time_limit: two hours\n", ["slurm.time_limit", "HH:MM:SS"]),
        ("data: [1, 2]\n", ["bad.yaml", "data", "must be a mapping"]),
        ("- just\n- a list\n", ["bad.yaml", "top level must be a mapping"]),
        ("data:\n  source: [unclosed\n", ["bad.yaml", "not valid YAML"]),
        ("extends: nowhere.yaml\n", ["nowhere.yaml", "no such config"]),
        ("data:\n  start: 2024-02-30\n", ["bad.yaml", "data.start", "day is out of range"]),
        ("data:\n  end: 2024-13-01\n", ["bad.yaml", "data.end", "month must be in 1..12"]),
        ("data:\n  start: 2024-01-01 00:00:00 +25:00\n", ["bad.yaml", "data.start", "less than 24 hours"]),
        ("extends: 5\n", ["bad.yaml", "extends", "expected a config file name", "int 5"]),
        ("extends: [[a]]\n", ["bad.yaml", "extends", "expected a config file name"]),
        ("extends: {a: 1}\n", ["bad.yaml", "extends"]),
        ("extends: ['']\n", ["bad.yaml", "extends"]),
        (
            "data:\n  tickers: [SPY]\n  tickers: [QQQ]\n",
            ["bad.yaml", "line 3", "data.tickers", "duplicate key", "line 2"],
        ),
        ("seed: 1\ndata:\n  source: sample\nseed: 2\n", ["bad.yaml", "line 4", "seed: duplicate key", "line 1"]),
        ("data: {tickers: [SPY], tickers: [QQQ]}\n", ["bad.yaml", "line 1", "data.tickers", "duplicate key"]),
        ("data:\n  csv_timezone: Mars/Olympus\n", ["bad.yaml", "data.csv_timezone", "unknown time zone"]),
        ("seed: -1\n", ["bad.yaml", "seed", ">= 0"]),
        ("ppo:\n  learning_rate: .inf\n", ["bad.yaml", "ppo.learning_rate", "not a finite number"]),
        ("data:\n  synthetic_bars: 100000000\n", ["bad.yaml", "data.synthetic_bars", "100 years"]),
        ('name: "a\\x01b"\n', ["bad.yaml", "name", "control character"]),
        ("seed: 1\x01\n", ["bad.yaml", "not valid YAML", "#x0001"]),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", ["bad.yaml", "nested too deeply"]),
    ],
)
def test_bad_configs_are_refused_with_one_precise_line(tmp_path: Path, yaml_text: str, fragments: list[str]):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_an_override_error_names_the_override():
    with pytest.raises(ConfigError, match=r"^--set data\.end=2024-03-01: walkforward\.test_months: .*do not fit"):
        load(None, ["data.start=2024-01-01", "data.end=2024-03-01"])
    with pytest.raises(
        ConfigError, match=r"^--set ppo\.nsteps=5: ppo\.nsteps: unknown key; did you mean 'ppo\.n_steps'"
    ):
        load(None, ["ppo.nsteps=5"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load(None, ["ppo.n_steps"])


def test_circular_extends_is_refused(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load(tmp_path / "a.yaml")


def test_missing_config_file_lists_the_embedded_ones():
    with pytest.raises(ConfigError, match="quickstart"):
        load("no-such-config.yaml")


def test_cli_reports_config_errors_in_one_line(ploutos, tmp_path: Path):
    (tmp_path / "typo.yaml").write_text("ppo:\n  learning_rat: 0.1\n")
    result = ploutos("config", "show", "--config", "typo.yaml")
    assert_one_line_error(result, "typo.yaml", "ppo.learning_rat", "did you mean 'ppo.learning_rate'")
    result = ploutos("config", "show", "--set", "ensemble.members=0")
    assert_one_line_error(result, "--set ensemble.members=0", "ensemble.members")


def test_cli_config_show_prints_the_resolved_config(ploutos):
    result = ploutos("config", "show", "--docs", "--set", "seed=11")
    assert result.returncode == 0, result.stderr
    assert "seed: 11" in result.stdout
    assert "# config hash:" in result.stdout


@pytest.mark.parametrize(
    ("limit", "minutes"),
    [("02:00:00", 120), ("1-00:30:00", 1470), ("00:00:30", 1), ("1-12", 2160), ("2-01:30", 2970), ("10:30", 11)],
)
def test_slurm_time_limit_in_minutes_follows_slurms_formats(limit: str, minutes: int):
    assert load("quickstart", [f"slurm.time_limit='{limit}'"]).slurm.time_limit_minutes == minutes


# --- bad values found by a hostile tester: each refused at load, in one line naming origin and key ---


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("data.start=2024-02-30", ["data.start", "day is out of range"]),
        ("data.end=2024-13-01", ["data.end", "month must be in 1..12"]),
        ("data.start=2024-01-01T00:00:00+25:00", ["data.start", "less than 24 hours"]),
        ("data.end=9999-12-31T23:00:00-05:00", ["data.end", "outside the years 1900..2199"]),
        ("data.start=0001-01-01T00:00:00+05:00", ["data.start", "outside the years"]),
        ("seed=-1", ["seed", "must be >= 0"]),
        ("seed=4294967296", ["seed", "at most 4294967295"]),
        ("seed=123456789012345678901234567890", ["seed", "too large"]),
        ("data.synthetic_seed=-3", ["data.synthetic_seed", ">= 0"]),
        ("ppo.learning_rate=.inf", ["ppo.learning_rate", "not a finite number"]),
        ("ppo.learning_rate=.nan", ["ppo.learning_rate", "not a finite number"]),
        ("ppo.learning_rate=1e999", ["ppo.learning_rate", "not a finite number"]),
        ("env.initial_cash=-.inf", ["env.initial_cash", "not a finite number"]),
        ("features.clip=.NaN", ["features.clip", "not a finite number"]),
        ("data.synthetic_bars=100000000", ["data.synthetic_bars", "more than 100 years"]),
        ("data.csv_timezone=Mars/Olympus", ["data.csv_timezone", "unknown time zone 'Mars/Olympus'"]),
        ("data.csv_timezone=America/New_Yrok", ["data.csv_timezone", "did you mean 'America/New_York'"]),
        ("data.csv_timezone=../../etc/passwd", ["data.csv_timezone", "unknown time zone"]),
        (f"data.tickers=[{'A' * 300}]", ["data.tickers", "300 characters", "not a ticker symbol"]),
        ("data.tickers=['SPY QQQ']", ["data.tickers", "not a ticker symbol"]),
        ("data.tickers=['...']", ["data.tickers", "no letter or digit"]),
        ("data.macro=[VIX, VIX]", ["data.macro", "listed twice"]),
        ('results_dir=""', ["results_dir", "must not be empty"]),
        ('data.store=""', ["data.store", "must not be empty"]),
        ("name=..", ["name", "names a folder itself"]),
        ('data.store="data\\0x"', ["data.store", "control character"]),
        ("env.lookback=1000000000", ["env.lookback", "at most 10000"]),
        ("ppo.n_steps=10000000000", ["ppo.n_steps", "at most"]),
        ("ppo.net_arch=[64, 100000000]", ["ppo.net_arch", "1 to 65536"]),
        ("walkforward.train_months=100000000", ["walkforward.train_months", "at most 1200"]),
        ("paper.poll_seconds=100000000000", ["paper.poll_seconds", "at most 86400"]),
        ("slurm.signal_before_s=70000", ["slurm.signal_before_s", "at most 65535"]),
        ("data.request_timeout_s=1e30", ["data.request_timeout_s", "at most 86400"]),
        ("data.macro_lag_minutes=99999999999", ["data.macro_lag_minutes", "at most"]),
        ("seed=0b_", ["seed", "expected an integer", "'0b_'"]),
        ("data=5", ["data", "is a section", "data.source"]),
        ("data.source=csv", ["data.csv_path", "source csv needs csv_path"]),
    ],
)
def test_impossible_overrides_are_refused_naming_the_set_and_the_key(override: str, fragments: list[str]):
    with pytest.raises(ConfigError) as caught:
        load(None, [override])
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"--set {override}: "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_a_config_that_is_not_utf8_is_refused_naming_the_file(tmp_path: Path):
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text \(byte 0xe9 at offset 9\)"):
        load(tmp_path / "latin1.yaml")
    (tmp_path / "base.yaml").write_bytes(bytes(range(256)))
    (tmp_path / "run.yaml").write_text("extends: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: not UTF-8 text"):
        load(tmp_path / "run.yaml")


def test_a_utf8_bom_and_merge_keys_still_load(tmp_path: Path):
    (tmp_path / "bom.yaml").write_bytes("\ufeffseed: 3\n".encode())
    assert load(tmp_path / "bom.yaml").seed == 3
    (tmp_path / "merge.yaml").write_text("ppo: &p {n_steps: 64, batch_size: 32}\nenv:\n  lookback: 8\n")
    assert load(tmp_path / "merge.yaml").ppo.n_steps == 64


def test_valid_edge_values_still_load():
    config = load(
        None,
        [
            "seed=4294967295",
            "data.tickers=[BRK.B, BRK/B, ^VIX, EURUSD=X, DX-Y.NYB, spy_1]",
            "data.csv_timezone=America/New_York",
            "data.start=2024-01-01T09:30:00-05:00",
            "data.end=2024-12-31",
            "data.synthetic_bars=2",
        ],
    )
    assert config.seed == 2**32 - 1
    assert config.data.tickers[2] == "^VIX"


def test_cli_refuses_each_bad_value_in_one_line(ploutos, tmp_path: Path):
    for override, fragment in [
        ("data.start=2024-02-30", "data.start"),
        ("seed=-1", "seed"),
        ("ppo.learning_rate=.inf", "ppo.learning_rate"),
        ("data.csv_timezone=Mars/Olympus", "data.csv_timezone"),
    ]:
        assert_one_line_error(ploutos("config", "show", "--set", override), f"--set {override}", fragment)
    (tmp_path / "bin.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert_one_line_error(ploutos("config", "show", "--config", "bin.yaml"), "bin.yaml", "not UTF-8")


@pytest.mark.parametrize(
    ("written", "suggested"),
    [
        ("walkforward.members", "ensemble.members"),  # the right key in the wrong section
        ("ppo.session", "data.session"),
        ("train.algo", "ppo.algo"),  # no such section: the key says where it lives
        ("ppo.learning_rat", "ppo.learning_rate"),  # a close name in the section written wins
        ("env.memebers", "ensemble.members"),  # misspelt and misplaced
    ],
)
def test_a_misplaced_key_suggests_its_section_from_yaml_and_from_set(tmp_path: Path, written: str, suggested: str):
    section, _, key = written.partition(".")
    (tmp_path / "mine.yaml").write_text(f"{section}:\n  {key}: 3\n")
    with pytest.raises(ConfigError) as from_yaml:
        load(tmp_path / "mine.yaml")
    with pytest.raises(ConfigError) as from_set:
        load(None, [f"{written}=3"])
    for caught, origin in ((from_yaml, "mine.yaml"), (from_set, f"--set {written}=3")):
        message = str(caught.value)
        assert origin in message and f"did you mean '{suggested}'?" in message, message


def test_a_key_close_to_nothing_lists_the_sections_keys():
    with pytest.raises(ConfigError, match=r"ensemble\.zzzzzz: unknown key; valid: members, combine"):
        load(None, ["ensemble.zzzzzz=1"])


def test_config_show_docs_lists_the_values_of_choice_fields(ploutos):
    result = ploutos("config", "show", "--docs")
    assert result.returncode == 0, result.stderr
    lines = {line.split(":")[0].strip(): line for line in result.stdout.splitlines() if line.startswith("  ")}
    for section, key in (("data", "source"), ("env", "reward"), ("ppo", "algo"), ("walkforward", "mode")):
        allowed = typing.get_args(typing.get_type_hints(SECTIONS[section])[key])
        assert lines[key].endswith(f"(one of: {', '.join(allowed)})"), lines[key]
    assert "one of" not in lines["lookback"]  # a free integer has no list


def test_config_init_loads_back_to_the_same_config(ploutos, tmp_path: Path):
    for hardware, profile in ((None, "laptop"), ("node-256", "node-256"), ("runpod-gpu", "runpod-gpu")):
        out = tmp_path / f"{profile}.yaml"
        args = ["config", "init", "--out", str(out)] + (["--hardware", hardware] if hardware else [])
        result = ploutos(*args)
        assert result.returncode == 0, result.stderr
        expected = starter_config(hardware)
        assert f"config hash {config_hash(expected)}" in result.stdout
        shown = ploutos("config", "show", "-c", str(out))
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.splitlines()[-1] == f"# config hash: {config_hash(expected)}"
        assert "# Where bars come from" in out.read_text()  # every key's doc as a comment
        assert load(out) == expected
    node = load(tmp_path / "node-256.yaml")
    assert (node.hardware.mpi_ranks, node.data.source) == (8, load().data.source)  # the profile on the quickstart
    runpod = load(tmp_path / "runpod-gpu.yaml")
    assert runpod.ppo.device == "cuda" and runpod.hardware.gpus is None  # the laptop's gpus: 0 did not survive


def test_config_init_to_stdout_and_its_refusals(ploutos, tmp_path: Path):
    result = ploutos("config", "init")
    assert result.returncode == 0, result.stderr
    (tmp_path / "piped.yaml").write_text(result.stdout)
    assert config_hash(load(tmp_path / "piped.yaml")) == config_hash(load())
    unknown = ploutos("config", "init", "--hardware", "node-512")
    assert_one_line_error(unknown, "--hardware node-512", "valid: laptop, node-256, runpod-gpu")
    existing = tmp_path / "mine.yaml"
    existing.write_text("name: mine\n")
    assert_one_line_error(ploutos("config", "init", "--out", str(existing)), "mine.yaml", "exists", "--force")
    assert existing.read_text() == "name: mine\n"
    assert ploutos("config", "init", "--out", str(existing), "--force").returncode == 0
    assert load(existing) == load()
    assert not list(tmp_path.glob(".mine.yaml.tmp-*"))
