# syntax=docker/dockerfile:1
# Triton Inference Server (GPU) with the facerec model repository.
#
# Build context: the repository root (docker compose does this, see deploy/README.md):
#   docker build -f deploy/triton.Dockerfile -t facerec-triton .
# Stage `models` converts the published weights into ONNX files and writes the Triton
# model repository (`facerec triton repo --target gpu`): Python-backend models `detector`,
# `aligner`, `fuse` (they import facerec and ONNX Runtime), `embedder` on onnxruntime_onnx
# with the TensorRT accelerator (FP16), and the ensemble `face_pipeline`.
#
# Tritonserver 24.10 (= Triton 2.51) runs its Python backend through a stub linked against
# the image's Python 3.10, but facerec needs Python 3.11. So the final stage adds Python
# 3.11 (deadsnakes; libpython3.11 for the stub), a virtual environment with facerec's core
# and onnxruntime-gpu, and swaps in the stub built for Python 3.11 and Triton 2.51 that the
# nvidia-pytriton 0.7.0 wheel ships (the same server version; its wheel targets glibc 2.35,
# the image's Ubuntu 22.04).

ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS models
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FACEREC_HOME=/opt/facerec \
    PATH=/opt/build/bin:$PATH
WORKDIR /src
# The CPU build of torch from PyTorch's own index (the export extra pins the same version).
RUN python -m venv /opt/build \
 && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY facerec/ facerec/
COPY training/ training/
COPY export/ export/
COPY gateway/ gateway/
RUN pip install -e ".[export]" \
 && facerec models \
 && facerec triton repo --target gpu --out /models \
 && pip wheel --no-deps --wheel-dir /wheels .
# The Python 3.11 backend stub and the libcudart it links, out of the nvidia-pytriton wheel.
RUN pip download --no-deps --dest /tmp/pytriton nvidia-pytriton==0.7.0 \
 && python -m zipfile -e /tmp/pytriton/nvidia_pytriton-0.7.0-*.whl /tmp/pytriton/wheel \
 && install -D -m 0755 \
      /tmp/pytriton/wheel/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub \
      /opt/pytriton/stub/triton_python_backend_stub \
 && install -D -m 0644 -t /opt/pytriton/libs /tmp/pytriton/wheel/nvidia_pytriton.libs/libcudart-*.so.* \
 && rm -rf /tmp/pytriton

FROM ${TRITON_IMAGE} AS triton
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONNOUSERSITE=1 \
    VIRTUAL_ENV=/opt/facerec/venv \
    PATH=/opt/facerec/venv/bin:$PATH
# Python 3.11 with its shared library (the stub links libpython3.11.so.1.0). Not pinned:
# the PPA keeps only its latest builds.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv libpython3.11 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=models /wheels/ /tmp/wheels/
# facerec's core only (no extras), with numpy < 2: the Python backend of Triton 2.51 reads
# numpy 2 arrays wrongly (seen with this very stub: outputs fail with "output tensor shape
# does not match size"), and OpenCV 4.11 is the line that still takes numpy 1.
# ONNX Runtime's GPU build replaces the CPU one facerec pulls (both install the
# `onnxruntime` module); 1.20 is built for CUDA 12 and cuDNN 9, as in this image.
# The stub's embedded interpreter finds this environment through PATH (venv first) and,
# should PATH not reach it, through the .pth file in the system site directory.
RUN python3.11 -m venv /opt/facerec/venv \
 && pip install "numpy<2" "opencv-python-headless==4.11.0.*" "$(ls /tmp/wheels/facerec-*.whl)" \
 && pip uninstall -y onnxruntime \
 && pip install onnxruntime-gpu==1.20.2 \
 && rm -rf /tmp/wheels \
 && mkdir -p /usr/local/lib/python3.11/dist-packages \
 && echo /opt/facerec/venv/lib/python3.11/site-packages \
      > /usr/local/lib/python3.11/dist-packages/facerec-venv.pth \
 && python -c "import numpy, facerec.pipeline, onnxruntime; \
assert numpy.__version__.startswith('1.'), numpy.__version__; \
print(numpy.__version__, onnxruntime.__version__, onnxruntime.get_available_providers())"
# Swap in the Python 3.11 stub; its libcudart goes where the loader finds it by name.
COPY --from=models /opt/pytriton/stub/triton_python_backend_stub /opt/tritonserver/backends/python/triton_python_backend_stub
COPY --from=models /opt/pytriton/libs/ /usr/local/lib/
RUN ldconfig \
 && ldd /opt/tritonserver/backends/python/triton_python_backend_stub > /tmp/stub-libs.txt \
 && cat /tmp/stub-libs.txt \
 && ! grep -q "not found" /tmp/stub-libs.txt \
 && rm /tmp/stub-libs.txt \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin facerec
COPY --from=models /models/ /models/
USER 10001:10001
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=10m --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
CMD ["tritonserver", "--model-repository=/models"]
