"""API keys against the system of record: issue, check, revoke, bootstrap."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.apikeys import IssuedKey, check_secret, digest_secret, issue_key, parse_token
from gateway.errors import AuthError
from gateway.store import ApiKeyInfo, Store


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: str


class KeyManager:
    """Keys are checked with a pepper (a service secret), so the table alone proves nothing."""

    def __init__(self, store: Store, pepper: bytes) -> None:
        self.store, self.pepper = store, pepper

    def create(self, role: str, label: str = "") -> IssuedKey:
        issued = issue_key(self.pepper, role)
        self.store.add_api_key(issued.key_id, issued.role, issued.digest, label)
        return issued

    def bootstrap_admin(self, token: str) -> str:
        """Register ``token`` (``FACEREC_ADMIN_KEY``) as an admin key unless it exists."""
        key_id, secret = parse_token(token)
        if self.store.api_key(key_id) is None:
            self.store.add_api_key(key_id, "admin", digest_secret(self.pepper, secret), "bootstrap")
        return key_id

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise AuthError(
                "an API key is required (X-API-Key or Authorization: Bearer)",
                code="missing_api_key",
            )
        key_id, secret = parse_token(token)
        record = self.store.api_key(key_id)
        if record is None or not check_secret(self.pepper, secret, record.digest):
            raise AuthError("unknown API key", code="invalid_api_key")
        if record.revoked_at is not None:
            raise AuthError("this API key was revoked", code="revoked_api_key")
        return Principal(record.id, record.role)

    def revoke(self, key_id: str) -> None:
        self.store.revoke_api_key(key_id)

    def list(self) -> list[ApiKeyInfo]:
        return self.store.api_keys()
