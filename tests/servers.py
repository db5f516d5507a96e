"""Real servers for the tests, started on loopback in temporary folders: a Milvus server
(``milvus_lite server``) and PostgreSQL (Debian's server binaries; ``.ci/run`` installs
them). ``FACEREC_TEST_DATABASE_URL`` points the tests at an existing PostgreSQL instead."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from facerec.triton.repository import write_repository
from facerec.triton.server import TritonServer, triton_home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else b""
            raise RuntimeError(f"server exited with {proc.returncode}: {err[-2000:]!r}")
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


@contextmanager
def milvus_server(data: Path) -> Iterator[str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "milvus_lite",
        "server",
        "--data-dir",
        str(data),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@contextmanager
def triton_server(
    data: Path, adjust: Callable[[Path], None] | None = None
) -> Iterator[TritonServer]:
    """tritonserver (installed by scripts/install_triton.sh) on free loopback ports, with
    a CPU repository generated into ``data`` (and handed to ``adjust`` before the start);
    its log is ``data/triton.log``."""
    repository = data / "repository"
    write_repository("cpu", repository)
    if adjust is not None:
        adjust(repository)
    with (
        (data / "triton.log").open("wb") as log,
        TritonServer(repository, free_port(), free_port(), free_port(), log=log) as server,
    ):
        yield server


def triton_installed() -> bool:
    return (triton_home() / "bin" / "tritonserver").is_file()


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


@contextmanager
def postgres_server(data: Path) -> Iterator[str]:
    """A throwaway PostgreSQL cluster; yields a SQLAlchemy URL of an empty database."""
    given = os.environ.get("FACEREC_TEST_DATABASE_URL")
    if given:
        yield given
        return
    bindir = postgres_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries are not installed")
    # PostgreSQL refuses to run as root: run it as the 'postgres' user when we are root.
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        # pytest's temporary folders are private to root: use one the server user can enter
        data = Path(tempfile.mkdtemp(prefix="facerec-pg-"))
        shutil.chown(data, "postgres")
    pgdata, sock = data / "pgdata", data
    port = free_port()
    subprocess.run(
        [
            *as_user,
            str(bindir / "initdb"),
            "-D",
            str(pgdata),
            "-A",
            "trust",
            "-U",
            "facerec",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    log = data / "postgres.log"
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [
            *as_user,
            str(bindir / "pg_ctl"),
            "-D",
            str(pgdata),
            "-o",
            opts,
            "-l",
            str(log),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [
                *as_user,
                str(bindir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "facerec",
                "facerec",
            ],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg://facerec@127.0.0.1:{port}/facerec"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "stop"],
            capture_output=True,
        )


def fresh_database(url: str, name: str) -> str:
    """A new empty database on the server of ``url`` (one per test), as a URL."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + name


@dataclass
class Service:
    url: str
    key: str
    proc: subprocess.Popen[bytes]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": self.key}, timeout=60)


def _env(data: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    env.update(FACEREC_ENV="development", FACEREC_DATA_DIR=str(data), FACEREC_INDEX_TYPE="FLAT")
    for name in ("FACEREC_HOME", "FACEREC_BACKEND", "FACEREC_TRITON_URL"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(extra or {})
    return env


def start_gateway(
    data: Path, env: dict[str, str] | None = None, log: Path | None = None
) -> Service:
    """``facerec serve`` in development mode on a free loopback port, once ready; its
    output goes to ``log`` when given."""
    port = free_port()
    facerec = Path(sys.executable).with_name("facerec")
    proc = subprocess.Popen(
        [str(facerec), "serve", "--port", str(port)],
        env=_env(data, env),
        cwd=data.parent,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb") if log else subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the service exited"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return Service(url, (data / "admin.key").read_text().strip(), proc)
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise TimeoutError("the service did not become ready")


def stop_gateway(service: Service) -> None:
    service.proc.send_signal(signal.SIGINT)
    try:
        service.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        service.proc.kill()
        service.proc.wait()
