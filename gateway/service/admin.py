"""Access and administration, independent of HTTP: checking a caller's key and role,
idempotency keys, API keys, and reading the audit log. Every refusal and every key
operation is audited."""

from __future__ import annotations

from typing import Any

from gateway.audit.chain import AuditEvent
from gateway.audit.log import AuditLog
from gateway.auth.api_keys import KeyManager, allowed
from gateway.errors import AuthError, ForbiddenError
from gateway.service.types import ApiKeyInfo, AuditPage, Caller, NewApiKey
from gateway.storage.idempotency import IdempotencyRepository


class AdminService:
    """What the REST API's access checks and admin routes (and the ``keys`` CLI) call."""

    def __init__(
        self, keys: KeyManager, idempotency: IdempotencyRepository, audit_log: AuditLog
    ) -> None:
        self.keys, self.idempotency, self.audit_log = keys, idempotency, audit_log

    def audit(self, action: str, outcome: str, caller: Caller, **values: Any) -> AuditEvent:
        return self.audit_log.append(
            action=action, outcome=outcome, **caller.audit_fields(), **values
        )

    # -- access -----------------------------------------------------------------------------
    def authorize(self, token: str | None, needed: str, request_id: str | None) -> Caller:
        """The caller presenting ``token``, if its key is valid and its role may ``needed``
        (:class:`AuthError` or :class:`ForbiddenError` otherwise, both audited)."""
        try:
            principal = self.keys.authenticate(token)
        except AuthError:
            self.audit("auth", "refused", Caller(None, None, request_id))
            raise
        caller = Caller(principal.key_id, principal.role, request_id)
        if not allowed(principal.role, needed):
            self.audit("auth", "refused", caller)
            raise ForbiddenError(f"a key with role {principal.role!r} may not {needed}")
        return caller

    def claim_request(self, caller: Caller, idempotency_key: str) -> None:
        """Use up ``idempotency_key`` for this caller; a second use is a 409
        ``replayed_request``."""
        self.idempotency.claim(f"{caller.key_id}:{idempotency_key}")

    # -- API keys -----------------------------------------------------------------------------
    def create_key(self, role: str, label: str, caller: Caller) -> NewApiKey:
        issued, record = self.keys.create(role, label)
        self.audit("key_create", "ok", caller)
        return NewApiKey(issued.token, record)

    def list_keys(self) -> list[ApiKeyInfo]:
        return self.keys.list()

    def revoke_key(self, key_id: str, caller: Caller) -> None:
        self.keys.revoke(key_id)
        self.audit("key_revoke", "ok", caller)

    # -- audit log ------------------------------------------------------------------------------
    def audit_page(self, after: int = 0, limit: int = 100, last: int | None = None) -> AuditPage:
        """Events after ``after`` (only the newest ``last`` when given), oldest first."""
        if last is not None:
            after = max(after, self.audit_log.last_seq() - last)
        events = self.audit_log.events(after, limit)
        return AuditPage(events, events[-1].seq if len(events) == limit else None)
