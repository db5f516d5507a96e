#!/usr/bin/env bash
# Set up (idempotent), then run the main job: the REST gateway with its embedded defaults
# (in-process ONNX Runtime, SQLite and Milvus Lite under FACEREC_DATA_DIR) on
# http://127.0.0.1:8000. Without FACEREC_MASTER_KEY it runs in development mode: a master
# key and an admin API key are generated into the data directory (the log says where).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
if [ -z "${FACEREC_MASTER_KEY:-}${FACEREC_MASTER_KEY_FILE:-}" ]; then
  export FACEREC_ENV=${FACEREC_ENV:-development}
fi
exec .venv/bin/facerec serve "$@"
