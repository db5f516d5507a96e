"""API key records: id, role and the keyed hash of the secret (never the key itself)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Session

from gateway.errors import ConflictError, NotFoundError
from gateway.scope import DEFAULT_NAMESPACE
from gateway.storage.schema import ApiKeyRow, now


@dataclass(frozen=True)
class ApiKeyInfo:
    id: str
    role: str
    digest: str
    label: str
    created_at: datetime
    revoked_at: datetime | None
    bootstrap: bool = False  # made from FACEREC_ADMIN_KEY
    namespace: str = DEFAULT_NAMESPACE  # the tenant it acts for
    gallery: str | None = None  # the one gallery it is limited to (None: all)


def _info(row: ApiKeyRow) -> ApiKeyInfo:
    return ApiKeyInfo(
        row.id,
        row.role,
        row.digest,
        row.label,
        row.created_at,
        row.revoked_at,
        bool(row.bootstrap),
        row.namespace,
        row.gallery,
    )


class ApiKeyRepository:
    """The ``api_keys`` table; each method is one transaction."""

    def __init__(self, engine: Engine, reads: Engine | None = None) -> None:
        self.engine = engine
        self.reads = reads or engine  # single-statement reads (storage/connections.py)

    def add(
        self,
        key_id: str,
        role: str,
        digest: str,
        label: str = "",
        *,
        bootstrap: bool = False,
        namespace: str = DEFAULT_NAMESPACE,
        gallery: str | None = None,
    ) -> ApiKeyInfo:
        try:
            with Session(self.engine) as s, s.begin():
                row = ApiKeyRow(
                    id=key_id,
                    role=role,
                    digest=digest,
                    label=label,
                    bootstrap=bootstrap,
                    namespace=namespace,
                    gallery=gallery,
                )
                s.add(row)
                s.flush()
                return _info(row)
        except SqlIntegrityError:
            raise ConflictError(f"API key {key_id} exists", code="duplicate_api_key") from None

    def get(self, key_id: str) -> ApiKeyInfo | None:
        """The key ``key_id`` (every request's authentication: one plain query, without
        the ORM's unit of work, in autocommit on PostgreSQL)."""
        with self.reads.connect() as c:
            row = c.execute(select(ApiKeyRow.__table__).where(ApiKeyRow.id == key_id)).first()
            return None if row is None else _info(row)  # type: ignore[arg-type]

    def all(self) -> list[ApiKeyInfo]:
        """Every key, oldest first (revoked ones included)."""
        with Session(self.engine) as s:
            return [_info(r) for r in s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))]

    def revoke(self, key_id: str) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFoundError(f"no API key {key_id}")
            if row.revoked_at is None:
                row.revoked_at = now()

    def mark_bootstrap(self, key_id: str) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFoundError(f"no API key {key_id}")
            row.bootstrap = True

    def active_bootstrap(self) -> list[str]:
        """Ids of the bootstrap keys not revoked, oldest first."""
        with Session(self.engine) as s:
            query = (
                select(ApiKeyRow.id)
                .where(ApiKeyRow.bootstrap.is_(True), ApiKeyRow.revoked_at.is_(None))
                .order_by(ApiKeyRow.created_at)
            )
            return list(s.scalars(query))
