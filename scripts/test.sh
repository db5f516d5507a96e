#!/usr/bin/env bash
# Run every check: set-up (idempotent: quick when done), lint, types, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --quiet
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
