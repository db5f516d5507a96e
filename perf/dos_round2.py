"""The findings of the second hostile pass (issue 19), each replayed on the real service
while a legitimate client keeps working; run by ``python -m perf.gateway_dos``.

Every scenario runs the same way (:func:`measure`): a legitimate client identifies a face
over REST every 0.25 s, from another loopback address (127.0.0.2: the attacker's
per-address shares are not its), and, for the scenarios about video, opens a
``WS /v1/stream`` with its own key every second, sends a frame and waits for the result.
It runs for 3 s before the attack (the baseline), during it, and for ``AFTER_S`` after.
The server's peak RSS (``VmHWM`` reset before the attack) and its RSS ``AFTER_S`` after
are read from ``/proc``; the legitimate client's answers and latency are summed up for
each phase.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import struct
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
from PIL import Image

from perf.common import percentiles
from perf.proc import reset_peak, status

GALLERY = Path(__file__).resolve().parents[1] / "tests" / "data" / "gallery"
MB = 1024 * 1024
AFTER_S = 30.0  # how long after the attack RSS is read again
LEGIT_ADDRESS = "127.0.0.2"


class Server(Protocol):
    url: str
    key: str
    pid: int

    @property
    def port(self) -> int: ...


def _ws_url(s: Server) -> str:
    return s.url.replace("http://", "ws://") + "/v1/stream"


def new_key(s: Server, role: str = "identify", namespace: str | None = None) -> str:
    body: dict[str, Any] = {"role": role}
    if namespace:
        body["namespace"] = namespace
    r = httpx.post(f"{s.url}/v1/keys", json=body, headers={"X-API-Key": s.key}, timeout=30)
    r.raise_for_status()
    token: str = r.json()["token"]
    return token


# -- the legitimate client -------------------------------------------------------------
class Legit:
    """REST identify every 0.25 s (and, with ``video``, a WebSocket frame every second)
    from 127.0.0.2, recording (time, outcome, latency)."""

    def __init__(self, s: Server, key: str, video: bool) -> None:
        self.s, self.key, self.video = s, key, video
        self.face = sorted(GALLERY.glob("*.jpg"))[0].read_bytes()
        self.rest: list[tuple[float, str, float]] = []
        self.ws: list[tuple[float, str, float]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rest_loop, daemon=True)]
        if video:
            self._threads.append(threading.Thread(target=self._ws_loop, daemon=True))

    def __enter__(self) -> Legit:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _rest_loop(self) -> None:
        transport = httpx.HTTPTransport(local_address=LEGIT_ADDRESS)
        with httpx.Client(transport=transport, timeout=30) as client:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    r = client.post(
                        f"{self.s.url}/v1/identify",
                        files={"image": ("face.jpg", self.face, "image/jpeg")},
                        headers={"X-API-Key": self.key},
                    )
                    outcome = str(r.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                self.rest.append((start, outcome, time.monotonic() - start))
                self._stop.wait(max(0.0, 0.25 - (time.monotonic() - start)))

    def _ws_loop(self) -> None:
        from websockets.exceptions import ConnectionClosed, InvalidStatus
        from websockets.sync.client import connect

        while not self._stop.is_set():
            start = time.monotonic()
            try:
                own = socket.create_connection(
                    ("127.0.0.1", self.s.port), timeout=10, source_address=(LEGIT_ADDRESS, 0)
                )
                with connect(
                    _ws_url(self.s),
                    sock=own,
                    additional_headers={"X-API-Key": self.key},
                    open_timeout=10,
                    close_timeout=2,
                ) as ws:
                    first = json.loads(ws.recv(timeout=10))
                    if "ready" not in first:
                        outcome = f"refused {first.get('error', {}).get('code')}"
                    else:
                        ws.send(self.face)
                        doc = json.loads(ws.recv(timeout=20))
                        outcome = "answered" if "faces" in doc else "error"
            except ConnectionClosed as exc:
                outcome = f"closed {exc.rcvd.code if exc.rcvd else '-'}"
            except (InvalidStatus, OSError, TimeoutError) as exc:
                outcome = type(exc).__name__
            self.ws.append((start, outcome, time.monotonic() - start))
            self._stop.wait(max(0.0, 1.0 - (time.monotonic() - start)))


def _summary(rows: list[tuple[float, str, float]], start: float, end: float) -> dict[str, Any]:
    chosen = [r for r in rows if start <= r[0] < end]
    ok = [r[2] for r in chosen if r[1] in ("200", "answered")]
    ms = percentiles(ok, ("p50", "p95"), digits=1) if ok else {}
    return {
        "requests": len(chosen),
        "served": len(ok),
        "outcomes": dict(Counter(r[1] for r in chosen)),
        "p50_ms": ms.get("p50"),
        "p95_ms": ms.get("p95"),
    }


def measure(
    s: Server, name: str, attack: Callable[[], Counter[str]], video: bool = False
) -> dict[str, Any]:
    """Baseline 3 s, the attack, ``AFTER_S`` after: RSS and the legitimate client's view."""
    key = new_key(s)
    time.sleep(1.0)
    with Legit(s, key, video) as legit:
        time.sleep(3.0)
        before = status(s.pid, "VmRSS")
        reset_peak(s.pid)
        started = time.monotonic()
        answers = attack()
        ended = time.monotonic()
        peak = status(s.pid, "VmHWM")
        time.sleep(AFTER_S)
        after = status(s.pid, "VmRSS")
    row = {
        "scenario": name,
        "attack_s": round(ended - started, 1),
        "rss_before_mb": round(before / MB, 1),
        "peak_above_mb": round((peak - before) / MB, 1),
        f"rss_{AFTER_S:.0f}s_after_above_mb": round((after - before) / MB, 1),
        "attacker_answers": dict(answers),
        "legit_rest": {
            "before": _summary(legit.rest, started - 3.0, started),
            "during": _summary(legit.rest, started, ended),
            "after": _summary(legit.rest, ended, ended + AFTER_S),
        },
    }
    if video:
        row["legit_ws"] = {
            "during": _summary(legit.ws, started, ended),
            "after": _summary(legit.ws, ended, ended + AFTER_S),
        }
    during = row["legit_rest"]["during"]
    print(
        f"{name:<48} peak +{row['peak_above_mb']:>7} MB  after "
        f"{row[f'rss_{AFTER_S:.0f}s_after_above_mb']:>+7} MB  legit REST "
        f"{during['served']}/{during['requests']} p50 {during['p50_ms']} ms"
        + (
            f"  WS {row['legit_ws']['during']['served']}/{row['legit_ws']['during']['requests']}"
            if video
            else ""
        )
        + f"  {dict(answers)}"
    )
    return row


