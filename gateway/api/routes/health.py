"""Liveness and readiness (no API key needed), and metrics (an admin key)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from facerec import __version__
from gateway.api.deps import AdminCaller, GatewayDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok", "version": __version__}


@router.get("/readyz")
def readyz(gateway: GatewayDep) -> JSONResponse:
    """The models, the database and the index all answer, and the process is not
    draining (after SIGTERM: a load balancer stops sending it requests); and the running
    model's identity (``GET /v1/models`` tells an admin how many templates are of others)."""
    readiness = gateway.health.readiness()
    checks = {**readiness.checks, "process": "draining" if gateway.draining else "ok"}
    ready = readiness.ready and not gateway.draining
    return JSONResponse(
        {"ready": ready, "checks": checks, "model": readiness.model},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", response_class=Response)
def metrics(request: Request, caller: AdminCaller) -> Response:
    """Prometheus metrics, for an admin key (Prometheus sends it with
    ``authorization: {credentials: ...}``): the counts by route and status span every
    namespace and would show another tenant's enrolment activity and gallery growth."""
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
