"""The edge of the service: what every request meets before a route runs, as a pure ASGI
middleware (it never buffers a body).

For an HTTP request, in order:

1. ``X-Request-ID`` is checked (1-128 of ``A-Z a-z 0-9 . _ : -``; otherwise 400
   ``invalid_request_id``) or one is made; it is echoed on the response.
2. The route's policy (:mod:`gateway.api.policy`) gives the body limit; a
   ``Content-Length`` above it is refused (413) at once.
3. A protected route authenticates from the headers alone (``X-API-Key`` or
   ``Authorization: Bearer``), through :meth:`AdminService.authorize`, which also
   rate-limits failed attempts per client address (429 with ``Retry-After``): a request
   without a valid key is refused before a byte of its body is read.
4. The body is counted as it arrives, whatever its framing (``Content-Length`` or
   chunked): past the route's limit the request ends with 413, and the bytes of all
   requests in flight together are bounded too (503 ``busy`` with ``Retry-After``).

A response to a request whose body was not read to the end carries ``Connection: close``,
so the server stops reading it. Every response gets ``nosniff``, ``X-Frame-Options: DENY``
and, unless the route set its own, a Content-Security-Policy that allows nothing.

WebSocket connections pass through with their request id checked and, when they present a
key in their headers, authenticated here: a refused handshake gets the error's HTTP status
and JSON body (close code 1008 where the server cannot send a response); one that
authenticates by its first message does so in its route. Body limits do not apply to them.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import anyio
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facerec.errors import FaceRecError, InvalidArgumentError
from gateway.api import handlers
from gateway.api.policy import Policies, RoutePolicy, valid_request_id
from gateway.errors import PayloadTooLargeError, database_error
from gateway.metrics import Metrics

API_CSP = "default-src 'none'; frame-ancestors 'none'"
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


class BodyRefused(HTTPException):
    """Raised from ``receive`` when a body goes over a limit: the route's exception
    handlers turn it into the error response (``code`` is its machine-readable code)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.code = code


def token_from(headers: Headers) -> str | None:
    """The API key a request presents in its headers, if any."""
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


