"""Server-side streams (role ``admin``): workers that pull an RTSP, HTTP or file source,
their status, and their events over a WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, WebSocket
from pydantic import BaseModel, ConfigDict, Field

from facerec.errors import FaceRecError, InvalidArgumentError
from gateway.api.deps import AdminCaller
from gateway.api.websocket import (
    INVALID_REQUEST,
    NORMAL,
    NOT_FOUND,
    Channel,
    role_marker,
    video_connection,
)
from gateway.service.streams import StreamService, StreamSpec, StreamWorker

router = APIRouter(prefix="/v1", tags=["video"])


def get_streams(request: Request) -> StreamService:
    streams: StreamService = request.app.state.gateway.streams
    return streams


StreamsDep = Annotated[StreamService, Depends(get_streams)]


class StreamIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
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
    state: str = Field(description="connecting, streaming, reconnecting, ended, failed or closed")
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


def _out(worker: StreamWorker) -> StreamOut:
    return StreamOut.model_validate(worker.status())


@router.post("/streams", status_code=201, response_model=StreamOut)
def start_stream(body: StreamIn, streams: StreamsDep, caller: AdminCaller) -> StreamOut:
    """Start a worker on ``source`` (checked against the allow-list). A live source that
    cannot be reached is retried with backoff: see ``state`` and ``last_error``."""
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
    return StreamList(items=[_out(w) for w in streams.list()])


@router.get("/streams/{stream_id}", response_model=StreamOut)
def get_stream(stream_id: str, streams: StreamsDep, caller: AdminCaller) -> StreamOut:
    return _out(streams.get(stream_id))


@router.delete("/streams/{stream_id}", status_code=204)
def stop_stream(stream_id: str, streams: StreamsDep, caller: AdminCaller) -> Response:
    """Stop the worker (its open tracks end) and forget the stream."""
    streams.delete(stream_id, caller)
    return Response(status_code=204)


async def _follow(channel: Channel, worker: StreamWorker, after: int) -> None:
    """Send the feed's events after ``after`` as they come, until the stream ends or the
    client goes."""
    feed = worker.feed
    wake = feed.subscribe()
    gone = asyncio.create_task(_until_disconnect(channel))
    try:
        while not gone.done():
            wake.clear()
            items, missed = feed.since(after)
            if missed:
                await channel.send({"event": "missed", "count": missed})
            for doc in items:
                await channel.send(doc)
                after = doc["seq"]
            if feed.closed and not feed.since(after)[0]:
                await channel.close(NORMAL, "stream_ended")
                return
            waiting = asyncio.create_task(wake.wait())
            await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
    finally:
        feed.unsubscribe(wake)
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone


async def _until_disconnect(channel: Channel) -> None:
    while True:
        message = await channel.ws.receive()
        if message["type"] == "websocket.disconnect":
            channel.closed = True
            return


@router.websocket("/streams/{stream_id}/events", dependencies=[Depends(role_marker("admin"))])
async def stream_events(websocket: WebSocket, stream_id: str) -> None:
    """The stream's events as JSON messages, each with its ``seq``; ``?after=N`` replays
    the kept ones after N (default: only new ones). Closes with 1000 ``stream_ended``."""
    gateway = websocket.app.state.gateway
    async with video_connection(websocket, "admin") as connected:
        if connected is None:
            return
        channel = connected.channel
        try:
            worker = gateway.streams.get(stream_id)
            raw = websocket.query_params.get("after")
            after = worker.feed.last if raw is None else int(raw)
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
        await _follow(channel, worker, after)
