"""The ``ws`` part of ``perf.video``: frame-to-result latency over the gateway's WebSocket.

The real service as users run it: ``facerec serve`` in a subprocess (development mode,
embedded SQLite and Milvus Lite in a throwaway data folder, a free loopback port;
``perf.gateway_load.spawned_server``). The scene's three enrolled people are enrolled
through the REST API with their gallery photos (the same ones ``perf.video``'s gallery
holds), and an ``identify``-role key is made for the clients.

Each client is a camera: one ``WS /v1/stream`` connection (the ``websockets`` library,
asyncio, per-message deflate off) sending the 640x480 scene's frames as JPEG (quality 90,
encoded beforehand, as a camera delivers them) in real time at 25 frames/s. A frame is
sent when it is due if no frame is in flight; a frame that falls due while one is in
flight is skipped and counted as dropped by the client (the service then never has to
drop one). Latency is from just before the send to the arrival of that frame's result.
With several clients, their frame clocks are offset by a fraction of a frame period, as
unsynchronised cameras are; all run in one event loop. Each round plays the scene once
per connection (a new connection per round, so the ground truth's tracks start afresh).

Per row: latency p50/p95/p99 (and every frame's, for the histogram), processed
frames/s, drops, the service's CPU time (its process and children, from ``/proc``) per
processed frame, its resident memory, and the tracking and identity figures of the
results against the ground truth (``video_scenes.evaluate``), times to name in wall time
since the scene's first frame was due.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from devkit import scenes as vs
from devkit.media import encode_jpeg
from perf.common import percentiles
from perf.gateway_load import Spawned, spawned_server
from perf.triton_perf import _ours, _proc_cpu

if TYPE_CHECKING:
    from perf.video import Context

FPS = 25.0
RESULT_TIMEOUT_S = 120.0  # a result slower than this ends the run with an error


@dataclass
class Service:
    """A running ``facerec serve`` with the scene's people enrolled."""

    spawned: Spawned
    identify_key: str
    subjects: dict[str, str]  # person -> subject id

    @property
    def ws_url(self) -> str:
        return self.spawned.url.replace("http://", "ws://") + "/v1/stream"


@dataclass
class Camera:
    """What one connection saw."""

    sent: int = 0
    dropped_client: int = 0
    dropped_server: int = 0
    errors: list[str] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    runs: dict[int, list[vs.HypFace]] = field(default_factory=dict)
    ready: dict[int, float] = field(default_factory=dict)


@contextmanager
def service() -> Iterator[Service]:
    """``facerec serve``, the enrolled people (named as in the scene), an identify key."""
    with (
        spawned_server(startup_timeout=600.0) as spawned,
        httpx.Client(
            base_url=spawned.url, headers={"X-API-Key": spawned.api_key}, timeout=300
        ) as client,
    ):
        subjects = {}
        for name, _, photos in vs.CAST:
            if not photos:
                continue
            r = client.post("/v1/subjects", json={"name": name})
            r.raise_for_status()
            sid = r.json()["id"]
            files = [
                ("images", (p, (vs.DATA / "gallery" / f"{name}_{p}.jpg").read_bytes()))
                for p in photos
            ]
            r = client.post(f"/v1/subjects/{sid}/faces", files=files)
            r.raise_for_status()
            subjects[name] = sid
        r = client.post("/v1/keys", json={"role": "identify", "label": "perf.video ws"})
        r.raise_for_status()
        yield Service(spawned, r.json()["token"], subjects)


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants so far."""
    table = _proc_cpu()
    return sum(table[p][1] for p in _ours(table, pid))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


async def _result(ws: ClientConnection, frame: int) -> dict[str, Any]:
    """Read up to the result (or error) of the connection's ``frame`` (events skipped)."""
    while True:
        doc = json.loads(await asyncio.wait_for(ws.recv(), RESULT_TIMEOUT_S))
        if "faces" in doc and doc["frame"] == frame:
            return dict(doc)
        if "error" in doc and doc["error"].get("frame") == frame:
            return dict(doc)
        if "error" in doc:
            raise RuntimeError(f"the service refused the stream: {doc}")


