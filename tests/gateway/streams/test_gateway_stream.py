"""Video in the gateway, end to end: ``WS /v1/stream`` and ``/v1/streams`` against a real
``facerec serve`` (uvicorn in a subprocess), the synthetic ground-truth video, and the test
RTSP server stopped and restarted under a running stream worker.

Clients are the ``websockets`` library's, and a raw-socket client for what a library
would not send (a frame announced larger than it is, a message never finished, a client
that never reads).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from devkit import scenes as vs
from devkit.media import MjpegServer, RedirectingServer, RtspServer, encode_jpeg
from devkit.servers import (
    Service,
    free_port,
    self_signed_certificate,
    wait_for,
)
from facerec.pipeline import FacePipeline
from tests.support.gateway import client_with_key, running_gateway

pytestmark = pytest.mark.integration

FPS = 10.0
MAX_CONNECTIONS = 12
PER_KEY = 8  # FACEREC_STREAM_MAX_CONNECTIONS_PER_KEY
MAX_FPS = 1000
PING_S = 3
FRAME_KEYS = {"frame", "time", "faces", "dropped"}
FACE_KEYS = {"track_id", "box", "score", "match", "subject_id", "similarity"}
ENROLLED = sorted(name for name, _, photos in vs.CAST if photos)
KERRY = vs.DATA / "gallery" / "John_Kerry_0005.jpg"


@pytest.fixture(scope="module")
def scene(pipeline: FacePipeline) -> vs.Scene:
    """8 s of the synthetic scene at 480x360, 10 frames/s (as in tests/video/test_video.py)."""
    boxes = {n: pipeline.detect([f])[0].boxes[0].tolist() for n, f in vs.cast_faces().items()}
    return vs.render(boxes, 480, 360, FPS, 8.0)


@pytest.fixture(scope="module")
def jpegs(scene: vs.Scene) -> list[bytes]:
    return [encode_jpeg(f, 90) for f in scene.frames]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (a camera's), and its key."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory,
    pipeline: FacePipeline,
    certificate: tuple[Path, Path],
) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("stream")
    env = {
        "FACEREC_STREAM_CA_FILE": str(certificate[0]),
        "FACEREC_STREAM_ALLOWED_HOSTS": "127.0.0.1",
        "FACEREC_STREAM_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "FACEREC_STREAM_MAX_CONNECTIONS_PER_KEY": str(PER_KEY),
        "FACEREC_STREAM_MAX_FPS": str(MAX_FPS),
        "FACEREC_STREAM_AUTH_TIMEOUT_S": "2",
        "FACEREC_STREAM_SEND_TIMEOUT_S": "2",
        "FACEREC_STREAM_PING_S": str(PING_S),
        "FACEREC_MAX_STREAMS": "2",
    }
    with running_gateway(root / "data", env, log=root / "serve.log") as svc:
        yield svc
    log = (root / "serve.log").read_text(errors="replace")  # stopped: all it wrote
    assert "Traceback" not in log, log[-4000:]


@pytest.fixture(scope="module")
def enrolled(service: Service) -> dict[str, str]:
    """The cast's enrolled people (named as in the scene), their subject ids."""
    ids = {}
    with service.client() as client:
        for name, _, photos in vs.CAST:
            if not photos:
                continue
            sid = client.post("/v1/subjects", json={"name": name}).json()["id"]
            files = [
                ("images", (p, (vs.DATA / "gallery" / f"{name}_{p}.jpg").read_bytes()))
                for p in photos
            ]
            r = client.post(f"/v1/subjects/{sid}/faces", files=files)
            assert r.status_code == 200, r.text
            ids[name] = sid
    return ids


@pytest.fixture(scope="module")
def keys(service: Service) -> dict[str, str]:
    """An API key per role."""
    with service.client() as client:
        return {
            role: client.post("/v1/keys", json={"role": role, "label": role}).json()["token"]
            for role in ("identify", "verify")
        }


def ws_url(service: Service, path: str = "/v1/stream") -> str:
    return service.url.replace("http://", "ws://") + path


@contextlib.contextmanager
def open_ws(
    service: Service, key: str | None = None, path: str = "/v1/stream"
) -> Iterator[ClientConnection]:
    headers = {"X-API-Key": key or service.key}
    with connect(ws_url(service, path), additional_headers=headers, max_size=None) as ws:
        if path == "/v1/stream":
            assert json.loads(ws.recv(timeout=10))["ready"] is True
        yield ws


