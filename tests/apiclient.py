"""The gateway in-process behind a real HTTP client (Starlette's TestClient), and the
request bodies tests send."""

from __future__ import annotations

import io
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
