"""Run the real ``tritonserver`` here: the binary bundled in nvidia-pytriton (CPU, Python
backend only), installed by ``scripts/install_triton.sh`` under ``.venv/opt/triton``.

What it needs on these machines (``platform-notes.md``): the 3.11 backend stub next to the
Python backend, the interpreter's own ``libpython`` first on ``LD_LIBRARY_PATH`` (the
system one breaks the stub), and the environment's ``bin`` first on ``PATH`` so the stub
imports this environment's packages (``facerec``, ``onnxruntime``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from facerec.errors import FaceRecError


class TritonUnavailableError(FaceRecError):
    code = "triton_unavailable"
    http_status = 503


def triton_home() -> Path:
    """The server tree (``bin/tritonserver``, ``backends/``): ``FACEREC_TRITON_HOME`` or
    the copy installed in this environment."""
    env = os.environ.get("FACEREC_TRITON_HOME")
    if env:
        return Path(env)
    return Path(sys.prefix) / "opt" / "triton" / "pytriton" / "tritonserver"


def model_environment() -> Path:
    """The Python environment the Python-backend models run in: ``FACEREC_TRITON_PYTHON``,
    else ``.venv/opt/triton-env`` (numpy < 2: the backend stub reads numpy 2 arrays
    wrongly), else this one."""
    env = os.environ.get("FACEREC_TRITON_PYTHON")
    if env:
        return Path(env)
    own = Path(sys.prefix) / "opt" / "triton-env"
    return own if (own / "bin" / "python3").exists() else Path(sys.prefix)


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or str(Path(sys.base_prefix) / "lib")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p
    )
    env["PATH"] = os.pathsep.join([str(model_environment() / "bin"), env.get("PATH", "")])
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


@dataclass
class TritonServer:
    """One ``tritonserver`` process on loopback serving ``repository``."""

    repository: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    log: IO[bytes] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    def url(self, protocol: str) -> str:
        """``host:port`` of the ``grpc`` or ``http`` endpoint."""
        return self.grpc_url if protocol == "grpc" else self.http_url

    def command(self) -> list[str]:
        home = triton_home()
        binary = home / "bin" / "tritonserver"
        if not binary.is_file():
            raise TritonUnavailableError(
                f"tritonserver not found at {binary}; run scripts/install_triton.sh "
                "(or set FACEREC_TRITON_HOME)"
            )
        return [
            str(binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={home / 'backends'}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--exit-timeout-secs=10",
            "--log-verbose=0",
        ]

    def start(self, timeout: float = 120.0) -> TritonServer:
        """Start the server and wait until every model is ready."""
        if not (self.repository / "face_pipeline" / "config.pbtxt").is_file():
            raise TritonUnavailableError(
                f"{self.repository} is not a model repository; run `facerec triton repo`"
            )
        self.process = subprocess.Popen(
            self.command(),
            env=_environment(),
            stdout=self.log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready(timeout)
        return self

    def ready(self) -> bool:
        url = f"http://{self.http_url}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise TritonUnavailableError(
                    f"tritonserver exited with status {self.process.returncode} while starting"
                )
            if self.ready():
                return
            time.sleep(0.25)
        self.stop()
        raise TritonUnavailableError(f"tritonserver not ready after {timeout:.0f} s")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (Triton unloads models and exits), SIGKILL if it lingers."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