def result_of(ws: ClientConnection, frame: int, timeout: float = 60) -> tuple[Any, list[Any]]:
    """Read up to the result of ``frame`` (events of earlier frames are returned too, and
    the events that follow the result are read by the next call)."""
    extra = []
    while True:
        doc = json.loads(ws.recv(timeout=timeout))
        if "faces" in doc and doc["frame"] == frame:
            return doc, extra
        if "error" in doc and doc["error"].get("frame") == frame:
            return doc, extra
        extra.append(doc)


def closed_with(ws: ClientConnection, timeout: float = 20) -> tuple[int | None, str, list[Any]]:
    """Read until the server closes: (close code, reason, messages read meanwhile)."""
    messages = []
    try:
        while True:
            messages.append(json.loads(ws.recv(timeout=timeout)))
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        return (rcvd.code, rcvd.reason, messages) if rcvd else (None, "", messages)


def audit(service: Service) -> list[dict[str, Any]]:
    with service.client() as client:
        return list(client.get("/v1/audit", params={"last": 1000, "limit": 1000}).json()["events"])


def stored(service: Service) -> dict[str, Any]:
    """What bad input must not change: subjects and their faces, API keys."""
    with service.client() as client:
        subjects = client.get("/v1/subjects", params={"limit": 500}).json()
        return {
            "subjects": [(s["id"], s["name"], s["faces"]) for s in subjects["items"]],
            "keys": sorted(k["id"] for k in client.get("/v1/keys").json()),
        }


# -- a raw WebSocket client ---------------------------------------------------------------


