#!/usr/bin/env bash
# Set up a fresh machine (scripts/setup.sh) and run the whole test suite, cluster tests included.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k config -x`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup.sh"
venv="${PLOUTOS_VENV:-$repo/.venv}"
cd "$repo"
"$venv/bin/ruff" check src tests
exec "$venv/bin/python" -m pytest "$@"
