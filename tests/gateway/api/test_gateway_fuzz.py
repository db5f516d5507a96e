"""The OpenAPI schema fuzzed with schemathesis against the running service: whatever the
generated request, no 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from devkit.servers import Service  # noqa: E402
from tests.support.gateway import running_gateway  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_gateway(Path(tmp_path_factory.mktemp("fuzz")) / "data") as running:
        yield running


def test_no_server_errors(service: Service) -> None:
    """Every operation, 30 generated requests each (fixed seed), with a valid admin key."""
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=30,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            response = case.call(headers={"X-API-Key": service.key}, timeout=60)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:500]}"
            )
            if response.status_code >= 400:
                assert response.json()["error"]["code"], response.text

        check()
