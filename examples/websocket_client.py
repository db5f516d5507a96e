"""Live video to the gateway over a WebSocket (`WS /v1/stream`): frames in, names out.

    python examples/websocket_client.py --url http://127.0.0.1:8000 --key frk_...
    python examples/websocket_client.py        # starts `facerec serve` itself, then stops it

Ben Affleck is enrolled over REST from four of his bundled photos, then a 3-second clip
made from the bundled photos (his fifth one slides across while a stranger stands still)
is sent frame by frame as JPEG; each `identified` event is printed, and the subject is
deleted. Without arguments a throwaway `facerec serve` runs on a free loopback port in
development mode, with its data (and its admin key, admin.key) in a temp dir.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from websockets.exceptions import ConnectionClosedOK, InvalidStatus
from websockets.sync.client import connect

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
FPS = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def start_server() -> Iterator[tuple[str, str]]:
    """`facerec serve` in development mode on a free port; yields (url, admin key)."""
    with tempfile.TemporaryDirectory() as tmp:
        # Of the FACEREC_* settings only the models' folder is kept: a real deployment's
        # database or master key must not reach a throwaway server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
        if "FACEREC_HOME" in os.environ:
            env["FACEREC_HOME"] = os.environ["FACEREC_HOME"]
        env.update(FACEREC_ENV="development", FACEREC_DATA_DIR=tmp, FACEREC_INDEX_TYPE="FLAT")
        port, log = free_port(), Path(tmp) / "serve.log"
        facerec = Path(sys.executable).with_name("facerec")  # the package's command
        with log.open("wb") as out:  # cwd=tmp: no .env file of this folder is read
            proc = subprocess.Popen(
                [str(facerec), "serve", "--port", str(port)], env=env, cwd=tmp, stderr=out
            )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:  # /readyz answers 200 once the models, database and index do
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"facerec serve did not start:\n{log.read_text()}")
                time.sleep(0.5)
            yield url, (Path(tmp) / "admin.key").read_text().strip()
        finally:
            proc.send_signal(signal.SIGINT)  # finishes the requests in flight, then exits
            proc.wait(timeout=60)


def clip() -> Iterator[bytes]:
    """30 JPEG frames (RGB): one face moving, one standing still."""
    moving = np.asarray(Image.open(DATA / "gallery" / "Ben_Affleck_0006.jpg").convert("RGB"))
    still = np.asarray(Image.open(DATA / "lfw" / "Aaron_Eckhart_0001.jpg").convert("RGB"))
    for k in range(30):
        frame = np.full((220, 420, 3), 110, np.uint8)
        frame[35:185, 4 * k : 4 * k + 150] = moving
        frame[35:185, 265:415] = still
        jpeg = io.BytesIO()
        Image.fromarray(frame).save(jpeg, "JPEG", quality=90)
        yield jpeg.getvalue()


def stream(url: str, key: str) -> bool:
    """Send the clip, print its `identified` events; False when the stream was refused."""
    ws_url = url.replace("http", "ws", 1) + "/v1/stream"
    # The key goes in a header (a browser, which cannot set one, sends {"api_key": ...}
    # as its first message instead); a refused key is an HTTP 401/403, not a WebSocket.
    with connect(ws_url, additional_headers={"X-API-Key": key}) as ws:
        ready = json.loads(ws.recv())  # {"ready": true, "limits": {...}} or {"error": ...}
        if not ready.get("ready"):
            print(f"refused: {ready}")
            return False
        print(f"ready (at most {ready['limits']['max_fps']:g} frames/s)")
        start = time.monotonic()
        for k, frame in enumerate(clip()):
            time.sleep(max(0.0, start + k / FPS - time.monotonic()))  # at the clip's pace
            ws.send(frame)  # a binary message: one JPEG or PNG frame
            # Each frame gets its result (or an error), then its events follow. Sending the
            # next frame only once a result is back, this client never has a frame dropped.
            while True:
                doc = json.loads(ws.recv())
                show(doc)
                if "faces" in doc or "error" in doc:
                    break
        ws.send(json.dumps({"end": True}))  # the open tracks end, then the server closes
        with contextlib.suppress(ConnectionClosedOK):
            while True:
                show(json.loads(ws.recv()))
    return True


def show(doc: dict[str, object]) -> None:
    """Print `identified` events (`facerec watch --json` lines) and errors."""
    if doc.get("event") == "identified":
        print(
            f"{doc['time']:5.2f} s  track {doc['track_id']}: {doc['subject']} "
            f"(similarity {doc['similarity']:.3f}, {doc['votes']} votes)"
        )
    elif "error" in doc:
        print(f"error: {doc['error']}")


def run(url: str, key: str) -> int:
    try:
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as client:
            subject = client.post("/v1/subjects", json={"name": "Ben_Affleck"})
            subject_id = subject.raise_for_status().json()["id"]
            try:
                photos = sorted((DATA / "gallery").glob("Ben_Affleck_*.jpg"))[:4]
                files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
                faces = client.post(f"/v1/subjects/{subject_id}/faces", files=files)
                enrolled = faces.raise_for_status().json()["enrolled"]
                print(f"enrolled Ben_Affleck from {enrolled} photos")
                if not stream(url, key):
                    return 1
            finally:  # the subject, its templates and its vectors (best effort)
                with contextlib.suppress(httpx.TransportError):
                    client.delete(f"/v1/subjects/{subject_id}")
    except httpx.HTTPStatusError as exc:  # an error answer: {"error": {"code", "message"}}
        print(f"{exc.request.url.path}: {exc.response.status_code} {exc.response.text}")
        return 1
    except InvalidStatus as exc:  # the key was refused before the WebSocket opened
        print(f"/v1/stream: {exc.response.status_code} {exc.response.body!r}")
        return 1
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a running gateway (default: start one here)")
    parser.add_argument("--key", help="an admin API key (it enrols and identifies)")
    args = parser.parse_args(argv)
    if args.url and args.key:
        return run(args.url.rstrip("/"), args.key)
    if args.url or args.key:
        parser.error("give both --url and --key, or neither")
    with start_server() as (url, key):
        return run(url, key)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
