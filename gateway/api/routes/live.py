"""``WS /v1/stream``: live video from a client (a webcam page, a camera bridge), one frame
at a time (role ``identify``).

The client sends frames as binary messages (JPEG or PNG) and gets, per processed frame,
the ``facerec watch --json`` line with ``subject_id`` beside each ``match`` (a subject's
name), then that frame's events as messages of their own. At most one frame is in flight
per connection: frames that arrive while one is being analysed replace each other, the
newest is analysed next, and the others are counted in ``dropped``. A frame that cannot be
read gets ``{"error": {..., "frame": N}}`` and the connection stays open; limits close it
(:data:`gateway.api.websocket.CLOSE_CODES`). The text message ``{"end": true}`` ends the
stream: the open tracks' ``track_ended`` events follow, then the close (1000, ``end``).
Query parameters: ``every`` (run the detector on every N-th frame, 1-30), ``fpir`` or
``threshold`` (the operating point). Identification is the caller's, as on
``POST /v1/identify``: its namespace (``X-Namespace`` for an admin key) and gallery only,
at the operating point for that gallery's size; a key without the admin role may not
loosen it (closed 4403 ``threshold_not_allowed``) and gets no ``similarity`` for a face
left unnamed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, WebSocket

from facerec.errors import FaceRecError, InvalidArgumentError
from gateway.api.edge import client_address
from gateway.api.websocket import (
    FORBIDDEN,
    FRAME_TOO_LARGE,
    GOING_AWAY,
    INTERNAL,
    INVALID_REQUEST,
    NORMAL,
    TIMEOUT,
    TOO_BIG,
    TOO_MANY_FRAMES,
    Channel,
    SendTimeoutError,
    error_doc,
    role_marker,
    video_connection,
)
from gateway.service.video import LIMIT_CODES, LiveSession, VideoService

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["video"])


def query_options(params: Any) -> dict[str, Any]:
    """``every``, ``fpir`` and ``threshold`` from a WebSocket's query string."""
    try:
        every = int(params.get("every", "1"))
        fpir = float(params["fpir"]) if params.get("fpir") else None
        threshold = float(params["threshold"]) if params.get("threshold") else None
    except ValueError:
        raise InvalidArgumentError(
            "every must be an integer, fpir and threshold numbers", code="invalid_request"
        ) from None
    return {"every": every, "fpir": fpir, "threshold": threshold}


def _is_end(text: str | None) -> bool:
    """Whether a text message is ``{"end": true}``: the client is done sending."""
    try:
        doc = json.loads(text or "null")
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("end") is True


class LiveConnection:
    """One client's frames: a receiving task keeps the newest frame, a processing task
    analyses one at a time and sends the results."""

    def __init__(self, channel: Channel, video: VideoService, session: LiveSession) -> None:
        self.channel, self.video, self.session = channel, video, session
        self.limits = video.limits
        self.take = video.rate_limiter()
        self.start = time.monotonic()
        self.received = 0
        self.dropped = 0
        self.slot: tuple[bytes, int, float] | None = None
        self.ready = asyncio.Event()
        self.closing: tuple[int, str, FaceRecError | None] | None = None
        self.client = client_address(channel.ws.scope)

    async def run(self) -> None:
        tasks = {asyncio.create_task(self._receive()), asyncio.create_task(self._process())}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and (exc := task.exception()) is not None:
                log.error("video connection failed", exc_info=exc)
                self._stop(INTERNAL, "internal_error")
        await self._finish()

    async def _finish(self) -> None:
        """End the open tracks (audited), tell the client if it is still there, close."""
        loop = asyncio.get_running_loop()
        messages = await loop.run_in_executor(self.video.executor, self.session.finish)
        code, reason, error = self.closing or (NORMAL, "", None)
        with contextlib.suppress(SendTimeoutError):
            for doc in messages:
                await self.channel.send(doc)
        await self.channel.close(code, reason, error)

    def _stop(self, code: int, reason: str, error: FaceRecError | None = None) -> None:
        if self.closing is None:
            self.closing = (code, reason, error)

    async def _receive(self) -> None:
        ws = self.channel.ws
        while True:
            try:
                message = await asyncio.wait_for(ws.receive(), self.limits.idle_timeout_s)
            except TimeoutError:
                self._stop(TIMEOUT, "idle_timeout")
                return
            if message["type"] == "websocket.disconnect":
                self.channel.closed = True
                code = message.get("code", NORMAL)
                self._stop(GOING_AWAY if code == 1012 else NORMAL, "")
                return
            data = message.get("bytes")
            if data is None and _is_end(message.get("text")):
                self._stop(NORMAL, "end")  # the remaining track events, then close
                return
            if data is not None and len(data) > self.limits.max_frame_bytes:
                self._stop(TOO_BIG, "frame_too_large")  # the server's max_size did not apply
                return
            if not self.take():  # every message counts, text too: each costs an answer
                error = FaceRecError(
                    f"at most {self.limits.max_fps:g} messages a second",
                    code="too_many_frames",
                )
                self._stop(TOO_MANY_FRAMES, error.code, error)
                return
            if data is None:
                invalid = InvalidArgumentError(
                    "send frames as binary messages (JPEG or PNG)", code="invalid_message"
                )
                await self.channel.send(error_doc(invalid))
                continue
            if self.slot is not None:
                self.dropped += 1
            self.slot = (data, self.received, time.monotonic() - self.start)
            self.received += 1
            self.ready.set()

    async def _process(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.ready.wait()
            self.ready.clear()
            if self.slot is None:
                continue
            data, index, t = self.slot
            self.slot = None
            try:
                messages = await loop.run_in_executor(
                    self.video.executor, self.session.process, data, index, t, self.dropped
                )
            except FaceRecError as exc:
                if exc.code in LIMIT_CODES:
                    self._stop(FRAME_TOO_LARGE, exc.code, exc)
                    return
                if exc.http_status == 403:  # the key's threshold no longer allowed (the
                    # gallery grew past it): as when the stream opened, not per frame
                    self._stop(FORBIDDEN, exc.code, exc)
                    return
                messages = [error_doc(exc, frame=index)]
            del data
            try:
                for doc in messages:
                    await self.channel.send(doc)
            except SendTimeoutError:
                log.warning("closing a video connection from %s: it does not read", self.client)
                self._stop(TIMEOUT, "client_not_reading")
                return


@router.websocket("/stream", dependencies=[Depends(role_marker("identify"))])
async def stream(websocket: WebSocket) -> None:
    """Live frames in, per-frame results and track events out (see the module docstring)."""
    video: VideoService = websocket.app.state.gateway.video
    async with video_connection(websocket, "identify") as connected:
        if connected is None:
            return
        channel, caller = connected
        loop = asyncio.get_running_loop()
        try:
            options = query_options(websocket.query_params)
            session = await loop.run_in_executor(
                video.executor, lambda: video.session(caller, **options)
            )
        except FaceRecError as exc:  # threshold_not_allowed is a 403: 4403, the rest 4400
            await channel.close(
                FORBIDDEN if exc.http_status == 403 else INVALID_REQUEST, exc.code, exc
            )
            return
        limits = video.limits
        await channel.send(
            {
                "ready": True,
                "request_id": caller.request_id,
                "every": options["every"],
                "limits": {
                    "max_frame_bytes": limits.max_frame_bytes,
                    "max_frame_pixels": limits.max_frame_pixels,
                    "max_fps": limits.max_fps,
                },
            }
        )
        await LiveConnection(channel, video, session).run()
