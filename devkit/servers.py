"""Real servers for the tests, started on loopback in temporary folders: Milvus Lite's
server (``milvus_lite server``), a real Milvus 2.3 standalone server (the ``milvus`` package
from PyPI, a dev dependency), and PostgreSQL (Debian's server binaries; ``.ci/run`` installs
them). ``FACEREC_TEST_DATABASE_URL`` points the tests at an existing PostgreSQL instead."""

from __future__ import annotations

import fcntl
import glob
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from facerec.models import BASE_MODEL
from facerec.triton.repository import write_repository
from facerec.triton.server import TritonServer, triton_home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """``check()``'s first true value, asked every ``every`` seconds; AssertionError
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


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


# Every port Milvus 2.3 standalone opens, as named in the `milvus` package's config template.
_MILVUS_PORTS = (
    "etcd_port",
    "root_coord_port",
    "proxy_port",
    "proxy_internal_port",
    "query_coord_port",
    "query_node_port",
    "index_coord_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
)
MILVUS_USER = "facerec"


def milvus_installed() -> bool:
    """The ``milvus`` package (a dev dependency) ships a Milvus 2.3 standalone server."""
    return importlib.util.find_spec("milvus") is not None


def _milvus_binaries() -> Path:
    """The server binaries, unpacked once from the ``milvus`` package into the venv
    (the package itself would unpack ~400 MB into every data folder)."""
    import milvus

    home = Path(sys.prefix) / "opt" / f"milvus-{milvus.__version__}"
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several test sessions may start at once
        milvus._initialize_data_files(str(home))  # skips files already unpacked
    return home / "bin"


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files in ``folder``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "server.pem", folder / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def _die_with_parent() -> None:
    """In the child: SIGKILL when the process that started it dies (no stray servers)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class MilvusStandalone:
    """A running Milvus 2.3 standalone server with authentication (and TLS when asked)."""

    uri: str
    user: str
    password: str
    ca_file: Path | None
    data: Path
    command: list[str]
    env: dict[str, str]
    health_url: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> None:
        """Start the server (again, on the same data and ports) and wait until healthy."""
        # No Python code in the forked child when util-linux's setpriv can set the parent-
        # death signal: a fork of this process while gRPC threads run (a Milvus Lite
        # server, a gateway) can abort the child in gRPC's fork handlers.
        setpriv = shutil.which("setpriv")
        command = [setpriv, "--pdeathsig", "KILL", *self.command] if setpriv else self.command
        with (self.data / "milvus.log").open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=self.data,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=None if setpriv else _die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = (self.data / "milvus.log").read_bytes()[-2000:]
                raise RuntimeError(f"milvus exited with {self.proc.returncode}: {tail!r}")
            try:
                if httpx.get(self.health_url, timeout=2).text == "OK":
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"Milvus standalone did not become healthy in {timeout} s")
            time.sleep(0.2)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the server ignores SIGTERM for a long time."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=30)

    def settings(self) -> dict[str, Any]:
        """The gateway settings that reach this server."""
        values: dict[str, Any] = {
            "milvus_uri": self.uri,
            "milvus_user": self.user,
            "milvus_password": self.password,
        }
        if self.ca_file is not None:
            values["milvus_ca_file"] = self.ca_file
        return values

    def client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"token": f"{self.user}:{self.password}", "timeout": 30}
        if self.ca_file is not None:
            kwargs["server_pem_path"] = str(self.ca_file)
        return kwargs

    def drop_collections(self) -> None:
        """Drop every collection (between tests: a loaded collection holds memory)."""
        from pymilvus import MilvusClient

        client = MilvusClient(self.uri, **self.client_kwargs())
        try:
            for name in client.list_collections():
                client.drop_collection(name)
        finally:
            client.close()


@dataclass
class MilvusTarget:
    """A Milvus URI and the gateway settings that reach it (credentials, CA)."""

    uri: str
    settings: dict[str, Any] = field(default_factory=dict)

    def options(self) -> Any:
        """:class:`gateway.index.milvus.MilvusOptions` for these settings."""
        from gateway.index.milvus import MilvusOptions

        ca = self.settings.get("milvus_ca_file")
        return MilvusOptions(
            user=self.settings.get("milvus_user"),
            password=self.settings.get("milvus_password"),
            ca_file=None if ca is None else str(ca),
        )


