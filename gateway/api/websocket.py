"""What the WebSocket routes share: close codes, authentication (a key in the headers or in
the first message), and JSON messages sent with a timeout.

A key in the headers (``X-API-Key`` or ``Authorization: Bearer``) is checked by the edge
(:mod:`gateway.api.edge`) before the handshake completes. Browsers cannot set headers on a
WebSocket, so a connection without one is accepted and must send the key as its first
message, ``{"api_key": "frk_..."}``, within ``FACEREC_STREAM_AUTH_TIMEOUT_S``. Every refusal
is a JSON message ``{"error": {"code", "message"}}`` followed by a close frame whose code
says what happened (:data:`CLOSE_CODES`) and whose reason is the error code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from facerec.errors import FaceRecError
from gateway.api.edge import client_address
from gateway.api.policy import ROLE_ATTRIBUTE
from gateway.errors import AuthError
from gateway.service.types import Caller
from gateway.service.video import TooManyConnectionsError, VideoService

NORMAL = 1000  # the client closed, or the stream ended
GOING_AWAY = 1001  # the service is shutting down
UNAUTHORIZED = 1008  # no key, a bad key, a key of the wrong role, or no key in time
TOO_BIG = 1009  # a message over FACEREC_STREAM_MAX_FRAME_BYTES
INTERNAL = 1011  # an unexpected error on our side
TRY_LATER = 1013  # every video connection slot is taken
INVALID_REQUEST = 4400  # bad query parameters (every, fpir, threshold, after)
FORBIDDEN = 4403  # another namespace (X-Namespace), or a looser threshold than allowed
NOT_FOUND = 4404  # no such stream
TIMEOUT = 4408  # no message for FACEREC_STREAM_IDLE_TIMEOUT_S, or results not read
FRAME_TOO_LARGE = 4413  # a frame over FACEREC_STREAM_MAX_FRAME_PIXELS (from its header)
TOO_MANY_FRAMES = 4429  # frames sent faster than FACEREC_STREAM_MAX_FPS
CLOSE_CODES = {
    NORMAL: "normal",
    GOING_AWAY: "going_away",
    UNAUTHORIZED: "unauthorized",
    TOO_BIG: "message_too_big",
    INTERNAL: "internal_error",
    TRY_LATER: "too_many_connections",
    INVALID_REQUEST: "invalid_request",
    FORBIDDEN: "forbidden",
    NOT_FOUND: "not_found",
    TIMEOUT: "timeout",
    FRAME_TOO_LARGE: "frame_too_large",
    TOO_MANY_FRAMES: "too_many_frames",
}


class SendTimeoutError(Exception):
    """The client did not take a message within the send timeout."""


def role_marker(role: str) -> Callable[[], None]:
    """A no-op dependency that declares the role a WebSocket route needs, so the edge
    checks a key presented in the handshake's headers (:mod:`gateway.api.policy`)."""

    def marker() -> None:
        return None

    setattr(marker, ROLE_ATTRIBUTE, role)
    return marker