class RawClient:
    """A WebSocket over a plain socket: frames sent exactly as told (masked, as a client
    must), nothing read unless asked."""

    def __init__(self, service: Service, key: str, rcvbuf: int | None = None) -> None:
        port = int(service.url.rsplit(":", 1)[1])
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(20)
        nonce = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {nonce}\r\n"
                f"Sec-WebSocket-Version: 13\r\nX-API-Key: {key}\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buffer = b""

    @staticmethod
    def header(opcode: int, length: int, fin: bool = True) -> bytes:
        first = (0x80 if fin else 0) | opcode
        if length < 126:
            return struct.pack(">BB", first, 0x80 | length)
        if length < 1 << 16:
            return struct.pack(">BBH", first, 0x80 | 126, length)
        return struct.pack(">BBQ", first, 0x80 | 127, length)

    def send_start(self, length: int, first: bytes) -> None:
        """A binary message announced as ``length`` bytes; only ``first`` is sent (masked
        with a zero key, so the payload goes as is)."""
        self.sock.sendall(self.header(2, length) + b"\0\0\0\0" + first)

    def send_binary(self, data: bytes) -> None:
        self.send_start(len(data), data)

    def read_message(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next message from the server (never fragmented here)."""
        while True:
            if len(self.buffer) >= 10 or (len(self.buffer) >= 2 and self.buffer[1] < 126):
                length, start = self.buffer[1] & 0x7F, 2
                if length == 126:
                    length, start = struct.unpack(">H", self.buffer[2:4])[0], 4
                elif length == 127:
                    length, start = struct.unpack(">Q", self.buffer[2:10])[0], 10
                if len(self.buffer) >= start + length:
                    opcode = self.buffer[0] & 0x0F
                    payload = self.buffer[start : start + length]
                    self.buffer = self.buffer[start + length :]
                    return opcode, payload
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed without a close frame")
            self.buffer += chunk

    def read_close(self) -> tuple[int, str, list[Any]]:
        """Read to the close frame: (code, reason, the JSON messages before it)."""
        messages = []
        while True:
            opcode, payload = self.read_message()
            if opcode == 8:
                code = struct.unpack(">H", payload[:2])[0]
                return code, payload[2:].decode(), messages
            if opcode == 1:
                messages.append(json.loads(payload))

    def close(self) -> None:
        self.sock.close()


# -- WS /v1/stream ---------------------------------------------------------------------------


def test_websocket_tracks_and_names_the_people_of_the_video(
    service: Service, enrolled: dict[str, str], scene: vs.Scene, jpegs: list[bytes]
) -> None:
    """The scene sent in real time (10 frames/s, as a camera would) over one connection:
    a result for each frame the server took (the newest when it was free) in the watch
    format with names and subject ids, drops counted, stable tracks, every enrolled
    person named right, the stranger never; identified and track_ended audited."""
    before = audit(service)[-1]["seq"]
    frames, events = [], []
    with open_ws(service) as ws:

        def camera() -> None:
            start = time.monotonic()
            for k, data in enumerate(jpegs):
                time.sleep(max(0.0, start + k / FPS - time.monotonic()))
                ws.send(data)

        sender = threading.Thread(target=camera)
        sender.start()
        while not frames or frames[-1]["frame"] != len(jpegs) - 1:  # the last is never dropped
            doc = json.loads(ws.recv(timeout=60))
            assert "error" not in doc, doc
            (frames if "faces" in doc else events).append(doc)
        sender.join()
        ws.send(json.dumps({"end": True}))  # the open tracks end, then the server closes
        code, reason, rest = closed_with(ws)
        assert (code, reason) == (1000, "end")
        events += rest
    numbers = [f["frame"] for f in frames]
    assert numbers == sorted(set(numbers)) and numbers[0] == 0
    for f in frames:  # every frame received is analysed or dropped, none twice
        assert f["dropped"] == f["frame"] + 1 - (numbers.index(f["frame"]) + 1)
    for f in frames:
        assert set(f) == FRAME_KEYS
        for face in f["faces"]:
            assert set(face) == FACE_KEYS
            if face["match"] is not None:
                assert face["subject_id"] == enrolled[face["match"]]
    runs = {
        f["frame"]: [vs.HypFace(x["track_id"], tuple(x["box"]), x["match"]) for x in f["faces"]]
        for f in frames
    }
    times = {f["frame"]: f["time"] for f in frames}
    score = vs.evaluate(scene, runs, times)
    print(f"\n{len(frames)} of {len(jpegs)} frames analysed:", score)
    assert score["id_switches"] == 0 and score["wrong_names"] == 0, score
    assert score["never_named"] == [], score
    assert all(len(ids) == 1 for ids in score["tracks_per_person"].values()), score
    identified = [e for e in events if e["event"] == "identified"]
    assert sorted({e["subject"] for e in identified}) == ENROLLED
    assert all(e["subject_id"] == enrolled[e["subject"]] for e in identified)
    ended = [e for e in events if e["event"] == "track_ended"]
    started = {e["track_id"] for e in events if e["event"] == "track_started"}
    assert {e["track_id"] for e in ended} == started  # the last ones on closing
    logged = [e for e in audit(service) if e["seq"] > before]
    named = [e for e in logged if e["action"] == "stream_identified"]
    assert sorted(e["subject"] for e in named) == sorted(enrolled[e["subject"]] for e in identified)
    assert all(e["outcome"] == "match" and e["score"] > 0 and e["role"] == "admin" for e in named)
    assert len([e for e in logged if e["action"] == "stream_track_ended"]) == len(ended)


def scene_over_ws(
    service: Service, jpegs: list[bytes], key: str, namespace: str | None = None
) -> tuple[list[Any], list[Any]]:
    """Every frame of the scene over one connection, each sent once the previous one's
    result came (none dropped): (frame results, events)."""
    headers = {"X-API-Key": key, **({"X-Namespace": namespace} if namespace else {})}
    frames: list[Any] = []
    events: list[Any] = []
    with connect(ws_url(service), additional_headers=headers, max_size=None) as ws:
        assert json.loads(ws.recv(timeout=10))["ready"] is True
        for k, data in enumerate(jpegs):
            ws.send(data)
            doc, extra = result_of(ws, k)
            assert "error" not in doc, doc
            frames.append(doc)
            events += extra
        ws.send(json.dumps({"end": True}))
        code, reason, rest = closed_with(ws)
        assert (code, reason) == (1000, "end")
    return frames, events + rest


def test_a_key_sees_its_namespace_only_and_nothing_below_the_threshold(
    service: Service, enrolled: dict[str, str], jpegs: list[bytes], keys: dict[str, str]
) -> None:
    """Video decides for the caller exactly as ``/v1/identify`` does: the key's namespace
    only, at the service's operating point or a stricter one, and a key without the admin
    role never sees the score of a face left unnamed."""
    with service.client() as client:
        r = client.post("/v1/keys", json={"role": "identify", "namespace": "elsewhere"})
        assert r.status_code == 201, r.text
        elsewhere = r.json()["token"]

    def faces(frames: list[Any]) -> list[Any]:
        return [face for f in frames for face in f["faces"]]

    def named(events: list[Any]) -> set[str]:
        return {e["subject"] for e in events if e["event"] == "identified"}

    frames, events = scene_over_ws(service, jpegs, service.key)  # admin, its namespace
    assert named(events) == set(ENROLLED)
    assert any(f["match"] is None and f["similarity"] is not None for f in faces(frames))
    frames, events = scene_over_ws(service, jpegs, keys["identify"])
    assert named(events) == set(ENROLLED)
    unnamed = [f for f in faces(frames) if f["match"] is None]
    assert unnamed and all(f["similarity"] is None for f in unnamed)
    assert all(f["subject_id"] == enrolled[f["match"]] for f in faces(frames) if f["match"])
    for key, namespace in ((elsewhere, None), (service.key, "elsewhere")):
        frames, events = scene_over_ws(service, jpegs[::4], key, namespace)
        assert faces(frames) and named(events) == set()
        assert all(f["match"] is None and f["subject_id"] is None for f in faces(frames))
        if key == elsewhere:
            assert all(f["similarity"] is None for f in faces(frames))

    # a looser operating point than the service's, or another namespace: refused
    for key, query, headers, refusal in (
        (keys["identify"], "?threshold=-1", {}, "threshold_not_allowed"),
        (keys["identify"], "?fpir=0.01", {}, "threshold_not_allowed"),
        (keys["identify"], "", {"X-Namespace": "elsewhere"}, "forbidden"),
    ):
        url = ws_url(service) + query
        with connect(url, additional_headers={"X-API-Key": key, **headers}) as ws:
            assert closed_with(ws)[:2] == (4403, refusal)
    for key, query in ((keys["identify"], "?threshold=0.99"), (service.key, "?threshold=-1")):
        with connect(ws_url(service) + query, additional_headers={"X-API-Key": key}) as ws:
            assert json.loads(ws.recv(timeout=10))["ready"] is True


def test_a_threshold_the_growing_gallery_no_longer_allows_closes_the_stream(
    service: Service, pipeline: FacePipeline
) -> None:
    """An identify key's explicit threshold is allowed for its gallery's size when the
    stream opens; once the gallery grows so that the service's own threshold is stricter,
    the stream closes 4403 ``threshold_not_allowed`` (not an error on every frame)."""
    from facerec.matching import IdentificationPolicy

    cfg = pipeline.config
    policy = IdentificationPolicy.from_card(pipeline.card, cfg.alignment, cfg.flip, cfg.precision)
    one, two = (policy.operating_point(g, 1e-3).threshold for g in (1, 2))
    assert two > one  # the service's threshold rises with the gallery
    kerry = KERRY.read_bytes()
    admin = {"X-Namespace": "growing"}
    with service.client() as client:
        r = client.post("/v1/keys", json={"role": "identify", "namespace": "growing"})
        key = r.json()["token"]
        for n, name in enumerate(ENROLLED[:2]):
            sid = client.post("/v1/subjects", json={"name": name}, headers=admin).json()["id"]
            photo = next(iter(sorted((vs.DATA / "gallery").glob(f"{name}_*.jpg"))))
            files = [("images", (photo.name, photo.read_bytes()))]
            if n == 0:  # one subject when the stream opens
                r = client.post(f"/v1/subjects/{sid}/faces", files=files, headers=admin)
                assert r.status_code == 200, r.text
            else:  # the second's face comes while it runs
                second = (sid, files)
        threshold = round((one + two) / 2, 4)
        url = ws_url(service) + f"?threshold={threshold}"
        with connect(url, additional_headers={"X-API-Key": key}, max_size=None) as ws:
            assert json.loads(ws.recv(timeout=10))["ready"] is True
            ws.send(kerry)
            doc, _ = result_of(ws, 0)
            assert "faces" in doc
            sid, files = second
            r = client.post(f"/v1/subjects/{sid}/faces", files=files, headers=admin)
            assert r.status_code == 200, r.text
            messages = []
            deadline = time.monotonic() + 30  # the operating point is rechecked every 5 s
            with pytest.raises(ConnectionClosed) as closed:
                for frame in range(1, 10_000):
                    ws.send(kerry)
                    messages.append(result_of(ws, frame)[0])
                    assert "error" not in messages[-1], messages[-1]
                    assert time.monotonic() < deadline, "still open"
                    time.sleep(0.5)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
                4403,
                "threshold_not_allowed",
            )


def test_newest_frame_is_analysed_and_the_rest_counted_as_dropped(
    service: Service, jpegs: list[bytes]
) -> None:
    with open_ws(service) as ws:
        for data in jpegs[:12]:
            ws.send(data)
        results = []
        while not results or results[-1]["frame"] != 11:
            doc = json.loads(ws.recv(timeout=60))
            if "faces" in doc:
                results.append(doc)
    frames = [r["frame"] for r in results]
    assert frames == sorted(frames) and frames[0] == 0 and frames[-1] == 11
    assert len(results) < 12  # analysing takes longer than sending
    assert results[-1]["dropped"] == 12 - len(results)


def test_bad_frames_get_errors_and_the_connection_stays_open(
    service: Service, enrolled: dict[str, str]
) -> None:
    kerry = KERRY.read_bytes()
    gif = io.BytesIO()
    Image.open(KERRY).save(gif, "GIF")
    before = stored(service)
    with open_ws(service) as ws:
        for k, (data, code) in enumerate(
            [
                (b"this is not an image", "not_an_image"),
                (kerry[: len(kerry) // 3], "truncated_image"),
                (gif.getvalue(), "unsupported_format"),
                (b"", "empty_file"),
            ]
        ):
            ws.send(data)
            doc, _ = result_of(ws, k)
            assert doc["error"]["code"] == code, doc
        ws.send("a text message")
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == "invalid_message"
        ws.send(kerry)
        doc, _ = result_of(ws, 4)
        assert doc["faces"] and doc["dropped"] == 0
    assert stored(service) == before


def test_limits_close_the_socket_with_their_codes(service: Service) -> None:
    before = stored(service)
    # a 50 MB message: refused from its header, the rest never read
    raw = RawClient(service, service.key)
    raw.read_message()  # ready
    raw.send_start(50 * 1024 * 1024, b"\xff\xd8" + b"\0" * 65536)
    code, _, _ = raw.read_close()
    assert code == 1009
    raw.close()
    # a frame over the pixel limit (a 4000x2500 PNG of 40 KB), from its header
    big = io.BytesIO()
    Image.new("RGB", (4000, 2500), (90, 90, 90)).save(big, "PNG")
    with open_ws(service) as ws:
        ws.send(big.getvalue())
        code, reason, messages = closed_with(ws)
    assert (code, reason) == (4413, "image_too_large")
    assert messages[-1]["error"]["code"] == "image_too_large"
    # frames faster than the limit
    tiny = encode_jpeg(np.full((48, 64, 3), 100, np.uint8))
    with open_ws(service) as ws:
        for _ in range(2 * MAX_FPS):
            try:
                ws.send(tiny)
            except ConnectionClosed:
                break
        code, reason, messages = closed_with(ws)
    assert (code, reason) == (4429, "too_many_frames")
    # no key within the authentication timeout
    with connect(ws_url(service)) as ws:
        code, reason, messages = closed_with(ws, timeout=10)
    assert (code, reason) == (1008, "auth_timeout")
    assert stored(service) == before


def test_keys_are_checked_in_the_headers_and_in_the_first_message(
    service: Service, keys: dict[str, str]
) -> None:
    before = stored(service)
    for key, status, code in (
        ("frk_not_a_key", 401, "invalid_api_key"),
        (keys["verify"], 403, "forbidden"),
    ):
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(service), additional_headers={"X-API-Key": key})
        response = refused.value.response
        assert response.status_code == status
        assert json.loads(response.body or b"")["error"]["code"] == code
        with connect(ws_url(service)) as ws:
            ws.send(json.dumps({"api_key": key}))
            assert closed_with(ws)[:2] == (1008, code)
    with connect(ws_url(service)) as ws:
        ws.send(b"\xff\xd8 a frame before the key")
        assert closed_with(ws)[:2] == (1008, "missing_api_key")
    with connect(ws_url(service)) as ws:  # the right key, first message: served
        ws.send(json.dumps({"api_key": keys["identify"]}))
        assert json.loads(ws.recv(timeout=10))["ready"] is True
        ws.send(KERRY.read_bytes())
        assert result_of(ws, 0)[0]["faces"]
    # the wrong role, each time (callers without a valid key: aggregated per window)
    refused = [e for e in audit(service)[-20:] if e["action"] == "auth" and e["role"]]
    assert [(e["role"], e["outcome"]) for e in refused] == [("verify", "refused")] * 2
    assert stored(service) == before


def test_many_connections_at_once_and_beyond_the_limit(
    service: Service, jpegs: list[bytes], keys: dict[str, str]
) -> None:
    """``MAX_CONNECTIONS`` clients (of two keys, each within its share) send frames at
    once, each gets its own results; one more is refused with 1013 while they are open;
    sockets dropped in the middle of a frame free their slots."""
    for _ in range(3):  # cut off in the middle of a frame
        raw = RawClient(service, service.key)
        raw.read_message()
        raw.send_start(len(jpegs[0]), jpegs[0][:5000])
        raw.close()
    failures: list[BaseException] = []
    results: dict[int, list[int]] = {}
    opened = threading.Barrier(MAX_CONNECTIONS + 1)
    finished = threading.Barrier(MAX_CONNECTIONS + 1)

    def client(n: int) -> None:
        try:
            with open_ws(service, service.key if n < PER_KEY else keys["identify"]) as ws:
                opened.wait(timeout=60)
                frames = []
                for k in range(4):
                    ws.send(jpegs[(5 * n + k) % len(jpegs)])
                    doc, _ = result_of(ws, k)
                    frames.append(doc["frame"])
                results[n] = frames
                finished.wait(timeout=120)
        except BaseException as exc:
            failures.append(exc)
            opened.abort()
            finished.abort()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(MAX_CONNECTIONS)]
    for t in threads:
        t.start()
    opened.wait(timeout=60)
    with connect(ws_url(service), additional_headers={"X-API-Key": service.key}) as ws:
        assert closed_with(ws)[:2] == (1013, "too_many_connections")
    finished.wait(timeout=120)
    for t in threads:
        t.join()
    assert not failures, failures
    assert results == {n: [0, 1, 2, 3] for n in range(MAX_CONNECTIONS)}


def test_sockets_without_a_key_take_no_slot(service: Service, keys: dict[str, str]) -> None:
    """Issue 19, high 1: more sockets than there are slots, open and silent (no key):
    a caller with a key still gets a slot and is served; the silent ones are closed
    1008 after the authentication timeout, holding nothing."""
    squatters = [connect(ws_url(service)) for _ in range(MAX_CONNECTIONS + 4)]
    try:
        with open_ws(service, keys["identify"]) as ws:
            ws.send(KERRY.read_bytes())
            assert result_of(ws, 0)[0]["faces"]
        for ws in squatters:
            assert closed_with(ws, timeout=10)[:2] == (1008, "auth_timeout")
    finally:
        for ws in squatters:
            ws.close()


def test_one_key_holds_at_most_its_share_of_the_slots(
    service: Service, keys: dict[str, str]
) -> None:
    """One key's sockets take at most ``PER_KEY`` slots (then 1013): another key is
    served meanwhile."""
    with contextlib.ExitStack() as stack:
        for _ in range(PER_KEY):
            stack.enter_context(open_ws(service, keys["identify"]))
        with connect(ws_url(service), additional_headers={"X-API-Key": keys["identify"]}) as ws:
            code, reason, messages = closed_with(ws)
        assert (code, reason) == (1013, "too_many_connections")
        assert "per API key" in messages[-1]["error"]["message"]
        with open_ws(service) as ws:  # the admin key
            ws.send(KERRY.read_bytes())
            assert result_of(ws, 0)[0]["faces"]
    with open_ws(service, keys["identify"]) as ws:  # the slots came back
        ws.send(KERRY.read_bytes())
        assert result_of(ws, 0)[0]["faces"]


def test_text_messages_count_against_the_message_rate(
    service: Service, keys: dict[str, str]
) -> None:
    """Issue 19, low 4: text messages (each answered with an error) are limited like
    frames: a flood is closed 4429, and another client is served."""
    with open_ws(service, keys["identify"]) as ws:
        for _ in range(3 * MAX_FPS):
            try:
                ws.send("{}")
            except ConnectionClosed:
                break
        code, reason, messages = closed_with(ws)
    assert (code, reason) == (4429, "too_many_frames")
    # one second's burst answered, and what the rate refilled meanwhile: not all 3,000
    assert len(messages) < 2 * MAX_FPS
    with open_ws(service) as ws:
        ws.send(KERRY.read_bytes())
        assert result_of(ws, 0)[0]["faces"]


def test_a_client_that_stops_reading_is_let_go_and_others_are_served(service: Service) -> None:
    """A client that keeps sending frames but never reads: it answers no ping, so the
    server lets it go after the ping interval and timeout (3 s each here; a client whose
    results fill the socket buffers is let go after the send timeout as well), while a
    client that reads is served as usual, pings included."""
    raw = RawClient(service, service.key, rcvbuf=4096)
    junk = b"not an image" * 8  # each gets an error message back, at once
    start = time.monotonic()
    sent = 0
    raw.sock.settimeout(1.0)
    let_go: OSError | None = None
    with open_ws(service) as other:
        while time.monotonic() < start + 60:
            try:
                raw.send_binary(junk)
            except OSError as exc:  # reset (or blocked): the server let go of the socket
                let_go = exc
                break
            sent += 1
            time.sleep(0.01)
            if sent % 100 == 0:  # the other client is served meanwhile
                other.send(KERRY.read_bytes())
                doc, _ = result_of(other, sent // 100 - 1, timeout=30)
                assert doc["faces"]
    assert let_go is not None, "the server kept a client that never reads"
    assert time.monotonic() - start < 2 * PING_S + 10
    assert sent > 100  # the other client got at least one result meanwhile
    raw.close()
    with open_ws(service) as ws:  # the service serves on
        ws.send(KERRY.read_bytes())
        assert result_of(ws, 0)[0]["faces"]
        time.sleep(2.5 * PING_S)  # a client that reads answers the pings
        ws.send(KERRY.read_bytes())
        assert result_of(ws, 1)[0]["faces"]


# -- server-side streams ---------------------------------------------------------------------


class Events(threading.Thread):
    """A stream's events, collected from its WebSocket in the background."""

    def __init__(self, service: Service, stream_id: str) -> None:
        super().__init__(daemon=True)
        self.service, self.path = service, f"/v1/streams/{stream_id}/events?after=0"
        self.items: list[dict[str, Any]] = []
        self.close_code: tuple[int | None, str] | None = None
        self.start()

    def run(self) -> None:
        with open_ws(self.service, path=self.path) as ws:
            self.close_code = closed_with_collect(ws, self.items)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in list(self.items) if e["event"] == kind]


