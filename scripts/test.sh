#!/usr/bin/env bash
# Run every check: set-up and the servers the integration tests start (both idempotent:
# quick when done), lint, types, then the test suite; with no arguments, the gateway's
# tests once more with the Triton backend (a tritonserver started by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --quiet
bash scripts/install_services.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
if [ $# -eq 0 ] && [ -x .venv/opt/triton/pytriton/tritonserver/bin/tritonserver ]; then
  echo "== the gateway's tests again, on the Triton backend =="
  # the test_gateway_*.py files of tests/gateway/<part>/ (its test_audit_group.py and
  # test_scale_out.py are not rerun)
  FACEREC_BACKEND=triton .venv/bin/python -m pytest tests/gateway/*/test_gateway_*.py
fi
