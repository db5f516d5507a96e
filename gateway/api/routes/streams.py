"""Server-side streams (role ``admin``): workers that pull an RTSP, HTTP or file source,
their status, and their events over a WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, WebSocket
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from facerec.errors import FaceRecError, InvalidArgumentError
from gateway.api.deps import AdminCaller
from gateway.api.schemas import InputModel
from gateway.api.websocket import (
    INVALID_REQUEST,
    NORMAL,
    NOT_FOUND,
    TOO_MANY_FRAMES,
    Channel,
    role_marker,
    video_connection,
)
from gateway.service.streams import StreamService, StreamSpec, status
from gateway.storage.streams import FINISHED, StoredStream

router = APIRouter(prefix="/v1", tags=["video"])
POLL_S = 0.25  # how often an events socket looks for new events


async def get_streams(request: Request) -> StreamService:
    streams: StreamService = request.app.state.gateway.streams
    return streams


StreamsDep = Annotated[StreamService, Depends(get_streams)]


class StreamIn(InputModel):
    source: str = Field(
        min_length=1,
        max_length=2048,
        description="rtsp://, rtsps://, http(s):// (MJPEG) or, where enabled, file: URL",
    )
    every: int = Field(1, ge=1, le=30, description="run the detector on every N-th frame")
    realtime: bool = Field(True, description="files: play at their frame rate, like a camera")
    fpir: float | None = Field(None, gt=0.0, lt=1.0, description="operating point (FPIR)")
    threshold: float | None = Field(None, ge=-1.0, le=1.0, description="or an explicit one")
    reconnect_for: float | None = Field(
        None, gt=0.0, description="give up after this many seconds without a frame"
    )
    label: str = Field("", max_length=256)


class StreamOut(BaseModel):
    id: str
    source: str = Field(description="the URL, its password masked")
    label: str
    namespace: str | None = Field(
        description="the namespace whose subjects it identifies (the admin key's, or "
        "X-Namespace when it was started)"
    )
    every: int
    created_at: datetime
    state: str = Field(
        description="pending (no worker has taken it yet), connecting, streaming, "
        "reconnecting, ended or failed"
    )
    owner: str | None = Field(description="the worker process running it (host/pid/run)")
    claims: int = Field(description="how many times a worker took it (more than 1: taken over)")
    fps: float = Field(description="processed frames per second, last 2 s")
    latency_ms: float = Field(description="mean frame-to-result time, last 2 s")
    processed: int
    dropped: int = Field(description="frames the worker had no time for")
    reconnects: int
    tracks: int
    last_error: str | None
    events: int = Field(description="sequence number of the latest event")


class StreamList(BaseModel):
    items: list[StreamOut]


def _out(stream: StoredStream) -> StreamOut:
    return StreamOut.model_validate(status(stream))


@router.post("/streams", status_code=201, response_model=StreamOut)
def start_stream(body: StreamIn, streams: StreamsDep, caller: AdminCaller) -> StreamOut:
    """Store a stream on ``source`` (checked against the allow-list); a worker process
    takes it within a second (``state`` ``pending`` until then), and another takes it
    over if that one dies. A live source that cannot be reached is retried with backoff:
    see ``state`` and ``last_error``."""
    spec = StreamSpec(
        body.source,
        body.every,
        body.realtime,
        body.fpir,
        body.threshold,
        body.reconnect_for,
        body.label,
    )
    return _out(streams.start(spec, caller))


@router.get("/streams", response_model=StreamList)
def list_streams(streams: StreamsDep, caller: AdminCaller) -> StreamList:
    """Every stream of the deployment, whichever worker runs it."""
    return StreamList(items=[_out(s) for s in streams.list()])


@router.get("/streams/{stream_id}", response_model=StreamOut)
def get_stream(stream_id: str, streams: StreamsDep, caller: AdminCaller) -> StreamOut:
    return _out(streams.get(stream_id))


@router.delete("/streams/{stream_id}", status_code=204)
def stop_stream(stream_id: str, streams: StreamsDep, caller: AdminCaller) -> Response:
    """Stop the stream (its worker ends its open tracks) and forget it."""
    streams.delete(stream_id, caller)
    return Response(status_code=204)


async def _follow(
    channel: Channel, streams: StreamService, stream_id: str, after: int, take: Callable[[], bool]
) -> None:
    """Send the stored events after ``after`` as they come (read every ``POLL_S``), until
    the stream ends or is deleted, or the client goes."""
    gone = asyncio.create_task(_until_disconnect(channel, take))
    try:
        while not gone.done():
            items = await run_in_threadpool(streams.streams.events, stream_id, after)
            if items and items[0]["seq"] > after + 1:
                await channel.send({"event": "missed", "count": items[0]["seq"] - after - 1})
            for doc in items:
                await channel.send(doc)
                after = doc["seq"]
            if not items:
                try:
                    stream = await run_in_threadpool(streams.get, stream_id)
                except FaceRecError:
                    stream = None
                if stream is None or (stream.state in FINISHED and stream.events <= after):
                    await channel.close(NORMAL, "stream_ended")
                    return
                await asyncio.wait({gone}, timeout=POLL_S)
    finally:
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone


async def _until_disconnect(channel: Channel, take: Callable[[], bool]) -> None:
    """Wait for the client to go; messages it sends mean nothing here and are limited
    like a live stream's (4429 past ``FACEREC_STREAM_MAX_FPS`` a second)."""
    while True:
        message = await channel.ws.receive()
        if message["type"] == "websocket.disconnect":
            channel.closed = True
            return
        if not take():
            error = FaceRecError("this socket only sends; stop sending", code="too_many_frames")
            await channel.close(TOO_MANY_FRAMES, error.code, error)
            return


@router.websocket("/streams/{stream_id}/events", dependencies=[Depends(role_marker("admin"))])
async def stream_events(websocket: WebSocket, stream_id: str) -> None:
    """The stream's events as JSON messages, each with its ``seq``, on any replica;
    ``?after=N`` replays the kept ones after N (default: only new ones), so a client cut
    off (a replica restarting: 1012) reconnects and goes on where it was. Closes with
    1000 ``stream_ended``."""
    gateway = websocket.app.state.gateway
    async with video_connection(websocket, "admin") as connected:
        if connected is None:
            return
        channel = connected.channel
        try:
            stream = await run_in_threadpool(gateway.streams.get, stream_id)
            raw = websocket.query_params.get("after")
            after = stream.events if raw is None else int(raw)
            if after < 0:
                raise ValueError
        except FaceRecError as exc:
            await channel.close(NOT_FOUND, exc.code, exc)
            return
        except ValueError:
            error = InvalidArgumentError(
                "after must be a sequence number >= 0", code="invalid_request"
            )
            await channel.close(INVALID_REQUEST, "invalid_request", error)
            return
        await _follow(channel, gateway.streams, stream_id, after, gateway.video.rate_limiter())