def closed_with_collect(ws: ClientConnection, into: list[Any]) -> tuple[int | None, str]:
    try:
        while True:
            into.append(json.loads(ws.recv(timeout=300)))
    except ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")


def test_stream_worker_reconnects_after_an_rtsp_outage(
    service: Service, enrolled: dict[str, str], scene: vs.Scene
) -> None:
    port = free_port()
    server = RtspServer(scene.frames, FPS, port=port)
    server.start()
    client = service.client()
    try:
        r = client.post("/v1/streams", json={"source": server.url, "label": "door"})
        assert r.status_code == 201, r.text
        stream = r.json()
        sid = stream["id"]
        assert stream["namespace"] == "default"  # the admin key's: whose subjects it names
        events = Events(service, sid)

        def status() -> dict[str, Any]:
            return dict(client.get(f"/v1/streams/{sid}").json())

        wait_for(lambda: status()["processed"] > 5, 60, "frames processed")
        assert status()["state"] == "streaming"
        assert [s["id"] for s in client.get("/v1/streams").json()["items"]] == [sid]
        server.stop()
        down = wait_for(lambda: (s := status())["state"] == "reconnecting" and s, 30, "outage")
        assert down["last_error"]
        time.sleep(1.0)
        server.start()  # the camera comes back on the same port
        back = wait_for(
            lambda: (s := status())["reconnects"] >= 1 and s["state"] == "streaming" and s,
            60,
            "reconnection",
        )
        processed = back["processed"]
        wait_for(lambda: status()["processed"] > processed + 5, 60, "frames after reconnecting")
        wait_for(
            lambda: {e["subject"] for e in events.of("identified")} >= set(ENROLLED),
            120,
            "every enrolled person named",
        )
        states = [e["state"] for e in events.of("stream_state")]
        assert "reconnecting" in states and states[-1] == "streaming", states
        for e in events.of("identified"):
            assert e["subject_id"] == enrolled[e["subject"]]
        assert all(set(e) >= {"seq", "event"} for e in events.items)
        assert client.delete(f"/v1/streams/{sid}").status_code == 204
        assert client.get(f"/v1/streams/{sid}").status_code == 404
        events.join(timeout=30)
        assert events.close_code == (1000, "stream_ended")
        seqs = [e["seq"] for e in events.items]
        assert seqs == list(range(1, len(seqs) + 1))
        logged = [e for e in audit(service) if e["request_id"] == sid]
        actions = [e["action"] for e in logged]
        assert actions[0] == "stream_start" and actions[-1] == "stream_stop"
        assert {e["subject"] for e in logged if e["action"] == "stream_identified"} == {
            enrolled[n] for n in ENROLLED
        }
    finally:
        server.stop()
        client.close()


