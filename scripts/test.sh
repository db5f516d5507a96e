#!/usr/bin/env bash
# Run every check: lint, types, then the test suite. Needs scripts/setup.sh to have run.
set -euo pipefail
cd "$(dirname "$0")/.."

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
