"""Generated bad inputs: whatever a config override or a bars CSV holds, Ploutos either accepts it or
refuses it with its own one-line error, never another exception (what reaches a user as a traceback).
The hand-written corpus of tests/bad_inputs/ covers the cases seen; these look for the ones not seen."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ploutos.config import SECTIONS, Config, load
from ploutos.config.sections import DataConfig
from ploutos.data.inspect import check_path
from ploutos.errors import PloutosError

KEYS = sorted(
    [f"{name}.{field.name}" for name, cls in SECTIONS.items() for field in dataclasses.fields(cls)]
    + [field.name for field in dataclasses.fields(Config) if field.name not in SECTIONS]
)
"""Every key ``--set`` accepts."""

YAML_VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            "~",
            "null",
            "true",
            "no",
            "0",
            "-1",
            "1e400",
            "-1e400",
            ".inf",
            "-.inf",
            ".nan",
            "nan",
            "1e-400",
            "2024-02-30",
            "2024-13-01",
            "2024-01-01T25:00:00",
            "2021-01-04T10:00:00+25:00",
            "9999-12-31",
            "[]",
            "[[]]",
            "{}",
            "{a: 1}",
            "[1, [2]]",
            "'",
            "[",
            "{",
            ": :",
            "- -",
            "!!python/object:os.system",
            "&a [*a]",
            "0x10",
            "0o17",
            "1_000",
            "99999999999999999999999",
            "Mars/Olympus",
            "../../etc/passwd",
        ]
    ),  # fmt: skip
    st.text(max_size=40),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=YAML_VALUES)
def test_any_override_loads_or_is_refused_in_one_line(key: str, value: str):
    try:
        load("quickstart", [f"{key}={value}"])
    except PloutosError as err:
        assert str(err) and "\n" not in str(err)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=st.lists(st.tuples(st.sampled_from(KEYS), YAML_VALUES), min_size=2, max_size=5))
def test_combined_overrides_load_or_are_refused_in_one_line(pairs: list[tuple[str, str]]):
    try:
        load("full", [f"{key}={value}" for key, value in pairs])
    except PloutosError as err:
        assert str(err) and "\n" not in str(err)


HEADER = "timestamp,ticker,open,high,low,close,volume"
CELLS = st.one_of(
    st.sampled_from(
        [
            "",
            "nan",
            "inf",
            "-1",
            "0",
            "1e308",
            "1e400",
            "abc",
            "2024-01-02 10:00:00",
            "2024-02-30 10:00",
            "9999-12-31T23:00:00",
            "0001-01-01",
            "1700000000",
            "1700000000000",
            "1700000000000000000",
            "-99999999999999999999",
            "2024-01-02T10:00:00+25:00",
            "SPY",
            '"quoted,comma"',
            "\x00",
        ]
    ),  # fmt: skip
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=",\n\r"), max_size=12),
)
ROWS = st.lists(st.lists(CELLS, min_size=7, max_size=7).map(",".join), min_size=0, max_size=8)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(rows=ROWS, header=st.sampled_from([HEADER, HEADER.upper(), "time,open,high,low,close", "", "a,b"]))
def test_any_csv_is_checked_or_refused_in_one_line(tmp_path: Path, rows: list[str], header: str):
    path = tmp_path / "bars.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8", errors="surrogatepass")
    try:
        problems = check_path(path, DataConfig(session="24x7"))
    except PloutosError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert all("\n" not in str(problem) for problem in problems)
