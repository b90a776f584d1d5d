"""The argument parser of every ``ploutos`` command and benchmark: a usage error is one line too.

argparse prints the whole usage and then the error; a user error in Ploutos is always one line
``ploutos: error: ...`` with exit code 2, whatever its origin, and ``--help`` shows the usage.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line naming the command and the fix."""

    def error(self, message: str) -> NoReturn:
        print(f"ploutos: error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)
