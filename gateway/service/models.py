"""How many stored templates are of the running model, for the readiness report.

Counted in SQL (one grouped count over the faces) at most every ``max_age`` seconds:
readiness probes come often, and the figure only changes with enrolments, deletions and
``facerec reembed``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from gateway.storage.model_migration import ModelMigrationRepository

CENSUS_MAX_AGE_S = 30.0


class ModelCensus:
    """``{"id", "templates", "other_model_templates", "other_models"}`` for ``model_id``,
    cached for ``max_age`` seconds."""

    def __init__(
        self,
        templates: ModelMigrationRepository,
        model_id: str,
        max_age: float = CENSUS_MAX_AGE_S,
    ) -> None:
        self.templates, self.model_id, self.max_age = templates, model_id, max_age
        self._lock = threading.Lock()
        self._value: dict[str, Any] | None = None
        self._stamp = 0.0

    def get(self) -> dict[str, Any]:
        with self._lock:
            if self._value is not None and time.monotonic() - self._stamp <= self.max_age:
                return dict(self._value)
        counts = self.templates.model_counts()
        others = {m: n for m, n in counts.items() if m != self.model_id}
        value = {
            "id": self.model_id,
            "templates": counts.get(self.model_id, 0),
            "other_model_templates": sum(others.values()),
            "other_models": dict(sorted(others.items())),
        }
        with self._lock:
            self._value, self._stamp = value, time.monotonic()
        return dict(value)

    def changed(self) -> None:
        """Count afresh on the next :meth:`get`."""
        with self._lock:
            self._value = None
