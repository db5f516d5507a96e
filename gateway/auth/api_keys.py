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
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from facerec.errors import FaceRecError
from gateway.errors import AuthError
from gateway.roles import ROLES

if TYPE_CHECKING:  # imported for types only: no database layer at import time
    from gateway.storage.api_keys import ApiKeyInfo, ApiKeyRepository

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


# What FACEREC_ADMIN_KEY must look like (what `facerec keys create` prints: a 12-digit
# hex id and a 43-character secret).
TOKEN_FORMAT = re.compile(r"^frk_([A-Za-z0-9]{1,32})_([A-Za-z0-9_-]{16,512})$")
TOKEN_FORMAT_HELP = (
    "must read frk_<id>_<secret> as `facerec keys create` prints it: an id of 1-32 letters "
    "or digits and a secret of at least 16 letters, digits, '-' or '_'"
)


def parse_token(token: str) -> tuple[str, str]:
    """``(key_id, secret)`` from a presented token, or :class:`AuthError`."""
    parts = token.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        raise AuthError("malformed API key", code="invalid_api_key")
    return parts[1], parts[2]


def check_secret(pepper: bytes, secret: str, digest: str) -> bool:
    return hmac.compare_digest(digest_secret(pepper, secret), digest)


@dataclass(frozen=True)
class Principal:
    """The holder of a valid key: its id, role, tenant and gallery scope (None: all)."""

    key_id: str
    role: str
    namespace: str = "default"
    gallery: str | None = None


@dataclass(frozen=True)
class Bootstrapped:
    """What :meth:`KeyManager.bootstrap_admin` did with ``FACEREC_ADMIN_KEY``."""

    key_id: str
    added: bool  # a new record was made for it
    revoked: list[str] = field(default_factory=list)  # earlier bootstrap keys it replaced

    @property
    def changed(self) -> bool:
        return self.added or bool(self.revoked)


class BootstrapKeyError(FaceRecError):
    """``FACEREC_ADMIN_KEY`` cannot be used: the service refuses to start."""

    code = "invalid_admin_key"


class KeyManager:
    """Keys are checked with a pepper (a service secret), so the table alone proves nothing.

    A valid key's record is remembered for ``cache_s`` seconds after it was read (0: never),
    so that a busy caller's requests are checked without a query or a thread hand-off
    (:meth:`cached`). A key revoked through this process is forgotten at once; one revoked
    through another process (a replica, ``facerec keys revoke``) is refused here within
    ``cache_s``. Unknown, wrong and revoked keys are never remembered: each costs the
    lookup, behind the failed-authentication throttle."""

    def __init__(
        self,
        records: ApiKeyRepository,
        pepper: bytes,
        cache_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.records, self.pepper = records, pepper
        self.cache_s, self.clock = cache_s, clock
        self._valid: dict[str, tuple[ApiKeyInfo, float]] = {}  # key id -> record, until
        self._lock = threading.Lock()

    def create(
        self,
        role: str,
        label: str = "",
        namespace: str = "default",
        gallery: str | None = None,
    ) -> tuple[IssuedKey, ApiKeyInfo]:
        """A new key: the token (to show once) and its stored record."""
        issued = issue_key(self.pepper, role)
        record = self.records.add(
            issued.key_id, issued.role, issued.digest, label, namespace=namespace, gallery=gallery
        )
        return issued, record

    def bootstrap_admin(self, token: str) -> Bootstrapped:
        """Make ``token`` (``FACEREC_ADMIN_KEY``) the bootstrap admin key.

        A token seen before changes nothing. A new one is added and every earlier
        bootstrap key is revoked: changing the setting and restarting rotates the key.
        An existing admin key (say, one made by ``facerec keys create``) may be named too;
        it then becomes the bootstrap key. Refused (:class:`BootstrapKeyError`): a
        malformed token, a revoked key, a key of another role, or the id of a key with a
        different secret.
        """
        match = TOKEN_FORMAT.fullmatch(token.strip())
        if match is None:
            raise BootstrapKeyError(f"FACEREC_ADMIN_KEY {TOKEN_FORMAT_HELP}")
        key_id, secret = match.groups()
        record = self.records.get(key_id)
        added = record is None
        if record is None:
            digest = digest_secret(self.pepper, secret)
            self.records.add(key_id, "admin", digest, "bootstrap", bootstrap=True)
        elif not check_secret(self.pepper, secret, record.digest):
            raise BootstrapKeyError(
                f"FACEREC_ADMIN_KEY has the id of key {key_id} but not its secret"
            )
        elif record.revoked_at is not None:
            raise BootstrapKeyError(
                f"FACEREC_ADMIN_KEY is key {key_id}, which was revoked: set a new key"
            )
        elif record.role != "admin":
            raise BootstrapKeyError(
                f"FACEREC_ADMIN_KEY is key {key_id}, a {record.role!r} key, not an admin key"
            )
        elif not record.bootstrap:
            self.records.mark_bootstrap(key_id)
        revoked = [k for k in self.records.active_bootstrap() if k != key_id]
        for old in revoked:
            self.revoke(old)
        return Bootstrapped(key_id, added, revoked)

    def cached(self, token: str | None) -> Principal | None:
        """The holder of ``token`` when its key was read valid less than ``cache_s`` ago
        and the secret matches, without a query; None when only :meth:`authenticate`
        can tell."""
        if not token:
            return None
        try:
            key_id, secret = parse_token(token)
        except AuthError:
            return None
        return self._known(key_id, secret)

    def _known(self, key_id: str, secret: str) -> Principal | None:
        with self._lock:
            entry = self._valid.get(key_id)
        if entry is None or self.clock() >= entry[1]:
            return None
        record = entry[0]
        if not check_secret(self.pepper, secret, record.digest):
            return None
        return Principal(record.id, record.role, record.namespace, record.gallery)

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise AuthError(
                "an API key is required (X-API-Key or Authorization: Bearer)",
                code="missing_api_key",
            )
        key_id, secret = parse_token(token)
        known = self._known(key_id, secret)
        if known is not None:
            return known
        record = self.records.get(key_id)
        if record is None or not check_secret(self.pepper, secret, record.digest):
            raise AuthError("unknown API key", code="invalid_api_key")
        if record.revoked_at is not None:
            self._forget(key_id)
            raise AuthError("this API key was revoked", code="revoked_api_key")
        self._remember(record)
        return Principal(record.id, record.role, record.namespace, record.gallery)

    def _remember(self, record: ApiKeyInfo) -> None:
        if self.cache_s <= 0:
            return
        now = self.clock()
        with self._lock:
            self._valid[record.id] = (record, now + self.cache_s)
            if len(self._valid) > 1024:  # valid keys only; drop the expired
                self._valid = {k: v for k, v in self._valid.items() if v[1] > now}

    def _forget(self, key_id: str) -> None:
        with self._lock:
            self._valid.pop(key_id, None)

    def revoke(self, key_id: str) -> None:
        self._forget(key_id)
        self.records.revoke(key_id)
        self._forget(key_id)  # a request that read it meanwhile

    def list(self) -> list[ApiKeyInfo]:
        return self.records.all()