# -- inputs ------------------------------------------------------------------------------
def flat_png(width: int, height: int, mode: str = "RGB") -> bytes:
    """A flat image: a few KB of PNG for many pixels."""
    out = io.BytesIO()
    Image.new(mode, (width, height), 90 if mode in ("L", "I;16") else (90,) * len(mode)).save(
        out, "PNG"
    )
    return out.getvalue()


def directory_bomb(entries: int) -> bytes:
    """A zip whose central directory lists ``entries`` empty ``x.jpg`` members: one local
    header (where a zip begins), no data."""
    name = b"x.jpg"
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0)
    local += name
    record = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0,
                         len(name), 0, 0, 0, 0, 0, 0) + name  # fmt: skip
    directory = record * entries
    size = len(directory)
    start = len(local)
    zip64_end = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries,
                            size, start)  # fmt: skip
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, start + size, 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return local + directory + zip64_end + locator + end


def zip_of(member: bytes, count: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(count):
            z.writestr(f"{i}.png", member)
    return out.getvalue()


# -- the attacks ---------------------------------------------------------------------------
@contextmanager
def _for(seconds: float) -> Iterator[Callable[[], bool]]:
    end = time.monotonic() + seconds
    yield lambda: time.monotonic() < end


@contextmanager
def _counting(answers: Counter[str]) -> Iterator[None]:
    """Count how a WebSocket ended (its close code, or the error) instead of raising."""
    from websockets.exceptions import ConnectionClosed

    try:
        yield
    except ConnectionClosed as exc:
        answers[f"closed {exc.rcvd.code if exc.rcvd else '-'}"] += 1
    except OSError as exc:
        answers[type(exc).__name__] += 1


def _in_parallel(client: Callable[[int], None], count: int) -> None:
    with ThreadPoolExecutor(count) as pool:
        list(pool.map(client, range(count)))


def keyless_ws_squat(s: Server, sockets: int = 24, seconds: float = 20.0) -> Counter[str]:
    """High 1: silent sockets without a key, more than there are video slots, each
    reopened as soon as the server closes it."""
    from websockets.sync.client import connect

    answers: Counter[str] = Counter()

    def squat(_: int) -> None:
        with _for(seconds) as going:
            while going():
                with _counting(answers), connect(_ws_url(s), open_timeout=10) as ws:
                    answers["opened"] += 1
                    while going():
                        with contextlib.suppress(TimeoutError):
                            ws.recv(timeout=0.5)

    _in_parallel(squat, sockets)
    return answers


def idle_connections(s: Server, count: int = 512, seconds: float = 25.0) -> Counter[str]:
    """High 2: idle TCP connections from one address (127.0.0.1), reopened as they are
    cut, as many as the documented cap."""
    answers: Counter[str] = Counter()
    held: list[socket.socket] = []
    with _for(seconds) as going:
        while going():
            alive = []
            for sock in held:
                try:
                    if sock.recv(4096, socket.MSG_DONTWAIT) == b"":
                        sock.close()
                        answers["cut by the server"] += 1
                        continue
                    sock.close()  # an answer: 503 or 408
                    answers["answered and closed"] += 1
                    continue
                except BlockingIOError:
                    alive.append(sock)
                except OSError:
                    sock.close()
            held = alive
            while len(held) < count and going():
                try:
                    held.append(socket.create_connection(("127.0.0.1", s.port), timeout=5))
                    answers["opened"] += 1
                except OSError:
                    answers["refused"] += 1
                    break
            time.sleep(0.1)
    for sock in held:
        sock.close()
    return answers


def central_directory_bombs(s: Server, entries: int = 3_900_000, at_once: int = 2) -> Counter[str]:
    """High 3: zips whose directories list millions of entries and hold no data."""
    bomb = directory_bomb(entries)

    def one(_: int) -> str:
        r = httpx.post(
            f"{s.url}/v1/jobs",
            files={"files": ("bomb.zip", bomb, "application/zip")},
            headers={"X-API-Key": s.key},
            timeout=300,
        )
        code = r.json().get("error", {}).get("code", "") if r.status_code >= 400 else ""
        return f"{r.status_code} {code} ({len(bomb) // MB} MB, {entries:,} entries)"

    with ThreadPoolExecutor(at_once) as pool:
        return Counter(pool.map(one, range(at_once)))


def endless_jobs(s: Server) -> Counter[str]:
    """High 4: one identify key queues jobs of flat 6300x6300 PNGs (the bound in pixels
    refuses the 2,000-image one and the key's second), another namespace's one-image job
    is served meanwhile, and the queued job is cancelled."""
    answers: Counter[str] = Counter()
    attacker = new_key(s)
    other = new_key(s, namespace="elsewhere")
    big = flat_png(6300, 6300)

    def submit(body: bytes, key: str) -> httpx.Response:
        return httpx.post(
            f"{s.url}/v1/jobs",
            files={"files": ("j.zip", body, "application/zip")},
            headers={"X-API-Key": key},
            timeout=300,
        )

    def code(r: httpx.Response) -> str:
        if r.status_code < 400:
            return str(r.status_code)
        try:
            return f"{r.status_code} {r.json()['error']['code']}"
        except (ValueError, KeyError, TypeError):
            return f"{r.status_code} {r.text[:80]}"

    answers[f"2000 images: {code(submit(zip_of(big, 2000), attacker))}"] += 1
    accepted = []
    for n in range(3):  # 7.5 G pixels each: the third passes the key's 16 G
        r = submit(zip_of(big, 190), attacker)
        answers[f"190 images, job {n + 1}: {code(r)}"] += 1
        if r.status_code == 202:
            accepted.append(r.json()["id"])
    time.sleep(2.0)  # the attacker's jobs are running
    start = time.monotonic()
    face = sorted(GALLERY.glob("*.jpg"))[0].read_bytes()
    small = submit(zip_of(face, 1), other)
    job_id = small.json()["id"]
    while True:
        job = httpx.get(
            f"{s.url}/v1/jobs/{job_id}", headers={"X-API-Key": other}, timeout=30
        ).json()
        if job["status"] not in ("queued", "running"):
            break
        time.sleep(0.25)
    answers[
        f"other namespace's 1-image job: {job['status']} in {time.monotonic() - start:.1f} s"
    ] += 1
    time.sleep(5.0)
    for queued in accepted:
        r = httpx.delete(f"{s.url}/v1/jobs/{queued}", headers={"X-API-Key": attacker}, timeout=30)
        answers[f"cancel: {r.status_code} {r.json()['status']} after {r.json()['done']}"] += 1
    return answers


def video_frames(s: Server, seconds: float = 20.0) -> Counter[str]:
    """High 5: 16 sockets of one identify key sending a 2880x2880 RGBA PNG (a few KB)
    as fast as they are answered."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    frame = flat_png(2880, 2880, "RGBA")
    key = new_key(s)
    answers: Counter[str] = Counter()

    def send(n: int) -> None:
        with _for(seconds) as going:
            while going():
                try:
                    with connect(
                        _ws_url(s),
                        additional_headers={"X-API-Key": key},
                        max_size=None,
                    ) as ws:
                        json.loads(ws.recv(timeout=10))
                        while going():
                            ws.send(frame)
                            doc = json.loads(ws.recv(timeout=60))
                            answers[
                                "error " + doc["error"]["code"] if "error" in doc else "answered"
                            ] += 1
                except ConnectionClosed as exc:
                    answers[f"closed {exc.rcvd.code if exc.rcvd else '-'}"] += 1
                    time.sleep(0.5)
                except (OSError, TimeoutError) as exc:
                    answers[type(exc).__name__] += 1

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(send, range(16)))
    return answers


def ws_text_flood(s: Server, sockets: int = 4, seconds: float = 15.0) -> Counter[str]:
    """Low 4: text messages as fast as a socket can send them."""
    from websockets.sync.client import connect

    key = new_key(s)
    answers: Counter[str] = Counter()

    def flood(_: int) -> None:
        with _for(seconds) as going:
            while going():
                with (
                    _counting(answers),
                    connect(_ws_url(s), additional_headers={"X-API-Key": key}) as ws,
                ):
                    while going():
                        ws.send("{}")
                        answers["sent"] += 1

    _in_parallel(flood, sockets)
    return answers


def decode_layouts(s: Server) -> Counter[str]:
    """Medium 1: images whose layout costs more per pixel than RGB, one at a time: a
    flat RGBA PNG just under 40 M pixels, a 16-bit PNG of 20 M, a float TIFF of 4.8 M
    (uncompressed: the upload limit bounds it), and a grey+alpha PNG of 40 M (over the
    decode budget)."""
    answers: Counter[str] = Counter()
    float_tiff = io.BytesIO()
    Image.fromarray(np.full((2400, 2000), 90.0, np.float32)).save(float_tiff, "TIFF")
    for label, data in (
        ("RGBA PNG 6320x6320", flat_png(6320, 6320, "RGBA")),
        ("16-bit PNG 5000x4000", flat_png(5000, 4000, "I;16")),
        ("grey+alpha PNG 6320x6320", flat_png(6320, 6320, "LA")),
        ("float TIFF 2000x2400 (within the 20 MiB upload limit)", float_tiff.getvalue()),
    ):
        r = httpx.post(
            f"{s.url}/v1/detect",
            files={"image": ("x", data)},
            headers={"X-API-Key": s.key},
            timeout=300,
        )
        code = r.json().get("error", {}).get("code", "") if r.status_code >= 400 else ""
        answers[f"{label} ({len(data) // 1024} KB): {r.status_code} {code}".strip()] += 1
    return answers


SCENARIOS: list[tuple[str, Callable[[Server], Counter[str]], bool]] = [
    ("H1 24 keyless silent WebSockets, reopened", keyless_ws_squat, True),
    ("H2 512 idle connections from one address", idle_connections, False),
    ("H3 2 zips listing 3.9 M entries at once", central_directory_bombs, False),
    ("H4 jobs of flat 6300x6300 PNGs", endless_jobs, False),
    ("H5 16 WebSockets of one key, 2880x2880 RGBA PNGs", video_frames, True),
    ("M1 RGBA, 16-bit and float images", decode_layouts, False),
    ("L4 4 WebSockets flooding text", ws_text_flood, True),
]


def run(s: Server, only: set[str] | None = None) -> list[dict[str, Any]]:
    """The scenarios (those whose tag, ``H1`` ... ``L4``, is in ``only``, if given)."""
    return [
        measure(s, name, lambda a=attack: a(s), video)
        for name, attack, video in SCENARIOS
        if only is None or name.split()[0] in only
    ]


def merge(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` rows with those of ``new`` in their place, in the order of SCENARIOS."""
    rows = {r["scenario"].split()[0]: r for r in old} | {r["scenario"].split()[0]: r for r in new}
    return [rows[name.split()[0]] for name, _, _ in SCENARIOS if name.split()[0] in rows]
