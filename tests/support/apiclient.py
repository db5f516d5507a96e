"""The gateway in-process behind a real HTTP client (Starlette's TestClient), and the
request bodies tests send."""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from facerec.pipeline import FacePipeline
from gateway.api.app import create_app
from gateway.settings import Settings


def settings_for(data_dir: Path, storage: dict[str, Any], **extra: Any) -> Settings:
    values = {"env": "development", "data_dir": data_dir, "index_type": "FLAT", **storage, **extra}
    return Settings(**values)


@contextmanager
def running(settings: Settings, pipeline: FacePipeline) -> Iterator[TestClient]:
    """The service started (lifespan run) with the admin key in every request."""
    with TestClient(create_app(settings, pipeline=pipeline)) as client:
        client.headers["X-API-Key"] = (settings.data_dir / "admin.key").read_text().strip()
        yield client


def image_files(paths: Sequence[Path], field: str = "images") -> list[tuple[str, Any]]:
    return [(field, (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def one_image(path: Path, field: str = "image") -> dict[str, Any]:
    return {field: (path.name, path.read_bytes(), "image/jpeg")}


def zip_of(images: Sequence[Path], repeat: int = 1) -> bytes:
    """A zip archive of ``images``, ``repeat`` times over (in folders 0/, 1/, ...)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for k in range(repeat):
            for p in images:
                z.writestr(f"{k}/{p.name}", p.read_bytes())
    return out.getvalue()


def directory_bomb(entries: int, zip64: bool = False, declared: int | None = None) -> bytes:
    """A zip archive whose central directory lists ``entries`` empty .jpg members (no
    data), written by hand the way a hostile client would, with a zip64 end record when
    asked; its end records declare ``declared`` entries (default: the truth)."""
    declared = entries if declared is None else declared
    local, central = io.BytesIO(), io.BytesIO()
    for i in range(entries):
        name = f"{i}.jpg".encode()
        offset = local.tell()
        local.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0))
        local.write(name)
        central.write(
            struct.pack(
                "<4s6H3L5H2L",
                b"PK\x01\x02",
                20,
                20,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                len(name),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
        )
        central.write(name)
    body, directory = local.getvalue(), central.getvalue()
    count = 0xFFFF if zip64 else declared
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(directory), len(body), 0)
    if not zip64:
        return body + directory + end
    eocd64_at = len(body) + len(directory)
    eocd64 = struct.pack(
        "<4sQ2H2L4Q",
        b"PK\x06\x06",
        44,
        45,
        45,
        0,
        0,
        declared,
        declared,
        len(directory),
        len(body),
    )
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, eocd64_at, 1)
    return body + directory + eocd64 + locator + end
