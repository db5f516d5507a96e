"""The FastAPI application: ``create_app()`` builds it; the lifespan opens the gateway."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from facerec import __version__
from facerec.pipeline import FacePipeline
from gateway.api import handlers
from gateway.api.routes import admin, health, jobs, recognition, subjects
from gateway.bootstrap import Gateway, open_gateway
from gateway.metrics import Metrics
from gateway.settings import Settings, get_settings

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

DESCRIPTION = """Face recognition: enrol people, verify (1:1) and identify (1:N) faces.

Authenticate with an API key in `X-API-Key` (or `Authorization: Bearer`). Images are
multipart uploads. Every error is `{"error": {"code", "message", ...}}` with a 4xx status
for bad input. Templates are stored encrypted; the index holds only protected vectors.
"""


def create_app(
    settings: Settings | None = None,
    gateway: Gateway | None = None,
    pipeline: FacePipeline | None = None,
) -> FastAPI:
    """The app; with ``gateway`` given it is used as is (and not closed on shutdown)."""

    conf = settings or (gateway.settings if gateway else get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = gateway is None
        gw = gateway or open_gateway(conf, pipeline)
        gw.service.batcher.on_batch = app.state.metrics.batch_size.observe
        app.state.gateway = gw
        try:
            yield
        finally:
            if owned:
                gw.close()

    app = FastAPI(
        title="facerec gateway",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.metrics = Metrics()
    handlers.install(app)

    @app.middleware("http")
    async def _envelope(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        given = request.headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        request.state.request_id = rid
        limit = conf.max_request_bytes
        length = request.headers.get("content-length")
        start = time.perf_counter()
        if length is not None and (not length.isdigit() or int(length) > limit):
            response: Response = handlers.error_response(
                request, 413, "payload_too_large", f"requests are limited to {limit} bytes"
            )
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        label = getattr(route, "path", "unmatched")
        metrics: Metrics = request.app.state.metrics
        metrics.requests.labels(label, request.method, str(response.status_code)).inc()
        metrics.latency.labels(label).observe(time.perf_counter() - start)
        response.headers["X-Request-ID"] = rid
        return response

    for router in (subjects.router, recognition.router, jobs.router, admin.router, health.router):
        app.include_router(router)
    return app


def app_factory() -> FastAPI:
    """For ``uvicorn --factory gateway.api.app:app_factory``."""
    return create_app()
