#!/usr/bin/env bash
# Set up (idempotent) and run the main job: the end-to-end LFW benchmark with the
# embedded defaults (in-process ONNX Runtime). LFW_DIR overrides where LFW is read from.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
LFW_DIR=${LFW_DIR:-../shared/datasets/lfw}
.venv/bin/facerec bench lfw --data "$LFW_DIR" --out results/lfw "$@"
