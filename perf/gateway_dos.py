"""Memory of the REST gateway under hostile input, beside normal load.

    python -m perf.gateway_dos --out perf/results

starts the real service (``facerec serve``, development mode, a throwaway data folder, a
free loopback port) and sends, one scenario at a time, what the hostile tester of issue 12
sent, plus ordinary identification traffic for comparison. For each scenario it reports
the server's peak resident memory above where it started (``VmHWM``, reset before each
scenario through ``/proc/PID/clear_refs``), its resident memory a few seconds after the
scenario (whether memory was given back), and what the clients were answered. The large
image scenario runs again with the service's ``malloc_trim`` off, and with
``MALLOC_ARENA_MAX=2`` instead, to show which gives memory back. Then (``--round 2``) the
findings of the second pass (issue 19), each beside a legitimate client whose latency is
measured before, during and after (:mod:`perf.dos_round2`). Writes ``gateway_dos.json``,
``gateway_dos.png`` and ``gateway_dos_round2.png``; asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import struct
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from perf import dos_round2 as round2
from perf.common import figure, machine, write_json
from perf.gateway_load import spawned_server
from perf.proc import reset_peak
from perf.proc import status as _status

GALLERY = Path(__file__).resolve().parents[1] / "tests" / "data" / "gallery"
MB = 1024 * 1024


@dataclass
class Server:
    url: str
    key: str
    pid: int

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@contextmanager
def server(env: dict[str, str]) -> Iterator[Server]:
    """``facerec serve`` with ``env``'s settings, started as the tests start it."""
    with spawned_server(120, env) as spawned:
        yield Server(spawned.url, spawned.api_key, spawned.pid)


# -- inputs -----------------------------------------------------------------------------
def large_jpeg(side: int) -> bytes:
    face = Image.open(sorted(GALLERY.glob("*.jpg"))[0]).convert("RGB").resize((side, side))
    out = io.BytesIO()
    face.save(out, "JPEG", quality=85)
    return out.getvalue()


