"""``Idempotency-Key`` on the mutating routes, the way Stripe does it.

- The first request with a key claims it (for the caller's API key) with its
  *fingerprint*: SHA-256 over the method, the path and query, the API key's id, the
  namespace and gallery it acts in (an admin's ``X-Namespace`` makes another request) and
  the body (JSON canonicalised; a multipart body as its fields in order, each file as its
  name and the SHA-256 of its bytes, so that a client's new multipart boundary on a retry
  is still the same request).
- When that request succeeds (2xx), its status and body are kept, sealed; a replay of the
  same request gets them back (with ``Idempotent-Replayed: true``) and changes nothing.
- When it fails (4xx or 5xx), the key is released: a corrected request may use it.
- The same key with a different request is a 409 ``idempotency_key_reused``; while the
  first request still runs, 409 ``request_in_progress``.

The claim is made by the route's dependency (:func:`gateway.api.deps.changes`), once the
body has been read; :class:`IdempotencyMiddleware` sees the response go out and keeps or
releases it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.service.types import Caller, IdempotencyClaim, StoredResponse

STATE = "idempotency_claim"  # where the dependency leaves its claim in the request's state
REPLAYED = "Idempotent-Replayed"


class Replay(Exception):  # noqa: N818 (not an error: how a dependency answers early)
    """A replay of a request that succeeded: answered with the response it got."""

    def __init__(self, stored: StoredResponse) -> None:
        super().__init__("replayed request")
        self.stored = stored


def _file_digest(upload: UploadFile) -> str:
    digest = hashlib.sha256()
    upload.file.seek(0)
    while chunk := upload.file.read(1 << 20):
        digest.update(chunk)
    upload.file.seek(0)
    return digest.hexdigest()


async def fingerprint(request: Request, caller: Caller) -> str:
    """What makes two requests the same request (see the module's docstring)."""
    head = [
        request.method,
        request.url.path,
        request.url.query,
        caller.key_id or "",
        caller.namespace or "",
        caller.gallery or "",
    ]
    content_type = request.headers.get("content-type", "")
    body: list[Any]
    if content_type.startswith("multipart/form-data"):
        form = await request.form()  # already parsed for the route: cached
        body = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                body.append(
                    [name, "file", value.filename, await run_in_threadpool(_file_digest, value)]
                )
            else:
                body.append([name, "field", value])
    else:
        raw = await request.body()  # already read for the route: cached
        try:
            body = ["json", json.loads(raw)] if raw else ["empty"]
        except ValueError:
            body = ["raw", hashlib.sha256(raw).hexdigest()]
    canonical = json.dumps([head, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyMiddleware:
    """Keeps the response of a request that claimed an idempotency key, or releases the
    key when the request failed (pure ASGI: it holds back only the last body message,
    until the outcome is stored)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PATCH", "DELETE"):
            await self.app(scope, receive, send)
            return
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        status = 500
        body = bytearray()
        settled = False

        async def settle(final_status: int) -> None:
            nonlocal settled
            claim: IdempotencyClaim | None = state.get(STATE)
            if claim is not None and not settled:
                settled = True
                admin = scope["app"].state.gateway.admin
                await run_in_threadpool(admin.finish_request, claim, final_status, bytes(body))

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and state.get(STATE) is not None:
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    await settle(status)
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            await settle(500)  # an exception or a lost client: the key goes back


def install(app: FastAPI) -> None:
    """Add the middleware and the answer to a replay."""
    app.add_middleware(IdempotencyMiddleware)

    @app.exception_handler(Replay)
    async def _replay(request: Request, exc: Replay) -> Response:
        stored = exc.stored
        return Response(
            stored.body,
            status_code=stored.status,
            media_type="application/json" if stored.body else None,
            headers={REPLAYED: "true"},
        )


__all__ = ["REPLAYED", "STATE", "IdempotencyMiddleware", "Replay", "fingerprint", "install"]
