"""The FastAPI application: ``create_app()`` builds it; the lifespan opens the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.formparsers import MultiPartParser

from facerec import __version__
from facerec.pipeline import FacePipeline
from gateway.api import handlers, idempotency
from gateway.api.edge import EdgeMiddleware
from gateway.api.policy import Policies
from gateway.api.routes import admin, health, jobs, live, pages, recognition, streams, subjects
from gateway.bootstrap import Gateway, open_gateway
from gateway.metrics import Metrics
from gateway.settings import Settings, get_settings

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
        gw.analyzer.batcher.on_batch = app.state.metrics.batch_size.observe
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
        docs_url=None,  # served by routes/pages.py from local files
        redoc_url=None,
    )
    app.state.metrics = Metrics()
    handlers.install(app)
    idempotency.install(app)
    routers = [subjects.router, recognition.router, jobs.router, admin.router, health.router]
    routers += [live.router, streams.router]
    for router in (*routers, pages.router):
        app.include_router(router)
    policies = Policies([r for router in routers for r in router.routes], conf)
    # Uploads stay in memory (no raw image reaches the disk), bounded by the route limits
    # and by the body bytes in flight, which the edge counts as they arrive.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, policies.largest())
    app.add_middleware(
        EdgeMiddleware, policies=policies, in_flight_limit=conf.max_body_bytes_in_flight
    )
    return app


def app_factory() -> FastAPI:
    """For ``uvicorn --factory gateway.api.app:app_factory``."""
    return create_app()