async def camera(
    svc: Service, jpegs: list[bytes], every: int, start: Start, offset: float
) -> Camera:
    """One connection playing the scene in real time once every connection of the round
    is ready: frame k is due at t0 + k / FPS, t0 the round's start plus ``offset``
    (``time.perf_counter`` clock)."""
    cam = Camera()
    headers = {"X-API-Key": svc.identify_key}
    async with connect(
        f"{svc.ws_url}?every={every}", additional_headers=headers, max_size=None, compression=None
    ) as ws:
        ready = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if ready.get("ready") is not True:
            raise RuntimeError(f"the service did not accept the stream: {ready}")
        await start.barrier.wait()
        t0 = start.at.setdefault("t", time.perf_counter() + 0.05) + offset
        k = 0
        while k < len(jpegs):
            await asyncio.sleep(max(0.0, t0 + k / FPS - time.perf_counter()))
            sent = time.perf_counter()  # just before the send
            await ws.send(jpegs[k])
            doc = await _result(ws, cam.sent)
            arrived = time.perf_counter()
            cam.sent += 1
            if "error" in doc:
                cam.errors.append(doc["error"]["code"])
            else:
                cam.latency_s.append(arrived - sent)
                cam.dropped_server = int(doc["dropped"])
                cam.runs[k] = [
                    vs.HypFace(f["track_id"], tuple(f["box"]), f["match"]) for f in doc["faces"]
                ]
                cam.ready[k] = arrived - t0
            due = int(np.ceil((arrived - t0) * FPS - 1e-9))  # the next frame due after it
            cam.dropped_client += max(0, min(due, len(jpegs)) - k - 1)
            k = max(k + 1, due)
        await ws.send(json.dumps({"end": True}))
        async for _ in ws:  # the track events, until the service closes (1000, end)
            pass
    return cam


@dataclass
class Start:
    """The round's clock: set by the first camera past the barrier (all connected)."""

    barrier: asyncio.Barrier
    at: dict[str, float] = field(default_factory=dict)


async def _round(svc: Service, jpegs: list[bytes], every: int, clients: int) -> list[Camera]:
    start = Start(asyncio.Barrier(clients))
    cams = (camera(svc, jpegs, every, start, i / (clients * FPS)) for i in range(clients))
    return list(await asyncio.gather(*cams))


Measured = Callable[[dict[str, Any]], AbstractContextManager[None]]


def run_row(
    ctx: Context,
    measured: Measured,
    svc: Service,
    jpegs: list[bytes],
    every: int,
    clients: int,
    rounds: int,
) -> dict[str, Any]:
    """``rounds`` plays of the scene by ``clients`` cameras at once; ``measured`` is
    ``perf.video``'s (wall time, machine load)."""
    scene = ctx.scenes["640x480"]
    row: dict[str, Any] = {"clients": clients, "every": every, "rounds": rounds}
    pid = svc.spawned.pid
    cams: list[Camera] = []
    cpu = tree_cpu_s(pid)
    with measured(row):
        for _ in range(rounds):
            cams += asyncio.run(_round(svc, jpegs, every, clients))
    cpu = tree_cpu_s(pid) - cpu
    latency_s = [x for c in cams for x in c.latency_s]
    processed = len(latency_s)
    play_s = rounds * len(jpegs) / FPS
    row.update(
        frames_due=len(cams) * len(jpegs),
        processed=processed,
        fps=round(processed / play_s, 2),  # all clients together, over the scene's time
        fps_per_client=round(processed / play_s / clients, 2),
        dropped_client=sum(c.dropped_client for c in cams),
        dropped_server=sum(c.dropped_server for c in cams),
        errors=[e for c in cams for e in c.errors],
        latency_ms=percentiles(latency_s, digits=1),
        latency_ms_all=[round(1000 * x, 1) for x in latency_s],
        server_cpu_s=round(cpu, 2),
        server_cpu_ms_per_frame=round(1000 * cpu / max(processed, 1), 1),
        server_cores=round(cpu / row["wall_s"], 2),
        server_rss_mb=rss_mb(pid),
    )
    scores = [vs.evaluate(scene, c.runs, c.ready) for c in cams]
    row["tracking"] = {
        "id_switches": sum(s["id_switches"] for s in scores),
        "wrong_names": sum(s["wrong_names"] for s in scores),
        "identity_accuracy": round(  # pooled over the connections' matched face-frames
            sum(s["identity_accuracy"] * s["matches"] for s in scores)
            / max(sum(s["matches"] for s in scores), 1),
            4,
        ),
        "mota": round(float(np.mean([s["mota"] for s in scores])), 4),
        "idf1": round(float(np.mean([s["idf1"] for s in scores])), 4),
        "never_named": sorted({p for s in scores for p in s["never_named"]}),
        "time_to_name_s": [v for s in scores for v in s["time_to_name"].values()],
    }
    return row


