"""The REST gateway from any HTTP client: enrol, identify, verify and a batch job.

    python examples/rest_client.py --url http://127.0.0.1:8000 --key frk_...
    python examples/rest_client.py        # starts `facerec serve` itself, then stops it

Three people of tests/data/gallery are enrolled from four photos each; their fifth photos
and a stranger's are then identified, one alone and all of them in a job (a zip archive),
two photos are verified, and the subjects are deleted. Without arguments a throwaway
`facerec serve` runs on a free loopback port in development mode, with its data in a temp
dir (where it writes its admin key, admin.key). Every route is listed at URL/docs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

GALLERY = Path(__file__).resolve().parents[1] / "tests" / "data" / "gallery"
PEOPLE = ["Ben_Affleck", "Choi_Sung-hong", "Cruz_Bustamante"]
STRANGER = GALLERY / "Xanana_Gusmao_0005.jpg"


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


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """One request; an error answer is {"error": {"code", "message"}}: stop on it."""
    response = client.request(method, path, **kwargs)
    if response.is_error:
        error = response.json()["error"]
        sys.exit(f"{method} {path}: {response.status_code} [{error['code']}] {error['message']}")
    return response.json() if response.content else None


def upload(photo: Path) -> tuple[str, bytes, str]:
    """One file of a multipart form: its name, bytes and type."""
    return photo.name, photo.read_bytes(), "image/jpeg"


def named(face: dict[str, Any]) -> str:
    """One identified face: its match (or 'unknown') and the best candidate's score."""
    best = face["candidates"][0]["similarity"] if face["candidates"] else float("nan")
    return f"{face['match']['name'] if face['match'] else 'unknown'} (best {best:.3f})"


def run(client: httpx.Client, subjects: list[str]) -> None:
    for name in PEOPLE:  # a subject, then its faces: one result (or error) per photo
        subject = call(client, "POST", "/v1/subjects", json={"name": name})
        subjects.append(subject["id"])
        photos = sorted(GALLERY.glob(f"{name}_*.jpg"))[:4]
        images = [("images", upload(p)) for p in photos]
        done = call(client, "POST", f"/v1/subjects/{subject['id']}/faces", files=images)
        print(f"enrolled {name}: {done['enrolled']} of {len(photos)} photos")
        for refused in (r for r in done["results"] if r.get("error")):
            print(f"  refused {refused['image']}: {refused['error']['code']}")
    held_out = [sorted(GALLERY.glob(f"{name}_*.jpg"))[-1] for name in PEOPLE]

    # 1:N, open set: a face's `match` is null when no subject clears the threshold.
    result = call(client, "POST", "/v1/identify", files={"image": upload(held_out[0])})
    for face in result["faces"]:
        print(f"identify {held_out[0].name}: {named(face)}, threshold {result['threshold']:.3f}")

    # 1:1 on two photos: nothing enrolled is needed.
    a, b = sorted(GALLERY.glob(f"{PEOPLE[1]}_*.jpg"))[-2:]
    pair = call(
        client, "POST", "/v1/verify/pair", files={"image_a": upload(a), "image_b": upload(b)}
    )
    verdict = "same person" if pair["match"] else "different people"
    print(f"verify {a.name} / {b.name}: {verdict} (similarity {pair['similarity']:.3f})")

    # A job: images or zip archives of them, identified in the background; poll until done.
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for photo in [*held_out, STRANGER]:
            zf.write(photo, photo.name)
    files = {"files": ("probes.zip", archive.getvalue(), "application/zip")}
    job = call(client, "POST", "/v1/jobs", files=files)
    while job["status"] in ("queued", "running"):
        time.sleep(0.5)
        job = call(client, "GET", f"/v1/jobs/{job['id']}")
    print(f"job: {job['status']}, {job['done']} of {job['total']} images")
    for item in job["results"] or []:  # as /v1/identify answers, one per image
        faces = ", ".join(named(face) for face in item["faces"]) or "no face"
        print(f"  {item['image']}: {item['error']['code'] if item.get('error') else faces}")


def session(url: str, key: str) -> int:
    # Every request carries the API key; an admin key may do everything.
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as client:
        subjects: list[str] = []
        try:
            run(client, subjects)
        finally:  # deleting a subject deletes its templates and vectors too
            deleted = 0
            for subject_id in subjects:
                with contextlib.suppress(httpx.TransportError):  # best effort, after an error
                    deleted += client.delete(f"/v1/subjects/{subject_id}").status_code == 204
            print(f"deleted {deleted} of {len(subjects)} subjects")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a running gateway (default: start one here)")
    parser.add_argument("--key", help="an admin API key (it enrols, identifies and verifies)")
    args = parser.parse_args(argv)
    if args.url and args.key:
        return session(args.url.rstrip("/"), args.key)
    if args.url or args.key:
        parser.error("give both --url and --key, or neither")
    with start_server() as (url, key):
        return session(url, key)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
