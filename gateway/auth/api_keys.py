"""API keys: generated once, shown once, stored only as a keyed hash, each with one role.

A key reads ``frk_<id>_<secret>``: the id finds the record, the secret is checked against
HMAC-SHA256(pepper, secret), where the pepper is a service secret wrapped by the master key,
so a copy of the database alone cannot test guesses. Roles: ``admin`` (everything), ``enrol``,
``verify``, ``identify``. :class:`KeyManager` issues, checks and revokes keys against the
system of record.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from facerec.errors import FaceRecError
from gateway.errors import AuthError

if TYPE_CHECKING:  # the CLI's option parser imports ROLES without the database layer
    from gateway.storage.api_keys import ApiKeyInfo, ApiKeyRepository

ROLES = ("admin", "enrol", "verify", "identify")
PREFIX = "frk"


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    role: str
    token: str  # shown to the user once, never stored
    digest: str  # what is stored


def digest_secret(pepper: bytes, secret: str) -> str:
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def issue_key(pepper: bytes, role: str) -> IssuedKey:
    if role not in ROLES:
        raise FaceRecError(f"role must be one of {ROLES}", code="invalid_role")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return IssuedKey(key_id, role, f"{PREFIX}_{key_id}_{secret}", digest_secret(pepper, secret))


def parse_token(token: str) -> tuple[str, str]:
    """``(key_id, secret)`` from a presented token, or :class:`AuthError`."""
    parts = token.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        raise AuthError("malformed API key", code="invalid_api_key")
    return parts[1], parts[2]


def check_secret(pepper: bytes, secret: str, digest: str) -> bool:
    return hmac.compare_digest(digest_secret(pepper, secret), digest)


def allowed(role: str, needed: str) -> bool:
    """Whether ``role`` may do what ``needed`` is required for."""
    return role == "admin" or role == needed


@dataclass(frozen=True)
class Principal:
    """The holder of a valid key: its id and role."""

    key_id: str
    role: str


class KeyManager:
    """Keys are checked with a pepper (a service secret), so the table alone proves nothing."""

    def __init__(self, records: ApiKeyRepository, pepper: bytes) -> None:
        self.records, self.pepper = records, pepper

    def create(self, role: str, label: str = "") -> tuple[IssuedKey, ApiKeyInfo]:
        """A new key: the token (to show once) and its stored record."""
        issued = issue_key(self.pepper, role)
        return issued, self.records.add(issued.key_id, issued.role, issued.digest, label)

    def bootstrap_admin(self, token: str) -> str:
        """Register ``token`` (``FACEREC_ADMIN_KEY``) as an admin key unless it exists."""
        key_id, secret = parse_token(token)
        if self.records.get(key_id) is None:
            self.records.add(key_id, "admin", digest_secret(self.pepper, secret), "bootstrap")
        return key_id

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise AuthError(
                "an API key is required (X-API-Key or Authorization: Bearer)",
                code="missing_api_key",
            )
        key_id, secret = parse_token(token)
        record = self.records.get(key_id)
        if record is None or not check_secret(self.pepper, secret, record.digest):
            raise AuthError("unknown API key", code="invalid_api_key")
        if record.revoked_at is not None:
            raise AuthError("this API key was revoked", code="revoked_api_key")
        return Principal(record.id, record.role)

    def revoke(self, key_id: str) -> None:
        self.records.revoke(key_id)

    def list(self) -> list[ApiKeyInfo]:
        return self.records.all()
