"""The real service (``facerec serve``, started by :func:`devkit.servers.start_gateway`)
for a block of a test or a fixture's life: stopped when the block ends, however it ends."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from devkit.servers import Service, start_gateway, stop_gateway


@contextmanager
def running_gateway(
    data: Path, env: Mapping[str, str] | None = None, **options: Any
) -> Iterator[Service]:
    """``facerec serve`` on ``data`` with the variables ``env`` (and ``start_gateway``'s
    other ``options``: ``log``, ``port``, ``args``, ``timeout``), stopped at the end of the
    block. Stopping it earlier (``stop_gateway``), or a kill, is fine."""
    service = start_gateway(data, None if env is None else dict(env), **options)
    try:
        yield service
    finally:
        stop_gateway(service)


def client_with_key(service: Service, key: str, timeout: float = 60) -> httpx.Client:
    """A client of the running ``service`` that presents ``key`` (``service.client()``
    presents the admin key)."""
    return httpx.Client(base_url=service.url, headers={"X-API-Key": key}, timeout=timeout)
