"""Idempotency keys already used by a mutating request (a replay is refused)."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Session

from gateway.errors import ConflictError
from gateway.storage.schema import RequestRow


class IdempotencyRepository:
    """The ``requests`` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def claim(self, key: str) -> None:
        """Record an idempotency key; a second use is a :class:`ConflictError`."""
        try:
            with Session(self.engine) as s, s.begin():
                s.add(RequestRow(key=key))
        except SqlIntegrityError:
            raise ConflictError(
                "this Idempotency-Key was already used", code="replayed_request"
            ) from None
