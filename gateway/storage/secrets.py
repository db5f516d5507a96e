"""Service secrets (audit chain key, API-key pepper, index protection seeds), stored wrapped
by the master key like a data key, so they survive a master-key rotation."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Session

from gateway.crypto.envelope import Keyring, WrappedKey, new_data_key
from gateway.storage.schema import SystemKeyRow, now


def _aad(name: str) -> str:
    return f"__system__/{name}"


class SecretRepository:
    """The ``system_keys`` table; each method is one transaction."""

    def __init__(self, engine: Engine, keyring: Keyring) -> None:
        self.engine, self.keyring = engine, keyring

    def get_or_create(self, name: str, make: Callable[[], bytes] = new_data_key) -> bytes:
        """The secret ``name``, created (by ``make``) and stored wrapped on first use."""
        if (secret := self.get(name)) is not None:
            return secret
        wrapped = self.keyring.wrap(make(), _aad(name))
        try:
            with Session(self.engine) as s, s.begin():
                s.add(SystemKeyRow(name=name, key_id=wrapped.key_id, blob=wrapped.blob))
        except SqlIntegrityError:
            pass  # another process created it first: use theirs
        return self.get_or_create(name, make)

    def get(self, name: str) -> bytes | None:
        """The secret ``name``, or None when there is none (never creates one)."""
        with Session(self.engine) as s:
            row = s.get(SystemKeyRow, name)
            if row is None:
                return None
            return self.keyring.unwrap(WrappedKey(row.key_id, row.blob), _aad(name))

    def set(self, name: str, secret: bytes) -> None:
        wrapped = self.keyring.wrap(secret, _aad(name))
        with Session(self.engine) as s, s.begin():
            row = s.get(SystemKeyRow, name)
            if row is None:
                s.add(SystemKeyRow(name=name, key_id=wrapped.key_id, blob=wrapped.blob))
            else:
                row.key_id, row.blob, row.updated_at = wrapped.key_id, wrapped.blob, now()

    def drop(self, name: str) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(SystemKeyRow, name)
            if row is not None:
                s.delete(row)

    def rewrap_keys(self, s: Session) -> int:
        """Re-wrap every secret under the keyring's current master key, inside the
        caller's transaction ``s``; returns how many changed."""
        changed = 0
        for row in s.scalars(select(SystemKeyRow)):
            old = WrappedKey(row.key_id, row.blob)
            new = self.keyring.rewrap(old, _aad(row.name))
            if new != old:
                row.key_id, row.blob, row.updated_at = new.key_id, new.blob, now()
                changed += 1
        return changed