@contextmanager
def milvus_standalone(
    data: Path, tls: bool = True, session_ttl: int | None = None
) -> Iterator[MilvusStandalone]:
    """A Milvus 2.3 standalone server (the ``milvus`` PyPI package) on free ports, its data
    and logs in ``data``, with authentication on: user ``facerec`` (role admin) with a
    random password, root's default password replaced. ``tls`` serves gRPC over TLS with
    a self-signed certificate for 127.0.0.1. ``session_ttl`` (seconds, default 30) bounds
    how long a restart after SIGKILL waits for the dead process's sessions to expire before
    it loads collections again. Its gRPC ports listen on every interface (Milvus 2.3 does
    not bind them to one address); etcd listens on loopback."""
    from milvus import MilvusServerConfig
    from pymilvus import MilvusClient

    binaries = _milvus_binaries()
    data.mkdir(parents=True, exist_ok=True)
    config = MilvusServerConfig(data_dir=str(data), **{p: free_port() for p in _MILVUS_PORTS})
    config.set("authorization_enabled", True)
    ca_file = None
    if tls:
        ca_file, key_file = self_signed_certificate(data)
        config.set("tls_mode", 1)
        config.set("server_pem_path", str(ca_file))
        config.set("server_key_path", str(key_file))
        config.set("ca_pem_path", str(ca_file))
    if session_ttl is not None:
        config.set("common.session.ttl", session_ttl)
    config.resolve()  # writes data/configs/milvus.yaml
    # Embedded etcd listens on 2379/2380 unless told otherwise: give it free loopback ports.
    client_port, peer_port = free_port(), free_port()
    etcd = data / "configs" / "etcd.yaml"
    etcd.write_text(
        "name: default\n"
        f"listen-client-urls: http://127.0.0.1:{client_port}\n"
        f"advertise-client-urls: http://127.0.0.1:{client_port}\n"
        f"listen-peer-urls: http://127.0.0.1:{peer_port}\n"
        f"initial-advertise-peer-urls: http://127.0.0.1:{peer_port}\n"
        f"initial-cluster: default=http://127.0.0.1:{peer_port}\n"
    )
    milvus_yaml = data / "configs" / "milvus.yaml"
    text = milvus_yaml.read_text()
    milvus_yaml.write_text(text.replace("etcd:\n", f"etcd:\n  config:\n    path: {etcd}\n", 1))
    health_port = free_port()
    env = dict(
        os.environ,
        DEPLOY_MODE="STANDALONE",
        METRICS_PORT=str(health_port),
        MILVUS_RUN_DIR=str(data / "run"),
        LD_LIBRARY_PATH=str(binaries),
    )
    scheme = "https" if tls else "http"
    server = MilvusStandalone(
        uri=f"{scheme}://127.0.0.1:{config.get('proxy_port')}",
        user=MILVUS_USER,
        password=secrets.token_urlsafe(16),
        ca_file=ca_file,
        data=data,
        command=[str(binaries / "milvus"), "run", "standalone"],
        env=env,
        health_url=f"http://127.0.0.1:{health_port}/healthz",
    )
    try:
        server.start()
        tls_args = {"server_pem_path": str(ca_file)} if ca_file else {}
        root = MilvusClient(server.uri, token="root:Milvus", timeout=60, **tls_args)
        root.create_user(MILVUS_USER, server.password)
        root.grant_role(MILVUS_USER, "admin")
        root.update_password("root", "Milvus", secrets.token_urlsafe(16))
        root.close()
        yield server
    finally:
        server.kill()


@contextmanager
def triton_server(
    data: Path, adjust: Callable[[Path], None] | None = None, model: str = BASE_MODEL
) -> Iterator[TritonServer]:
    """tritonserver (installed by scripts/install_triton.sh) on free loopback ports, with
    a CPU repository serving ``model`` generated into ``data`` (and handed to ``adjust``
    before the start); its log is ``data/triton.log``."""
    repository = data / "repository"
    write_repository("cpu", repository, model=model)
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


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster on loopback; ``url`` names its empty database."""

    url: str
    pgdata: Path
    bindir: Path
    as_user: list[str]
    opts: str
    log: Path

    def _ctl(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        command = [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.pgdata), *args]
        return subprocess.run(command, capture_output=True)

    def stop(self) -> None:
        self._ctl("-m", "immediate", "stop")

    def start(self) -> None:
        done = self._ctl("-o", self.opts, "-l", str(self.log), "-w", "start")
        if done.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start: {done.stderr[-2000:]!r}")

    def restart(self) -> None:
        """Stop at once (every connection cut, as in a crash) and start again."""
        self.stop()
        self.start()


@contextmanager
def postgres_instance(data: Path) -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster (Debian's server binaries; .ci/run installs them)."""
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
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
    url = f"postgresql+psycopg://facerec@127.0.0.1:{port}/facerec"
    server = Postgres(url, pgdata, bindir, as_user, opts, data / "postgres.log")
    server.start()
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
        yield server
    finally:
        server.stop()


@contextmanager
def postgres_server(data: Path) -> Iterator[str]:
    """A throwaway PostgreSQL cluster; yields a SQLAlchemy URL of an empty database.
    ``FACEREC_TEST_DATABASE_URL`` names an existing server instead."""
    given = os.environ.get("FACEREC_TEST_DATABASE_URL")
    if given:
        yield given
        return
    with postgres_instance(data) as server:
        yield server.url


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


def storage_env(settings: Mapping[str, Any]) -> dict[str, str]:
    """The variables that give a gateway process these settings (``FACEREC_<NAME>``, the
    values as strings): a storage configuration of the tests (``database_url``,
    ``milvus_uri``, ...) or :meth:`MilvusStandalone.settings`, as ``start_gateway``'s
    ``env``."""
    return {f"FACEREC_{name.upper()}": str(value) for name, value in settings.items()}


