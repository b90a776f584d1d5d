"""The argument parser of every ``ploutos`` command and benchmark: a usage error is one line too.

argparse prints the whole usage and then the error; a user error in Ploutos is always one line
``ploutos: error: ...`` with exit code 2, whatever its origin, and ``--help`` shows the usage.
Help text is plain text: descriptions and examples are printed as written (no reST), so they are
wrapped by hand.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line naming the command and the fix.

    The description and epilog keep their line breaks (an example is a command line, and
    argparse's default formatter would join it with the text around it).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"ploutos: error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def examples(*lines: str) -> str:
    """An ``epilog`` listing command lines under ``example:`` (or ``examples:``), two spaces in."""
    head = "example:" if len(lines) == 1 else "examples:"
    return "\n".join([head, *(f"  {line}" for line in lines)])
