"""Access and administration, independent of HTTP: checking a caller's key and role,
idempotency keys, API keys, and reading the audit log. Every refusal and every key
operation is audited; refusals of callers without a valid key are rate-limited per client
and audited in aggregate (:mod:`gateway.auth.throttle`, :mod:`gateway.audit.refusals`)."""

from __future__ import annotations

from typing import Any

from gateway.audit.chain import AuditEvent
from gateway.audit.log import AuditLog
from gateway.audit.refusals import RefusalLog
from gateway.auth.api_keys import KeyManager, allowed
from gateway.auth.throttle import FailureThrottle, TooManyRequestsError
from gateway.errors import AuthError, ForbiddenError
from gateway.service.types import ApiKeyInfo, AuditPage, Caller, NewApiKey
from gateway.storage.idempotency import IdempotencyRepository


class AdminService:
    """What the REST API's access checks and admin routes (and the ``keys`` CLI) call."""

    def __init__(
        self,
        keys: KeyManager,
        idempotency: IdempotencyRepository,
        audit_log: AuditLog,
        throttle: FailureThrottle | None = None,
        refusals: RefusalLog | None = None,
    ) -> None:
        self.keys, self.idempotency, self.audit_log = keys, idempotency, audit_log
        self.throttle = throttle
        self.refusals = refusals

    def close(self) -> None:
        """Write the refusals still being counted."""
        if self.refusals is not None:
            self.refusals.close()

    def audit(self, action: str, outcome: str, caller: Caller, **values: Any) -> AuditEvent:
        return self.audit_log.append(
            action=action, outcome=outcome, **caller.audit_fields(), **values
        )

    # -- access -----------------------------------------------------------------------------
    def authorize(
        self, token: str | None, needed: str, request_id: str | None, client: str | None = None
    ) -> Caller:
        """The caller presenting ``token``, if its key is valid and its role may ``needed``
        (:class:`AuthError` or :class:`ForbiddenError` otherwise, both audited with the
        ``client`` address). A client with too many failed attempts gets
        :class:`TooManyRequestsError` before its key is looked at."""
        anonymous = Caller(None, None, request_id)
        if self.throttle is not None and client is not None:
            try:
                self.throttle.check(client)
            except TooManyRequestsError:
                self._refused(client, "auth_throttled", anonymous)
                raise
        try:
            principal = self.keys.authenticate(token)
        except AuthError:
            if self.throttle is not None and client is not None:
                self.throttle.failed(client)
            self._refused(client, "auth", anonymous)
            raise
        caller = Caller(principal.key_id, principal.role, request_id)
        if not allowed(principal.role, needed):
            self.audit("auth", "refused", caller, client=client)  # a key holder: each one
            raise ForbiddenError(f"a key with role {principal.role!r} may not {needed}")
        return caller

    def _refused(self, client: str | None, action: str, caller: Caller) -> None:
        """Audit a refusal of a caller without a valid key (aggregated per client)."""
        if self.refusals is None:
            self.audit(action, "refused", caller, client=client)
        else:
            self.refusals.refused(client, action, **caller.audit_fields())

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
