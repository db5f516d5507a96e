#!/usr/bin/env bash
# Triton Inference Server for this machine (CPU, no Docker), and perf_analyzer.
#
# - tritonserver 2.51 with its Python backend, from the nvidia-pytriton 0.7.0 wheel: only
#   the server tree and its bundled libraries are extracted (pytriton's Python package
#   pins numpy<2, which the rest of the stack cannot use, so it is not installed).
# - perf_analyzer from the tritonclient 2.46.0 wheel (the newest one that runs on glibc
#   2.36); it needs Debian's libb64-0d and a libcudart.so.12 (the copy inside pytriton).
#
# - .venv/opt/triton-env: the Python environment the Python-backend models run in. The
#   backend stub of 2.51 reads numpy 2 arrays wrongly (every element becomes the first
#   byte), so it gets numpy<2 with the same onnxruntime and OpenCV as .venv, and this
#   project installed editable: Triton runs the working tree's code.
#
# Everything lands in .venv/opt/; `facerec triton serve` and perf/triton_perf.py find it
# there (or through FACEREC_TRITON_HOME / FACEREC_TRITON_PYTHON). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

OPT=.venv/opt
SERVER=$OPT/triton
PERF=$OPT/perf_analyzer
ENV=$OPT/triton-env
if [ ! -x "$ENV/bin/python3" ]; then
  ORT=$(.venv/bin/python -c 'import onnxruntime; print(onnxruntime.__version__)')
  CV=$(.venv/bin/python -c 'import cv2; print(cv2.__version__)')
  "$(.venv/bin/python -c 'import sys; print(sys.base_prefix)')/bin/python3" -m venv "$ENV"
  "$ENV/bin/python" -m pip install --quiet 'numpy<2' "onnxruntime==$ORT" \
    "opencv-python-headless==$CV.*" pillow
  "$ENV/bin/python" -m pip install --quiet --no-deps -e .
fi
if [ -x "$SERVER/pytriton/tritonserver/bin/tritonserver" ] && [ -x "$PERF/bin/perf_analyzer" ]; then
  exit 0
fi
WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT
.venv/bin/python -m pip download --quiet --no-deps --dest "$WHEELS" \
  nvidia-pytriton==0.7.0 tritonclient==2.46.0

rm -rf "$SERVER" "$PERF"
mkdir -p "$SERVER" "$PERF/bin" "$PERF/lib"
unzip -q "$WHEELS"/nvidia_pytriton-0.7.0-*.whl 'pytriton/tritonserver/*' \
  'nvidia_pytriton.libs/*' -d "$SERVER"
# The Python backend runs models through a stub built for the interpreter's version.
cp "$SERVER/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub" \
  "$SERVER/pytriton/tritonserver/backends/python/"

unzip -q -j "$WHEELS"/tritonclient-2.46.0-*.whl 'tritonclient-2.46.0.data/data/bin/perf_analyzer' \
  -d "$PERF/bin"
chmod +x "$PERF/bin/perf_analyzer" "$SERVER/pytriton/tritonserver/bin/tritonserver"
ln -sf "$(realpath "$SERVER"/nvidia_pytriton.libs/libcudart-*.so.*)" "$PERF/lib/libcudart.so.12"
if ! ldconfig -p | grep -q 'libb64.so.0d'; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq libb64-0d >/dev/null
  else
    sudo apt-get install -y -qq libb64-0d >/dev/null
  fi
fi
echo "tritonserver: $SERVER/pytriton/tritonserver/bin/tritonserver"
echo "perf_analyzer: $PERF/bin/perf_analyzer"