def error_doc(error: FaceRecError, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": error.code, "message": error.message, **error.details, **extra}}


class Channel:
    """A WebSocket with JSON messages, sent one at a time, each within ``timeout``
    seconds (a client that stops reading is closed instead of holding a task forever)."""

    def __init__(self, websocket: WebSocket, timeout: float) -> None:
        self.ws, self.timeout = websocket, timeout
        self._lock = asyncio.Lock()
        self.closed = False

    @property
    def open(self) -> bool:
        return not self.closed and self.ws.application_state == WebSocketState.CONNECTED

    async def send(self, doc: dict[str, Any]) -> None:
        """Raises :class:`SendTimeoutError` when the client does not take it in time."""
        text = json.dumps(doc, separators=(",", ":"), default=str)
        async with self._lock:
            if not self.open:
                return
            try:
                await asyncio.wait_for(self.ws.send_text(text), self.timeout)
            except TimeoutError:
                raise SendTimeoutError from None
            except WebSocketDisconnect:  # the client went: its receive() says so too
                self.closed = True

    async def close(self, code: int, reason: str = "", error: FaceRecError | None = None) -> None:
        """Send ``error`` (if any), then the close frame; never waits longer than the
        send timeout, and never raises (the client may be gone)."""
        if not self.open:
            return
        try:
            if error is not None:
                await self.send(error_doc(error))
            async with self._lock:
                self.closed = True
                await asyncio.wait_for(self.ws.close(code, reason[:120]), self.timeout)
        except (SendTimeoutError, TimeoutError, RuntimeError, OSError, WebSocketDisconnect):
            self.closed = True


async def authenticate(channel: Channel, role: str, timeout: float) -> Caller | None:
    """The caller of an accepted connection: the one the edge authenticated from the
    headers, or the key of the first message, acting in the ``X-Namespace`` header's
    namespace when one is given (any for an admin key, only its own for another). On
    failure the connection is closed (1008 for the key, 4403 for the namespace; the error
    code as reason) and None returned."""
    ws = channel.ws
    admin = ws.app.state.gateway.admin
    caller: Caller | None = getattr(ws.state, "caller", None)
    if caller is None:
        caller = await _first_message_key(channel, role, timeout)
    namespace = ws.headers.get("x-namespace")
    if caller is None or namespace is None:
        return caller
    try:  # as on the REST routes: an admin key acts in any namespace, another in its own
        acting: Caller = admin.in_namespace(caller, namespace)
    except FaceRecError as exc:
        await channel.close(FORBIDDEN if exc.http_status == 403 else INVALID_REQUEST, exc.code, exc)
        return None
    return acting


async def _first_message_key(channel: Channel, role: str, timeout: float) -> Caller | None:
    """The caller whose key is the first message's ``api_key`` (closing on failure)."""
    ws = channel.ws
    admin = ws.app.state.gateway.admin
    request_id: str = ws.state.request_id
    try:
        message = await asyncio.wait_for(ws.receive(), timeout)
    except TimeoutError:
        with contextlib.suppress(FaceRecError):  # audited (and throttled) as a missing key
            await anyio.to_thread.run_sync(
                admin.authorize, None, role, request_id, client_address(ws.scope)
            )
        error = AuthError(
            f"send the API key as the first message within {timeout:g} s",
            code="auth_timeout",
        )
        await channel.close(UNAUTHORIZED, error.code, error)
        return None
    if message["type"] == "websocket.disconnect":
        channel.closed = True
        return None
    token = None
    try:
        doc = json.loads(message.get("text") or "null")
        token = doc.get("api_key") if isinstance(doc, dict) else None
    except ValueError:
        pass
    try:  # through authorize() even without a key: refusals are audited and throttled
        caller: Caller = await anyio.to_thread.run_sync(
            admin.authorize,
            token if isinstance(token, str) and token else None,
            role,
            request_id,
            client_address(ws.scope),
        )
    except FaceRecError as exc:
        await channel.close(UNAUTHORIZED, exc.code, exc)
        return None
    return caller


class Connected(NamedTuple):
    """An accepted, authenticated video connection."""

    channel: Channel
    caller: Caller


@contextlib.asynccontextmanager
async def video_connection(websocket: WebSocket, role: str) -> AsyncIterator[Connected | None]:
    """How every video WebSocket opens and ends: accept, authenticate for ``role``
    (:func:`authenticate`), then take one of the service's video connection slots for
    the caller's key (closing 1013 ``too_many_connections`` when all are taken, or the
    key holds its share). Slots go to authenticated callers only: sockets waiting to
    send a key hold none (they are connections, bounded by the server's per-client share,
    and closed after the auth timeout). Yields the connection, or None when it was
    refused (already closed). A client that stops reading results
    (:class:`SendTimeoutError` out of the body) is closed 4408 ``client_not_reading``;
    the slot is released however the body ends."""
    video: VideoService = websocket.app.state.gateway.video
    channel = Channel(websocket, video.limits.send_timeout_s)
    await websocket.accept()
    try:
        caller = await authenticate(channel, role, video.limits.auth_timeout_s)
    except SendTimeoutError:
        await channel.close(TIMEOUT, "client_not_reading")
        caller = None
    if caller is None:
        yield None
        return
    try:
        video.acquire(caller.key_id)
    except TooManyConnectionsError as exc:
        await channel.close(TRY_LATER, exc.code, exc)
        yield None
        return
    try:
        yield Connected(channel, caller)
    except SendTimeoutError:
        await channel.close(TIMEOUT, "client_not_reading")
    finally:
        video.release(caller.key_id)
