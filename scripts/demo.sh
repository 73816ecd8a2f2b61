#!/usr/bin/env bash
# The demo: set up .venv if needed, then train teacher / student / HKD student on generated data
# and write demo_output/report.md (minutes on a CPU; benchmarks/README.md has measured times). Extra arguments go to
# tools/demo.py (see `.venv/bin/python tools/demo.py --help`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "${HKD_VENV:-$ROOT/.venv}/bin/python" tools/demo.py --out demo_output "$@"
