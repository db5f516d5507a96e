"""The gateway's fixtures: the servers its storage runs on (PostgreSQL, Milvus Lite's server,
a real Milvus standalone), the storage configurations every gateway test runs against, the
service in-process (``client``) and as a process (``serve``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from devkit import servers
from devkit.servers import Service, storage_env
from facerec.pipeline import FacePipeline
from gateway.settings import Settings
from tests.support.apiclient import running, settings_for
from tests.support.gateway import running_gateway


@pytest.fixture(scope="session")
def milvus_server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Milvus server process (``milvus_lite server``) on loopback."""
    with servers.milvus_server(tmp_path_factory.mktemp("milvus-server")) as uri:
        yield uri


@pytest.fixture(scope="session")
def milvus_standalone(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[servers.MilvusStandalone]:
    """A real Milvus 2.3 standalone server on loopback, with authentication and TLS; one
    per session (about 3 s to start), each test on its own collections."""
    if not servers.milvus_installed():
        pytest.skip("the milvus package (Milvus standalone) is not installed: scripts/setup.sh")
    with servers.milvus_standalone(tmp_path_factory.mktemp("milvus-standalone")) as server:
        yield server


@pytest.fixture
def standalone(milvus_standalone: servers.MilvusStandalone) -> Iterator[servers.MilvusStandalone]:
    """The session's Milvus standalone server, emptied after the test."""
    yield milvus_standalone
    if milvus_standalone.running:
        milvus_standalone.drop_collections()


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server on loopback (installed by .ci/run)."""
    if servers.postgres_bin() is None and not os.environ.get("FACEREC_TEST_DATABASE_URL"):
        pytest.skip("PostgreSQL server binaries are not installed (.ci/run installs them)")
    with servers.postgres_server(tmp_path_factory.mktemp("postgres")) as url:
        yield url


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("servers", marks=pytest.mark.integration),
        pytest.param("standalone", marks=pytest.mark.integration),
    ]
)
def storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for the three storage configurations every gateway test runs against:
    SQLite + Milvus Lite (embedded); PostgreSQL + Milvus Lite's server process; and
    PostgreSQL + a real Milvus standalone server (authentication and TLS on)."""
    if request.param == "embedded":
        return {}
    database = servers.fresh_database(
        request.getfixturevalue("postgres_url"), f"t_{uuid.uuid4().hex[:12]}"
    )
    if request.param == "standalone":
        server: servers.MilvusStandalone = request.getfixturevalue("standalone")
        return {"database_url": database, **server.settings()}
    return {"database_url": database, "milvus_uri": request.getfixturevalue("milvus_server_uri")}


@pytest.fixture(
    params=[
        "lite",
        pytest.param("lite-server", marks=pytest.mark.integration),
        pytest.param("standalone", marks=pytest.mark.integration),
    ]
)
def milvus(request: pytest.FixtureRequest, tmp_path: Path) -> servers.MilvusTarget:
    """Where an index test's collections live: a Milvus Lite file, Milvus Lite's server
    process, or the real Milvus standalone server (with its credentials and CA)."""
    if request.param == "lite":
        return servers.MilvusTarget(str(tmp_path / "index.db"))
    if request.param == "lite-server":
        return servers.MilvusTarget(request.getfixturevalue("milvus_server_uri"))
    server: servers.MilvusStandalone = request.getfixturevalue("standalone")
    return servers.MilvusTarget(server.uri, server.settings())


@pytest.fixture
def api_settings(storage: dict[str, Any], tmp_path: Path) -> Settings:
    """The settings of ``client``: the test's storage, data in ``tmp_path / "data"`` (a
    module overrides this fixture to add its own)."""
    return settings_for(tmp_path / "data", storage)


@pytest.fixture
def client(api_settings: Settings, pipeline: FacePipeline) -> Iterator[TestClient]:
    """The service in-process on ``api_settings``, the admin key in every request."""
    with running(api_settings, pipeline) as c:
        yield c


@pytest.fixture
def serve(storage: dict[str, Any], tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """``serve(**env)`` starts ``facerec serve`` on the test's storage with data in
    ``tmp_path / "data"`` and the ``FACEREC_*`` variables ``env``; every service started
    is stopped at the end of the test (one stopped before is fine)."""
    with ExitStack() as started:

        def start(**env: str) -> Service:
            return started.enter_context(
                running_gateway(tmp_path / "data", {**storage_env(storage), **env})
            )

        yield start
