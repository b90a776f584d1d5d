"""Errors a user can act on.

Every error that bad input can cause derives from :class:`PloutosError`; the CLI prints
it as one line (``ploutos: error: ...``) and exits non-zero, never with a traceback.
"""

from __future__ import annotations


class PloutosError(Exception):
    """Base of all user-facing errors; ``str(err)`` is the whole one-line message."""


class ConfigError(PloutosError):
    """A config file or override is wrong: unknown key, wrong type, impossible value."""


TEXT_SUFFIXES = (".csv", ".txt")
"""Files whose data rows a user finds by line number: one header line, then one line per row."""


def numbering(path: str | None) -> tuple[str, int]:
    """How a user counts the data rows of ``path``: the word and the number of the 0-based row 0.

    In a CSV, a row is found by its line in an editor (the header is line 1, so row 0 is line 2);
    elsewhere (Parquet, a dataset, a source's reply) by its row counted from 1.
    """
    if path is not None and path.lower().endswith(TEXT_SUFFIXES):
        return "line", 2
    return "row", 1


def place(path: str | None, row: int) -> str:
    """Where the 0-based data row ``row`` of ``path`` is, as a user finds it (see :func:`numbering`)."""
    word, first = numbering(path)
    return f"{word} {row + first}"


class DataError(PloutosError):
    """Bars or macro series break a rule; names the file, ticker, place (see :func:`place`) and rule where known.

    ``row`` is 0-based among the data rows; the message shows it as :func:`place` does.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        ticker: str | None = None,
        row: int | None = None,
        rule: str | None = None,
    ) -> None:
        self.path, self.ticker, self.row, self.rule = path, ticker, row, rule
        where = " ".join(
            part
            for part in (
                path,
                f"ticker {ticker}" if ticker is not None else None,
                place(path, row) if row is not None else None,
                f"[{rule}]" if rule else None,
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class SourceError(PloutosError):
    """A data source failed: missing credentials, an HTTP error after retries, a limit."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's text, for wrapping library errors into one-line messages."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class FeatureError(PloutosError):
    """Features cannot be built as configured: a saturating feature, too little data to fit on."""
