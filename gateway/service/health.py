"""Whether this process can serve (``/readyz``), and which models the stored templates
are of (``GET /v1/models``)."""

from __future__ import annotations

from typing import Any

from facerec.pipeline import FacePipeline
from gateway.index.manager import IndexManager
from gateway.service.models import ModelCensus
from gateway.service.types import Readiness
from gateway.storage.database import Database


class HealthService:
    """The database, the index and the models, each asked whether it answers."""

    def __init__(
        self, db: Database, index: IndexManager, pipeline: FacePipeline, census: ModelCensus
    ) -> None:
        self.db, self.index, self.pipeline, self.census = db, index, pipeline, census

    def readiness(self) -> Readiness:
        """Whether the database, the index and the models answer (never raises)."""
        checks: dict[str, str] = {}
        for name, ping in (("database", self.db.ping), ("index", self.index.ping)):
            try:
                ping()
                checks[name] = "ok"
            except Exception as exc:  # readiness reports, never raises
                checks[name] = f"error: {type(exc).__name__}"
        checks["models"] = "ok" if self.pipeline.ready() else "error: unavailable"
        return Readiness(checks, {"id": self.census.model_id})

    def models(self) -> dict[str, Any]:
        """The running model's identity and how many stored templates are of it and of
        others (:class:`~gateway.service.models.ModelCensus`)."""
        return self.census.get()
