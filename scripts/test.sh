#!/usr/bin/env bash
# Run the test suite (sets up .venv first when needed). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "${HKD_VENV:-$ROOT/.venv}/bin/python" -m pytest -q "$@"