def client_address(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def _has_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    return "chunked" in headers.get("transfer-encoding", "").lower() or (
        length is not None and length.strip() not in ("", "0")
    )


class EdgeMiddleware:
    """See the module docstring. ``policies`` is given by :func:`gateway.api.app.create_app`
    once the routes exist; ``in_flight_limit`` bounds the body bytes of all requests being
    received at once."""

    def __init__(self, app: ASGIApp, policies: Policies, in_flight_limit: int) -> None:
        self.app, self.policies, self.in_flight_limit = app, policies, in_flight_limit
        self.in_flight = 0  # body bytes received by requests not yet finished

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # -- HTTP -------------------------------------------------------------------------------
    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        headers = Headers(scope=scope)
        state: dict[str, Any] = scope.setdefault("state", {})
        given = headers.get("x-request-id")
        state["request_id"] = given if given and valid_request_id(given) else uuid.uuid4().hex
        status = {"code": 500}
        body = {"received": 0, "done": not _has_body(headers)}

        async def send_out(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                extra = [*SECURITY_HEADERS, (b"x-request-id", state["request_id"].encode())]
                names = {k.lower() for k, _ in message.get("headers", [])}
                if b"content-security-policy" not in names:
                    extra.append((b"content-security-policy", API_CSP.encode()))
                if not body["done"] and b"connection" not in names:
                    extra.append((b"connection", b"close"))  # stop reading what was not read
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            policy = self.policies.match(scope)
            refusal = self._check_head(headers, given, policy)
            if refusal is None and policy.role is not None:
                refusal = await self._authorize(scope, headers, policy, state)
            if refusal is not None:
                await self._refuse(scope, receive, send_out, refusal)
                return
            await self.app(scope, self._counting(receive, policy, body), send_out)
        finally:
            self.in_flight -= body["received"]
            self._observe(scope, status["code"], start)

    def _check_head(
        self, headers: Headers, given: str | None, policy: RoutePolicy
    ) -> FaceRecError | None:
        if given is not None and not valid_request_id(given):
            return InvalidArgumentError(
                "X-Request-ID must be 1-128 characters of A-Z a-z 0-9 . _ : -",
                code="invalid_request_id",
            )
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > policy.limit:
            return PayloadTooLargeError(
                f"this route accepts at most {policy.limit} bytes", limit=policy.limit
            )
        return None

    async def _authorize(
        self, scope: Scope, headers: Headers, policy: RoutePolicy, state: dict[str, Any]
    ) -> FaceRecError | None:
        admin = scope["app"].state.gateway.admin
        assert policy.role is not None
        token, client = token_from(headers), client_address(scope)
        known = admin.authorize_now(token, policy.role, state["request_id"], client)
        if known is not None:  # a key read valid moments ago: no query, no thread hand-off
            state["caller"] = known
            return None
        try:
            state["caller"] = await anyio.to_thread.run_sync(
                admin.authorize, token, policy.role, state["request_id"], client
            )
        except FaceRecError as exc:
            return exc
        except SQLAlchemyError as exc:  # the database is down: 503, not a crash
            return database_error(exc)
        return None

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, error: FaceRecError
    ) -> None:
        response = handlers.error_response(
            Request(scope), error.http_status, error.code, error.message, **error.details
        )
        await response(scope, receive, send)

    def _counting(self, receive: Receive, policy: RoutePolicy, body: dict[str, Any]) -> Receive:
        """``receive`` that counts body bytes against the route's limit and the in-flight
        bound, refusing (by raising :class:`BodyRefused`) as soon as either is passed."""

        async def counted() -> Message:
            message = await receive()
            if message["type"] != "http.request":
                return message
            size = len(message.get("body", b""))
            body["received"] += size
            self.in_flight += size
            if not message.get("more_body", False):
                body["done"] = True
            if body["received"] > policy.limit:
                raise BodyRefused(
                    413, "payload_too_large", f"this route accepts at most {policy.limit} bytes"
                )
            if self.in_flight > self.in_flight_limit:
                raise BodyRefused(
                    503,
                    "busy",
                    "too many request bodies are being received; retry shortly",
                    headers={"Retry-After": "5"},
                )
            return message

        return counted

    def _observe(self, scope: Scope, status: int, start: float) -> None:
        metrics: Metrics | None = getattr(scope["app"].state, "metrics", None)
        if metrics is None:
            return
        route = scope.get("route")
        label = getattr(route, "path", "unmatched")
        metrics.requests.labels(label, scope["method"], str(status)).inc()
        metrics.latency.labels(label).observe(time.perf_counter() - start)

    # -- WebSocket --------------------------------------------------------------------------
    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        state: dict[str, Any] = scope.setdefault("state", {})
        given = headers.get("x-request-id")
        if given is not None and not valid_request_id(given):
            error = InvalidArgumentError(
                "X-Request-ID must be 1-128 characters of A-Z a-z 0-9 . _ : -",
                code="invalid_request_id",
            )
            await self._deny(scope, send, error)
            return
        state["request_id"] = given or uuid.uuid4().hex
        policy = self.policies.match(scope)
        if policy.role is not None and token_from(headers) is not None:
            refusal = await self._authorize(scope, headers, policy, state)
            if refusal is not None:
                await self._deny(scope, send, refusal)
                return
        await self.app(scope, receive, send)

    async def _deny(self, scope: Scope, send: Send, error: FaceRecError) -> None:
        """Refuse a WebSocket handshake: with the error's HTTP status and JSON body where
        the server can send one (ASGI's ``websocket.http.response``), else close 1008."""
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008, "reason": error.code})
            return
        body = json.dumps({"error": {"code": error.code, "message": error.message}}).encode()
        headers = [(b"content-type", b"application/json"), *SECURITY_HEADERS]
        if error.http_status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        if error.details.get("retry_after") is not None:
            headers.append((b"retry-after", str(error.details["retry_after"]).encode()))
        start = {"type": "websocket.http.response.start", "status": error.http_status}
        await send({**start, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