def test_stream_sources_outside_the_rules_are_refused(
    service: Service, keys: dict[str, str], tmp_path: Path
) -> None:
    video = tmp_path / "clip.avi"
    vs.write_video(video, [np.zeros((64, 64, 3), np.uint8)] * 3, 5)
    before = stored(service)
    with service.client() as client:
        for source, code in (
            ("rtsp://10.1.2.3/stream", "source_not_allowed"),
            ("http://example.com/cam.mjpg", "source_not_allowed"),
            (f"file://{video}", "source_not_allowed"),
            ("ftp://127.0.0.1/stream", "invalid_source"),
            ("0", "invalid_source"),
            ("rtsp://127.0.0.1:99999/x", "invalid_source"),
        ):
            r = client.post("/v1/streams", json={"source": source})
            assert r.status_code == 422 and r.json()["error"]["code"] == code, (source, r.text)
        r = client.post("/v1/streams", json={"source": "rtsp://127.0.0.1/x", "every": 0})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
        # an unreachable camera: accepted, retried, and the status says why it has no frames
        dead = f"rtsp://user:secret@127.0.0.1:{free_port()}/stream"
        r = client.post("/v1/streams", json={"source": dead})
        assert r.status_code == 201, r.text
        retrying = r.json()
        assert retrying["source"] == dead.replace("secret", "***")
        status = wait_for(
            lambda: (s := client.get(f"/v1/streams/{retrying['id']}").json())["last_error"] and s,
            30,
            "the open to fail",
        )
        assert status["state"] == "reconnecting" and "secret" not in status["last_error"]
        r = client.post("/v1/streams", json={"source": dead, "reconnect_for": 1})
        assert r.status_code == 201
        failed = wait_for(
            lambda: (
                (s := client.get(f"/v1/streams/{r.json()['id']}").json())["state"] == "failed" and s
            ),
            30,
            "the stream to give up",
        )
        assert failed["last_error"] and failed["processed"] == 0
        # two streams at most: the retrying one and a third (the failed one has ended)
        extra = client.post("/v1/streams", json={"source": dead})
        assert extra.status_code == 201
        r = client.post("/v1/streams", json={"source": dead})
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_streams"
        for sid in (retrying["id"], extra.json()["id"], failed["id"]):
            assert client.delete(f"/v1/streams/{sid}").status_code == 204
        assert client.get("/v1/streams").json()["items"] == []
        with client_with_key(service, keys["identify"], timeout=5) as other:
            r = other.post("/v1/streams", json={"source": dead})
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    with pytest.raises(InvalidStatus) as refused:
        connect(
            ws_url(service, "/v1/streams/x/events"),
            additional_headers={"X-API-Key": keys["identify"]},
        )
    assert refused.value.response.status_code == 403
    with open_ws(service, path="/v1/streams/nope/events") as ws:
        assert closed_with(ws)[:2] == (4404, "not_found")
    assert stored(service) == before