def claimed_size_jpeg(width: int, height: int) -> bytes:
    data = bytearray(sorted(GALLERY.glob("*.jpg"))[0].read_bytes())
    pos = 2
    while data[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    struct.pack_into(">HH", data, pos + 5, height, width)
    return bytes(data)


def zip_bomb(declared: int, inflated: int) -> bytes:
    out = io.BytesIO()
    block = b"\0" * MB
    with (
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z,
        z.open("bomb.jpg", "w", force_zip64=False) as f,
    ):
        for _ in range(inflated // MB):
            f.write(block)
    data = bytearray(out.getvalue())
    struct.pack_into("<I", data, 22, declared)
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, declared)
    return bytes(data)


def zip_of_zeros(members: int, size: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(members):
            z.writestr(f"{i}.jpg", b"\0" * size)
    return out.getvalue()


# -- scenarios: each returns what the clients were answered ------------------------------
def normal_identify(s: Server) -> Counter[str]:
    images = sorted(GALLERY.glob("*.jpg"))[:32]

    def one(p: Path) -> str:
        r = httpx.post(
            f"{s.url}/v1/identify",
            files={"image": (p.name, p.read_bytes(), "image/jpeg")},
            headers={"X-API-Key": s.key},
            timeout=120,
        )
        return str(r.status_code)

    with ThreadPoolExecutor(8) as pool:
        return Counter(pool.map(one, images))


def chunked_flood(s: Server, key: str | None, path: str, total: int = 300 * MB) -> Counter[str]:
    """A chunked body of up to ``total`` bytes, sent until the server answers and closes."""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    head += "Content-Type: application/json\r\n" + (f"X-API-Key: {key}\r\n" if key else "")
    piece = b" " * (256 * 1024)
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", s.port)) as sock:
        sock.settimeout(60)
        sock.sendall((head + "\r\n").encode())
        try:
            while sent < total:
                sock.sendall(chunk)
                sent += len(piece)
        except OSError:
            pass
        try:
            answer = sock.recv(200)
        except OSError:
            answer = b"(reset)"
    status = answer.split(b" ")[1].decode() if answer.startswith(b"HTTP/") else "reset"
    return Counter({status: 1, f"MB sent before the close: {sent // MB}": 1})


def parallel_posts(s: Server, path: str, field: str, data: bytes, n: int) -> Counter[str]:
    def one(_: int) -> str:
        r = httpx.post(
            f"{s.url}{path}",
            files={field: ("x.jpg" if field != "files" else "x.zip", data)},
            headers={"X-API-Key": s.key},
            timeout=300,
        )
        code = r.json().get("error", {}).get("code", "") if r.status_code >= 400 else ""
        return f"{r.status_code} {code}".strip()

    with ThreadPoolExecutor(n) as pool:
        return Counter(pool.map(one, range(n)))


def queued_jobs(s: Server) -> Counter[str]:
    """Five jobs of a ~0.2 MB zip whose 8 members inflate to 19 MB each (152 MB a job):
    the inputs go to the sealed spool on disk; the fifth is refused (4 per key)."""
    body = zip_of_zeros(8, 19 * MB)
    answers: Counter[str] = Counter()
    ids = []
    for _ in range(5):
        r = httpx.post(
            f"{s.url}/v1/jobs",
            files={"files": ("z.zip", body)},
            headers={"X-API-Key": s.key},
            timeout=300,
        )
        answers[str(r.status_code)] += 1
        if r.status_code == 202:
            ids.append(r.json()["id"])
    for job_id in ids:
        while True:
            job = httpx.get(
                f"{s.url}/v1/jobs/{job_id}", headers={"X-API-Key": s.key}, timeout=60
            ).json()
            if job["status"] not in ("queued", "running"):
                answers[f"job {job['status']}"] += 1
                break
            time.sleep(0.5)
    return answers


def measure(s: Server, name: str, run: Callable[[], Counter[str]]) -> dict[str, Any]:
    time.sleep(1.0)
    before = _status(s.pid, "VmRSS")
    reset_peak(s.pid)
    start = time.perf_counter()
    answers = run()
    seconds = time.perf_counter() - start
    peak = _status(s.pid, "VmHWM")
    time.sleep(3.0)
    after = _status(s.pid, "VmRSS")
    row = {
        "scenario": name,
        "rss_before_mb": round(before / MB, 1),
        "peak_above_mb": round((peak - before) / MB, 1),
        "rss_after_mb": round(after / MB, 1),
        "seconds": round(seconds, 2),
        "answers": dict(answers),
    }
    print(
        f"{name:<36} peak +{row['peak_above_mb']:>7} MB   after {row['rss_after_mb']:>7} MB"
        f"   {dict(answers)}"
    )
    return row


def scenarios(large: bytes) -> list[tuple[str, Callable[[Server], Counter[str]]]]:
    hostile = claimed_size_jpeg(6000, 6000)
    bomb = zip_bomb(1000, 1024 * MB)
    return [
        ("normal: 32 identify, 8 at once", normal_identify),
        (
            "300 MB chunked body, no API key",
            lambda s: chunked_flood(s, None, "/v1/subjects"),
        ),
        (
            "300 MB chunked body, valid key, JSON route",
            lambda s: chunked_flood(s, s.key, "/v1/subjects"),
        ),
        (
            "3.6 KB JPEG claiming 6000x6000, 4 at once",
            lambda s: parallel_posts(s, "/v1/detect", "image", hostile, 4),
        ),
        (
            "real 6000x6000 JPEG, 4 at once",
            lambda s: parallel_posts(s, "/v1/detect", "image", large, 4),
        ),
        (
            "zip member: declares 1000 B, inflates 1 GiB",
            lambda s: parallel_posts(s, "/v1/jobs", "files", bomb, 1),
        ),
        ("5 jobs of 8 x 19 MB members (0.2 MB zip)", queued_jobs),
    ]


VARIANTS = {
    "default (malloc_trim after large images)": {},
    "no trim": {"FACEREC_TRIM_AFTER_PIXELS": "0"},
    "no trim, MALLOC_ARENA_MAX=2": {"FACEREC_TRIM_AFTER_PIXELS": "0", "MALLOC_ARENA_MAX": "2"},
}


SHORT = dict(
    zip(VARIANTS, ["default\n(malloc_trim)", "no trim", "no trim,\nARENA_MAX=2"], strict=True)
)


def plot(result: dict[str, Any], path: Path) -> None:
    main = result["runs"][0]["rows"]
    with figure(path, 1, 2, figsize=(14, 5.5), width_ratios=[2.2, 1], dpi=110) as (_, (ax1, ax2)):
        names = [r["scenario"] for r in main]
        ax1.barh(names, [r["peak_above_mb"] for r in main], color="#2563eb")
        for y, r in enumerate(main):
            ax1.text(r["peak_above_mb"], y, f" +{r['peak_above_mb']:.0f} MB", va="center")
        ax1.invert_yaxis()
        ax1.set_xlabel("server peak RSS above its level before the scenario (MB)")
        ax1.set_title("Hostile input beside normal load (default settings)")
        labels, peaks, afters = [], [], []
        for run in result["runs"]:
            row = next(r for r in run["rows"] if r["scenario"].startswith("real 6000"))
            labels.append(SHORT[run["variant"]])
            peaks.append(row["peak_above_mb"])
            afters.append(row["rss_after_mb"] - row["rss_before_mb"])
        x = range(len(labels))
        ax2.bar([i - 0.2 for i in x], peaks, 0.4, label="peak above before", color="#f59e0b")
        ax2.bar([i + 0.2 for i in x], afters, 0.4, label="3 s after, above before", color="#16a34a")
        ax2.set_xticks(list(x), labels, fontsize=8)
        ax2.set_ylabel("MB")
        ax2.set_title("4 x 6000x6000 at once: memory given back?")
        ax2.legend(fontsize=8)


def plot_round2(rows: list[dict[str, Any]], path: Path) -> None:
    with figure(path, 1, 2, figsize=(14, 5.5), dpi=110) as (_, (ax1, ax2)):
        names = [r["scenario"] for r in rows]
        y = range(len(rows))
        after_key = next(
            k for k in rows[0] if k.startswith("rss_") and k.endswith("_after_above_mb")
        )
        ax1.barh([i - 0.2 for i in y], [r["peak_above_mb"] for r in rows], 0.4, label="peak")
        ax1.barh([i + 0.2 for i in y], [r[after_key] for r in rows], 0.4, label="30 s after")
        ax1.set_yticks(list(y), names, fontsize=8)
        ax1.invert_yaxis()
        ax1.set_xlabel("server RSS above its level before the attack (MB)")
        ax1.set_title("Issue 19's attacks: memory")
        ax1.legend(fontsize=8)
        for phase, offset in (("before", -0.27), ("during", 0.0), ("after", 0.27)):
            values = [r["legit_rest"][phase]["p50_ms"] or 0 for r in rows]
            ax2.barh([i + offset for i in y], values, 0.27, label=phase)
        ax2.set_yticks(list(y), [""] * len(rows))
        ax2.invert_yaxis()
        ax2.set_xlabel("legitimate client: REST identify p50 (ms)")
        ax2.set_title("Another client meanwhile")
        ax2.legend(fontsize=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("perf/results"))
    parser.add_argument(
        "--round",
        choices=["1", "2", "all"],
        default="all",
        help="the first pass's scenarios (issue 12), the second's (issue 19), or both",
    )
    parser.add_argument(
        "--only",
        help="of the second pass, only these (comma-separated tags: H1,H5); the others "
        "already in the JSON are kept",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gateway_dos.json"
    result: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    result.pop("platform", None)  # an earlier run's, now in machine
    result.update(
        command="python -m perf.gateway_dos --out " + str(args.out),
        machine=machine(),
        note="client and server share the machine; peak = VmHWM - VmRSS before",
    )
    if args.round in ("1", "all"):
        large = large_jpeg(6000)
        runs = []
        for k, (variant, env) in enumerate(VARIANTS.items()):
            print(f"-- {variant}")
            with server(env) as s:
                chosen = scenarios(large) if k == 0 else scenarios(large)[4:5]
                rows = [measure(s, name, lambda run=run: run(s)) for name, run in chosen]
            runs.append({"variant": variant, "env": env, "rows": rows})
        result["runs"] = runs
        plot(result, args.out / "gateway_dos.png")
    if args.round in ("2", "all"):
        print("-- issue 19: each attack beside a legitimate client")
        only = set(args.only.split(",")) if args.only else None
        with server({}) as s:
            rows = round2.run(s, only)
        result["round2"] = round2.merge(result.get("round2", []), rows)
        plot_round2(result["round2"], args.out / "gateway_dos_round2.png")
    write_json(path, result)
    print(f"wrote {path} and the plots")


if __name__ == "__main__":
    main()
