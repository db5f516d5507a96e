"""Liveness, readiness, metrics and the try-it page (no API key needed)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from facerec import __version__
from gateway.api.deps import GatewayDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok", "version": __version__}


@router.get("/readyz")
def readyz(gateway: GatewayDep) -> JSONResponse:
    """The models, the database and the index all answer."""
    checks: dict[str, str] = {}
    try:
        gateway.service.db.ping()
        checks["database"] = "ok"
    except Exception as exc:  # readiness reports, never raises
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        gateway.service.index.current.client.has_collection(
            gateway.service.index.current.collection
        )
        checks["index"] = "ok"
    except Exception as exc:
        checks["index"] = f"error: {type(exc).__name__}"
    pipeline = gateway.service.pipeline
    checks["models"] = "ok" if pipeline is not None and pipeline.ready() else "error: unavailable"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    """A small page to try the API: enrol, identify, verify, audit."""
    html = resources.files("gateway").joinpath("static/index.html").read_text()
    return HTMLResponse(html)