def test_redirects_and_playlists_cannot_take_a_stream_past_the_allow_list(
    service: Service, scene: vs.Scene, certificate: tuple[Path, Path]
) -> None:
    """Issue 19, medium 2: with only 127.0.0.1 allowed, a source there that answers an
    HTTP 302, an RTSP 302 or an HLS playlist pointing at 127.0.0.2 never gets the
    service to connect to 127.0.0.2, on the first open or on any reconnect; the stream's
    status says why. (Any 127.0.0.0/8 address is this machine's.)"""
    elsewhere_http = MjpegServer(scene.frames[:5], FPS, host="127.0.0.2")
    elsewhere_rtsp = RtspServer(scene.frames[:5], FPS, host="127.0.0.2")
    elsewhere_http.start()
    elsewhere_rtsp.start()
    redirectors = [
        RedirectingServer("http", elsewhere_http.url),
        RedirectingServer("http", elsewhere_rtsp.url),
        RedirectingServer("rtsp", elsewhere_rtsp.url),
        RedirectingServer("hls", elsewhere_http.url),
        RedirectingServer("hls", elsewhere_http.url, playlist_type="text/plain"),
        RedirectingServer("http", elsewhere_http.url, tls=certificate),  # read through TLS
    ]
    try:
        with service.client() as client:
            for source in redirectors:
                source.start()
                r = client.post("/v1/streams", json={"source": source.url})
                assert r.status_code == 201, r.text
                sid = r.json()["id"]
                status = wait_for(
                    lambda sid=sid: (
                        (s := client.get(f"/v1/streams/{sid}").json())["last_error"] and s
                    ),
                    30,
                    "the refusal",
                )
                assert "refused" in status["last_error"], status
                wait_for(lambda source=source: source.clients >= 2, 30, "a reconnect")
                assert client.delete(f"/v1/streams/{sid}").status_code == 204
                source.stop()
        assert (elsewhere_http.clients, elsewhere_rtsp.clients) == (0, 0)
    finally:
        for server in (*redirectors, elsewhere_http, elsewhere_rtsp):
            server.stop()


def test_a_tls_source_is_read_through_the_relay_with_its_certificate_checked(
    service: Service, scene: vs.Scene, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    """An https:// MJPEG camera whose certificate FACEREC_STREAM_CA_FILE vouches for is
    streamed (the relay terminates TLS); one showing another certificate is not."""
    other = self_signed_certificate(tmp_path)  # same names, another key: not vouched for
    good = MjpegServer(scene.frames[:10], FPS, tls=certificate)
    bad = MjpegServer(scene.frames[:10], FPS, tls=other)
    good.start()
    bad.start()
    try:
        with service.client() as client:
            ids = [
                client.post("/v1/streams", json={"source": s.url}).json()["id"] for s in (good, bad)
            ]
            wait_for(
                lambda: client.get(f"/v1/streams/{ids[0]}").json()["processed"] >= 5,
                60,
                "frames from the TLS camera",
            )
            status = wait_for(
                lambda: bad.clients >= 2 and client.get(f"/v1/streams/{ids[1]}").json(),
                60,
                "tries at the other camera",
            )
            assert status["processed"] == 0 and status["state"] != "streaming"
            for sid in ids:
                assert client.delete(f"/v1/streams/{sid}").status_code == 204
    finally:
        good.stop()
        bad.stop()