def _env(data: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    env.update(FACEREC_ENV="development", FACEREC_DATA_DIR=str(data), FACEREC_INDEX_TYPE="FLAT")
    for name in ("FACEREC_HOME", "FACEREC_BACKEND", "FACEREC_TRITON_URL"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(extra or {})
    return env


def _facerec(
    data: Path, args: list[str], env: dict[str, str] | None, log: Path | None
) -> subprocess.Popen[bytes]:
    facerec = Path(sys.executable).with_name("facerec")
    return subprocess.Popen(
        [str(facerec), *args],
        env=_env(data, env),
        cwd=data.parent,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab") if log else subprocess.DEVNULL,
    )


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 90) -> None:
    """Until ``url``/readyz answers 200 (the process must not exit meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc is None or proc.poll() is None, "the service exited"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    if proc is not None:
        proc.kill()
    raise TimeoutError(f"{url} did not become ready")


def start_gateway(
    data: Path,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    port: int | None = None,
    args: tuple[str, ...] = (),
    timeout: float = 90,
) -> Service:
    """``facerec serve`` in development mode on a free loopback port (or ``port``), once
    ready (within ``timeout`` seconds); its output goes to ``log`` when given; ``args``
    are more options of serve. The key is ``FACEREC_ADMIN_KEY`` when ``env`` sets it,
    else the development one. The tests and the benchmarks (``perf/``) start it here."""
    port = port or free_port()
    proc = _facerec(data, ["serve", "--host", "127.0.0.1", "--port", str(port), *args], env, log)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, timeout)
    key = (env or {}).get("FACEREC_ADMIN_KEY") or (data / "admin.key").read_text().strip()
    return Service(url, key, proc)


def start_worker(
    data: Path, env: dict[str, str] | None = None, log: Path | None = None, timeout: float = 90
) -> subprocess.Popen[bytes]:
    """``facerec worker`` in development mode, once it runs (it says so in ``log``)."""
    log = log or data.parent / f"worker-{time.monotonic_ns()}.log"
    start = log.stat().st_size if log.exists() else 0
    proc = _facerec(data, ["worker"], env, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_bytes()[start:][-3000:]
        if b"running jobs and streams" in log.read_bytes()[start:]:
            return proc
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError("the worker did not start")


def stop_gateway(service: Service) -> None:
    service.proc.send_signal(signal.SIGINT)
    try:
        service.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        service.proc.kill()
        service.proc.wait()


# -- the load balancer (HAProxy, Debian's; scripts/install_services.sh installs it) -------
HAPROXY_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "haproxy.cfg"


def haproxy_installed() -> bool:
    return shutil.which("haproxy") is not None


@dataclass
class LoadBalancer:
    url: str
    stats_url: str
    proc: subprocess.Popen[bytes]

    def servers(self) -> dict[str, dict[str, str]]:
        """Each backend server's row of HAProxy's CSV statistics (status, stot, ...)."""
        text = httpx.get(f"{self.stats_url};csv", timeout=5).text
        lines = text.lstrip("# ").splitlines()
        header = lines[0].split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
        return {
            r["svname"]: r
            for r in rows
            if r.get("pxname") == "gateway" and r["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_up(self, names: list[str] | None = None, timeout: float = 60) -> None:
        """Until every backend server (or those of ``names``) is UP."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = {k: v["status"] for k, v in self.servers().items()}
            if all(states[n] == "UP" for n in (names or list(states))):
                return
            time.sleep(0.25)
        raise TimeoutError(f"backend servers not up: {self.servers()}")


def haproxy_config(backends: dict[str, str]) -> str:
    """``deploy/haproxy.cfg`` with its server block replaced by ``backends`` (name ->
    host:port)."""
    text = HAPROXY_CONFIG.read_text()
    start = text.index("    # --- servers ---\n")
    end = text.index("    # --- end servers ---\n")
    lines = "".join(f"    server {name} {address}\n" for name, address in backends.items())
    return text[:start] + lines + text[end:]


@contextmanager
def load_balancer(backends: dict[str, str], data: Path) -> Iterator[LoadBalancer]:
    """HAProxy on a free loopback port with the deployment's configuration, in front of
    ``backends`` (name -> host:port); its log is ``data/haproxy.log``."""
    data.mkdir(parents=True, exist_ok=True)
    config = data / "haproxy.cfg"
    config.write_text(haproxy_config(backends))
    port, stats = free_port(), free_port()
    env = dict(
        os.environ,
        FACEREC_LB_BIND=f"127.0.0.1:{port}",
        FACEREC_LB_STATS_BIND=f"127.0.0.1:{stats}",
    )
    with (data / "haproxy.log").open("ab") as log:
        proc = subprocess.Popen(
            ["haproxy", "-f", str(config), "-db"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for_port(port, proc)
        yield LoadBalancer(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{stats}/stats", proc)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
