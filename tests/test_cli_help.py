"""Every command's --help as a user reads it, and config errors answered before the heavy imports."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ploutos import cli

REST_MARKUP = ("``", ":class:", ":func:", ":mod:", ":data:", ":meth:", ":attr:")


def _commands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every subcommand under it, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases would repeat a parser
                yield from _commands(sub)


COMMANDS = {parser.prog: parser for parser in _commands(cli.build_parser())}


def _bench_parser(name: str) -> argparse.ArgumentParser:
    return importlib.import_module(f"ploutos.bench.{name}").build_parser()


def _assert_helpful(parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert parser.description and len(parser.description.split()) >= 8, f"{parser.prog}: no description"
    heads = ("example:", "examples:", "typical use:")
    assert parser.epilog and parser.epilog.startswith(heads), f"{parser.prog}: no example"
    example_lines = parser.epilog.splitlines()[1:]
    assert example_lines and all(line.startswith("  ") and "ploutos " in line for line in example_lines)
    for markup in REST_MARKUP:
        assert markup not in text, f"{parser.prog} --help shows reST {markup!r}"


def test_the_walk_sees_every_command():
    assert {"ploutos", "ploutos run", "ploutos config show", "ploutos config init", "ploutos shm clean"} <= set(
        COMMANDS
    )
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_every_command_has_a_description_and_an_example(prog: str):
    _assert_helpful(COMMANDS[prog])


@pytest.mark.parametrize("name", cli.BENCHMARKS)
def test_every_benchmark_has_a_description_and_an_example(name: str):
    parser = _bench_parser(name)
    assert parser.prog == f"ploutos bench {name}"
    _assert_helpful(parser)


def test_top_level_help_describes_ploutos_and_lists_typical_commands():
    text = cli.build_parser().format_help()
    description = text.split("\n\n")[1]
    assert not description.startswith("The ploutos command")
    assert "trading agents" in description
    typical = text[text.index("typical use:") :].splitlines()[1:]
    assert len(typical) >= 5 and all(line.startswith("  ploutos ") for line in typical)


def test_bench_help_shows_no_stray_positional():
    text = COMMANDS["ploutos bench"].format_help()
    assert " rest" not in text and "OPTIONS" in text and "NAME --help" in text


def _main_in_subprocess(*argv: str) -> subprocess.CompletedProcess:
    """``cli.main(argv)`` in a fresh interpreter; prints which heavy modules it had imported by the end."""
    program = (
        "import sys\n"
        "from ploutos import cli\n"
        "try:\n"
        f"    code = cli.main({list(argv)!r})\n"
        "except SystemExit as stop:\n"
        "    code = stop.code\n"
        "print('loaded:', sorted(m for m in ('torch', 'stable_baselines3', 'h5py', 'numba') if m in sys.modules))\n"
        "print('exit:', code)\n"
    )
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--set", "train.algoo=ppo"],
        ["train", "--fold", "0", "--set", "bad.key=1"],
        ["validate", "--set", "walkforward.members=3"],
        ["launch", "--set", "ppo.learning_rat=1e-4"],
        ["folds", "--set", "ensemble.members=0"],
        ["hardware", "--set", "hardware.cpus=-1"],
        ["data", "build", "--set", "data.source=ftp"],
        ["features", "compute", "bars.csv", "--out", "f.csv", "--set", "features.clip=0"],
    ],
)
def test_a_config_error_is_refused_before_torch_loads(argv: list[str]):
    result = _main_in_subprocess(*argv)
    assert "exit: 2" in result.stdout, result.stdout + result.stderr
    assert "loaded: []" in result.stdout, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ploutos: error: --set "), result.stderr


def test_a_paper_override_error_is_refused_before_torch_loads(tmp_path):
    from ploutos.config import config_hash, dump, load  # noqa: PLC0415 - the test's own setup

    config = load()
    (tmp_path / "config.yaml").write_text(dump(config) + f"# config hash: {config_hash(config)}\n")
    result = _main_in_subprocess("paper", "--run", str(tmp_path), "--dry-run", "--set", "ppo.algo=sac")
    assert "exit: 2" in result.stdout and "loaded: []" in result.stdout, result.stdout + result.stderr
    assert "paper trading only overrides" in result.stderr


def test_a_backtest_of_an_edited_run_is_refused_before_torch_loads(tmp_path):
    from ploutos.config import config_hash, dump, load  # noqa: PLC0415 - the test's own setup

    config = load()
    (tmp_path / "config.yaml").write_text(dump(config) + f"# config hash: {config_hash(config)}0\n")
    result = _main_in_subprocess("backtest", "--run", str(tmp_path), "--fold", "0")
    assert "exit: 2" in result.stdout and "loaded: []" in result.stdout, result.stdout + result.stderr
    assert "edited after training" in result.stderr


def test_the_probe_sees_torch_when_a_command_gets_past_its_config(tmp_path):
    """Without this, the tests above would pass if the probe could not see a heavy import at all."""
    result = _main_in_subprocess("train", "--fold", "0", "--set", f"data.store={tmp_path / 'none'}")
    assert "exit: 2" in result.stdout and "'torch'" in result.stdout, result.stdout + result.stderr
    assert "no dataset here" in result.stderr
