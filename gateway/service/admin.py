"""Access and administration, independent of HTTP: checking a caller's key and role,
idempotency keys, API keys, and reading the audit log. Every refusal and every key
operation is audited; refusals of callers without a valid key are rate-limited per client
and audited in aggregate (:mod:`gateway.auth.throttle`, :mod:`gateway.audit.refusals`)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

from gateway.audit.chain import AuditEvent
from gateway.audit.log import AuditLog
from gateway.audit.refusals import RefusalLog
from gateway.auth.api_keys import Bootstrapped, KeyManager
from gateway.auth.throttle import FailureThrottle, TooManyRequestsError
from gateway.crypto.envelope import open_record, seal_record
from gateway.errors import AuthError, ConflictError, ForbiddenError, InvalidRequestError
from gateway.roles import allowed
from gateway.scope import DEFAULT_NAMESPACE, check_id
from gateway.service.names import clean_name
from gateway.service.types import (
    ApiKeyInfo,
    AuditPage,
    Caller,
    IdempotencyClaim,
    NewApiKey,
    StoredResponse,
)
from gateway.storage.idempotency import IdempotencyRepository
from gateway.storage.schema import now

SYSTEM = Caller(role="system")  # the service itself (start-up, retention)
ABANDONED_AFTER = timedelta(minutes=10)  # an idempotency key held longer by no answer is free


def _without_secrets(body: bytes) -> bytes:
    """A response as kept for replays: a new API key's token is shown once, never kept."""
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        return body
    if isinstance(doc, dict) and doc.get("token") is not None:
        return json.dumps({**doc, "token": None}).encode()
    return body


class AdminService:
    """What the REST API's access checks and admin routes (and the ``keys`` CLI) call."""

    def __init__(
        self,
        keys: KeyManager,
        idempotency: IdempotencyRepository,
        audit_log: AuditLog,
        response_key: bytes,
        throttle: FailureThrottle | None = None,
        refusals: RefusalLog | None = None,
    ) -> None:
        self.keys, self.idempotency, self.audit_log = keys, idempotency, audit_log
        self.response_key = response_key  # seals the responses kept for replays
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
        caller = Caller(
            principal.key_id, principal.role, request_id, principal.namespace, principal.gallery
        )
        if not allowed(principal.role, needed):
            self.audit("auth", "refused", caller, client=client)  # a key holder: each one
            raise ForbiddenError(f"a key with role {principal.role!r} may not {needed}")
        return caller

    def authorize_now(
        self, token: str | None, needed: str, request_id: str | None, client: str | None = None
    ) -> Caller | None:
        """:meth:`authorize` when it needs neither the database nor the audit (a key read
        valid moments ago, whose role may ``needed``, from a client not throttled), so the
        event loop may call it; None otherwise: call :meth:`authorize` in a thread."""
        throttle = self.throttle
        if throttle is not None and client is not None and throttle.retry_after(client):
            return None
        principal = self.keys.cached(token)
        if principal is None or not allowed(principal.role, needed):
            return None
        return Caller(
            principal.key_id, principal.role, request_id, principal.namespace, principal.gallery
        )

    def _refused(self, client: str | None, action: str, caller: Caller) -> None:
        """Audit a refusal of a caller without a valid key (aggregated per client)."""
        if self.refusals is None:
            self.audit(action, "refused", caller, client=client)
        else:
            self.refusals.refused(client, action, **caller.audit_fields())

    def in_namespace(self, caller: Caller, namespace: str) -> Caller:
        """The caller acting in ``namespace`` (``X-Namespace``): any namespace for an admin
        key; only its own for any other key (403 otherwise)."""
        check_id(namespace, "namespace")
        if caller.role == "admin":
            return replace(caller, namespace=namespace)
        if namespace != caller.namespace:
            raise ForbiddenError(f"this key acts in namespace {caller.namespace!r} only")
        return caller

    # -- idempotency keys ------------------------------------------------------------------
    def begin_request(
        self, caller: Caller, idempotency_key: str, fingerprint: str
    ) -> IdempotencyClaim | StoredResponse:
        """Claim ``idempotency_key`` for the request ``fingerprint`` (its method, path,
        key id and body), or return the response the same request got before.

        409 ``idempotency_key_reused`` when the key was used for another request,
        409 ``request_in_progress`` while the first request with it still runs."""
        key = f"{caller.key_id}:{idempotency_key}"
        held = self.idempotency.claim(key, fingerprint, ABANDONED_AFTER)
        if held is None:
            return IdempotencyClaim(key, fingerprint)
        if held.fingerprint != fingerprint:
            raise ConflictError(
                "this Idempotency-Key was used for a different request",
                code="idempotency_key_reused",
            )
        if held.status is None or held.response is None:
            error = ConflictError(
                "a request with this Idempotency-Key is in progress; retry when it answers",
                code="request_in_progress",
            )
            error.retriable = True
            raise error
        return StoredResponse(held.status, open_record(self.response_key, held.response, key))

    def finish_request(self, claim: IdempotencyClaim, status: int, body: bytes) -> None:
        """Keep a success's response (sealed, never a key's token) for replays; give the
        key back after a failure, so that a corrected or later request may use it."""
        if 200 <= status < 300:
            sealed = seal_record(self.response_key, _without_secrets(body), claim.key)
            self.idempotency.complete(claim.key, status, sealed)
        else:
            self.idempotency.release(claim.key, claim.fingerprint)

    def prune_requests(self, older_than: timedelta) -> int:
        """Forget idempotency keys older than ``older_than``; returns how many."""
        return self.idempotency.prune(now() - older_than)

    # -- API keys -----------------------------------------------------------------------------
    def create_key(
        self,
        role: str,
        label: str,
        caller: Caller,
        namespace: str | None = None,
        gallery: str | None = None,
    ) -> NewApiKey:
        """A new key acting in ``namespace`` (default: the caller's), limited to
        ``gallery`` when given (not for admin keys, which see every namespace)."""
        if gallery is not None and role == "admin":
            raise InvalidRequestError("an admin key cannot be limited to a gallery")
        issued, record = self.keys.create(
            role,
            clean_name(label, "label", allow_empty=True),
            check_id(namespace or caller.namespace or DEFAULT_NAMESPACE, "namespace"),
            None if gallery is None else check_id(gallery, "gallery"),
        )
        self.audit("key_create", "ok", caller, target=record.id)
        return NewApiKey(issued.token, record)

    def bootstrap_admin_key(self, token: str) -> Bootstrapped:
        """Make ``FACEREC_ADMIN_KEY`` the bootstrap admin key, replacing an earlier one;
        a change is audited (``bootstrap_key``: the key, and which keys it revoked)."""
        done = self.keys.bootstrap_admin(token)
        if done.changed:
            how = "created" if done.added else "adopted"
            detail = f"{how}; revoked {','.join(done.revoked)}" if done.revoked else how
            self.audit("bootstrap_key", "ok", SYSTEM, target=done.key_id, detail=detail)
        return done

    def list_keys(self) -> list[ApiKeyInfo]:
        return self.keys.list()

    def revoke_key(self, key_id: str, caller: Caller) -> None:
        self.keys.revoke(key_id)
        self.audit("key_revoke", "ok", caller, target=key_id)

    # -- audit log ------------------------------------------------------------------------------
    def audit_page(self, after: int = 0, limit: int = 100, last: int | None = None) -> AuditPage:
        """Events after ``after`` (only the newest ``last`` when given), oldest first."""
        if last is not None:
            after = max(after, self.audit_log.last_seq() - last)
        events = self.audit_log.events(after, limit)
        return AuditPage(events, events[-1].seq if len(events) == limit else None)
