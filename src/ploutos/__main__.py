"""``python -m ploutos`` is the ``ploutos`` command."""

import sys

from ploutos.cli import main

sys.exit(main())
