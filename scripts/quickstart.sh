#!/usr/bin/env bash
# Set up a fresh machine (scripts/setup.sh) and run the main job on the embedded quickstart config.
# Extra arguments go to `ploutos run`, e.g. `bash scripts/quickstart.sh --set ensemble.members=1`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup.sh"
venv="${PLOUTOS_VENV:-$repo/.venv}"
cd "$repo"
exec "$venv/bin/ploutos" run --config configs/quickstart.yaml "$@"
