"""MkDocs hook: files the site serves that are made or kept outside ``docs/``.

- ``results/**.png``: the plots under ``perf/results/``, where the benchmarks write them
  (pages link ``results/roc.png``); they are served as they are, never copied into
  ``docs/``.
- ``openapi.json``: the gateway's OpenAPI schema, generated from its FastAPI app
  (:func:`gateway.api.app.create_app`) at build time, so the REST page renders the schema
  of the code it was built from. The app is only built, never started: nothing is opened,
  and a throwaway data directory is named so that no setting points at a real one.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "perf" / "results"


def openapi_schema() -> dict[str, Any]:
    """The gateway's OpenAPI schema, as ``GET /openapi.json`` answers it."""
    try:
        from gateway.api.app import create_app
        from gateway.settings import Settings
    except ImportError as exc:  # the gateway extra is part of the dev install
        raise PluginError(f"the OpenAPI schema needs the gateway extra: {exc}") from exc
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(_env_file=None, env="development", data_dir=Path(tmp))  # type: ignore[call-arg]
        schema: dict[str, Any] = create_app(settings=settings).openapi()
    return schema


def on_files(files: Files, config: MkDocsConfig, **kwargs: Any) -> Files:
    for path in sorted(RESULTS.rglob("*.png")):
        uri = "results/" + path.relative_to(RESULTS).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    schema = json.dumps(openapi_schema(), indent=1, sort_keys=False) + "\n"
    files.append(File.generated(config, "openapi.json", content=schema))
    return files