def part_ws(ctx: Context, measured: Measured) -> dict[str, Any]:
    """One client, then four, detecting every frame and every 3rd."""
    jpegs = [encode_jpeg(f, 90) for f in ctx.scenes["640x480"].frames]
    rounds = 1 if ctx.quick else 3
    out: dict[str, Any] = {"jpeg_bytes_mean": int(np.mean([len(j) for j in jpegs]))}
    rows = []
    with service() as svc:
        out["server_rss_mb_idle"] = rss_mb(svc.spawned.pid)
        for every in (1, 3):
            for clients in (1, 4):
                row = run_row(ctx, measured, svc, jpegs, every, clients, rounds)
                print(json.dumps({k: v for k, v in row.items() if k != "latency_ms_all"}))
                rows.append(row)
    out["rows"] = rows
    out["server_log_problems"] = svc.spawned.log_problems
    return out


# -------------------------------------------------------------------------------- output


def plot_ws(ax: Any, part: dict[str, Any]) -> None:
    """The latency histogram of each row."""
    colors = {(1, 1): "#4477aa", (4, 1): "#66ccee", (1, 3): "#ee7733", (4, 3): "#ccbb44"}
    top = max((max(r["latency_ms_all"], default=0) for r in part["rows"]), default=0)
    bins = np.linspace(0, max(top, 100) * 1.02, 40)
    for r in part["rows"]:
        n = max(len(r["latency_ms_all"]), 1)
        ax.hist(
            r["latency_ms_all"],
            bins=bins,
            weights=np.full(len(r["latency_ms_all"]), 100 / n),
            histtype="step",
            lw=1.5,
            color=colors.get((r["clients"], r["every"]), "gray"),
            label=f"{r['clients']} client(s), every {r['every']}: p95 {r['latency_ms']['p95']:.0f}",
        )
    ax.axvline(100, color="#cc3311", ls="--", lw=1, label="goal p95 100 ms")
    ax.set_xlabel("frame-to-result latency, ms")
    ax.set_ylabel("% of the row's processed frames")
    ax.set_title("WS /v1/stream, 640x480 at 25 fps")
    ax.legend(fontsize=7)


def table_ws(part: dict[str, Any]) -> list[str]:
    lines = [
        "| over the WebSocket (640x480, 25 fps) | detect every | processed fps | dropped by the "
        "clients | latency p50 / p95 / p99 ms | service CPU ms per frame | time to name, "
        "p95 | ID switches | identity accuracy | other load, cores |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in part["rows"]:
        lat, t = r["latency_ms"], r["tracking"]
        ttn = t["time_to_name_s"]
        ttn95 = f"{1000 * float(np.percentile(ttn, 95)):.0f} ms" if ttn else "never"
        lines.append(
            f"| {r['clients']} client{'s' if r['clients'] > 1 else ''} | {r['every']} | "
            f"{r['fps']} | {r['dropped_client']} of {r['frames_due']} | "
            f"{lat['p50']:.0f} / {lat['p95']:.0f} / {lat['p99']:.0f} | "
            f"{r['server_cpu_ms_per_frame']} | {ttn95} | {t['id_switches']} | "
            f"{100 * t['identity_accuracy']:.1f} % | {r['other_processes_cores']} |"
        )
    return lines
