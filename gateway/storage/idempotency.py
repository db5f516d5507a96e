"""Idempotency keys of mutating requests: who claimed each, for which request (its
fingerprint), and, once it succeeded, its response (sealed by the caller)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Session

from gateway.storage.schema import RequestRow, now


@dataclass(frozen=True)
class StoredRequest:
    """A key already claimed: by which request, and its response once finished."""

    fingerprint: str | None  # None: claimed before fingerprints were kept
    status: int | None  # None: still in progress
    response: bytes | None  # sealed
    created_at: datetime


class IdempotencyRepository:
    """The ``requests`` table; each method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def claim(self, key: str, fingerprint: str, abandoned_after: timedelta) -> StoredRequest | None:
        """Claim ``key`` for the request ``fingerprint``: None when it is now ours (new, or
        an in-progress claim older than ``abandoned_after``, whose request died), else
        what holds it."""
        try:
            with Session(self.engine) as s, s.begin():
                s.add(RequestRow(key=key, fingerprint=fingerprint))
            return None
        except SqlIntegrityError:
            pass
        with Session(self.engine) as s, s.begin():
            row = s.get(RequestRow, key)
            if row is None:  # released meanwhile: try again
                return self.claim(key, fingerprint, abandoned_after)
            held = StoredRequest(row.fingerprint, row.status, row.response, row.created_at)
        if held.status is None and held.fingerprint is not None:
            cutoff = now() - abandoned_after
            taken = update(RequestRow).where(
                RequestRow.key == key,
                RequestRow.status.is_(None),
                RequestRow.created_at < cutoff,
            )
            with self.engine.begin() as conn:
                result = conn.execute(taken.values(fingerprint=fingerprint, created_at=now()))
                if result.rowcount == 1:
                    return None
        return held

    def complete(self, key: str, status: int, response: bytes) -> None:
        """Keep the response of the request holding ``key`` (it succeeded)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(RequestRow)
                .where(RequestRow.key == key)
                .values(status=status, response=response)
            )

    def release(self, key: str, fingerprint: str) -> None:
        """Give ``key`` back (its request failed): a retry may use it again."""
        with self.engine.begin() as conn:
            conn.execute(
                delete(RequestRow).where(
                    RequestRow.key == key,
                    RequestRow.fingerprint == fingerprint,
                    RequestRow.status.is_(None),
                )
            )

    def prune(self, before: datetime) -> int:
        """Forget keys claimed before ``before``; returns how many."""
        with self.engine.begin() as conn:
            result = conn.execute(delete(RequestRow).where(RequestRow.created_at < before))
            return int(result.rowcount or 0)

    def keys(self) -> list[str]:
        """Every key held (for tests and inspection)."""
        with Session(self.engine) as s:
            return list(s.scalars(select(RequestRow.key)))
