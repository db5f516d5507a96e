"""Load on the REST gateway: throughput, latency and micro-batching under concurrent clients.

    python -m perf.gateway_load --out perf/results

starts the real service (``facerec serve``, development mode, a throwaway data folder, a
free loopback port; or uses ``--url URL --api-key KEY``), enrols the eight gallery people
(first three images each) through the API, then, from a separate client process, drives
``POST /v1/verify`` and ``POST /v1/identify`` with N concurrent clients for each N of
``--concurrency``. Each run stops after ``--duration`` seconds or ``--max-requests``
requests, whichever comes first (requests in flight then finish and count). ``GET
/metrics`` is read before and after each run for the mean micro-batch size (images per
pipeline call). Client and server share the machine's cores. Writes ``gateway_load.json``
and ``gateway_load.png`` and prints a table. With ``FACEREC_BACKEND=triton`` (and
``FACEREC_TRITON_URL``) the spawned service runs its networks on that Triton server:

    facerec triton serve --grpc-port 18001 --http-port 18000 --metrics-port 18002 &
    FACEREC_BACKEND=triton FACEREC_TRITON_URL=127.0.0.1:18001 \
        python -m perf.gateway_load --out perf/results/gateway_triton
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devkit.servers import start_gateway, stop_gateway
from perf.common import figure, percentiles, record, write_json

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
ENDPOINTS = ("verify", "identify")
ENROL_IMAGES = 3
BATCH_METRIC = "facerec_inference_batch_images"


@dataclass(frozen=True)
class Probe:
    """One request: an image, and for verify the claimed subject; ``expect`` is the
    subject id a correct answer names (None: no one / an impostor claim)."""

    path: str
    subject_id: str | None
    expect: str | None


# ---------------------------------------------------------------------------- the server


@dataclass
class Spawned:
    """A running ``facerec serve``; ``log_problems`` is filled when it has stopped."""

    url: str
    api_key: str
    log_problems: list[str] = field(default_factory=list)
    pid: int = 0  # the service's process (its CPU time and memory are read from /proc)


@contextmanager
def spawned_server(startup_timeout: float, env: dict[str, str] | None = None) -> Iterator[Spawned]:
    """``facerec serve`` in development mode on a free port, in a throwaway folder
    (:func:`devkit.servers.start_gateway`, as the tests start it); ``env``: more
    settings."""
    folder = Path(tempfile.mkdtemp(prefix="facerec-load-"))
    (folder / "data").mkdir()
    service = None
    try:
        service = start_gateway(
            folder / "data", env=env, log=folder / "server.log", timeout=startup_timeout
        )
        server = Spawned(service.url, service.key, pid=service.proc.pid)
        yield server
    finally:
        if service is not None:
            stop_gateway(service)
        problems = [
            line.strip()
            for line in _log(folder).splitlines()
            if re.search(r"\b(ERROR|CRITICAL)\b|^\w+(Error|Exception)\b", line)
        ]
        if problems:
            print("the server logged:", *problems[:20], sep="\n  ")
        if service is not None:
            server.log_problems[:] = problems[:50]
        shutil.rmtree(folder, ignore_errors=True)


def _log(folder: Path) -> str:
    try:
        return (folder / "server.log").read_text(errors="replace")
    except OSError:
        return ""


# ------------------------------------------------------------------------ enrolment, data


def _person(path: Path) -> str:
    return path.stem.rsplit("_", 1)[0]


def gallery_people() -> dict[str, list[Path]]:
    people: dict[str, list[Path]] = {}
    for p in sorted((DATA / "gallery").glob("*.jpg")):
        people.setdefault(_person(p), []).append(p)
    return people


def enrol(
    client: httpx.Client, people: dict[str, list[Path]]
) -> tuple[dict[str, str], dict[str, Any]]:
    """One subject per person with its first ENROL_IMAGES images; name -> subject id."""
    ids: dict[str, str] = {}
    enrolled: dict[str, int] = {}
    start = time.perf_counter()
    for name, paths in people.items():
        r = client.post("/v1/subjects", json={"name": name.replace("_", " ")})
        r.raise_for_status()
        sid = r.json()["id"]
        files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths[:ENROL_IMAGES]]
        r = client.post(f"/v1/subjects/{sid}/faces", files=files, data={"face": "primary"})
        r.raise_for_status()
        ids[name] = sid
        enrolled[name] = int(r.json()["enrolled"])
    return ids, {
        "subjects": len(ids),
        "images_per_subject": ENROL_IMAGES,
        "faces_enrolled": sum(enrolled.values()),
        "failed": {k: ENROL_IMAGES - v for k, v in enrolled.items() if v < ENROL_IMAGES},
        "seconds": round(time.perf_counter() - start, 2),
    }


def verify_probes(people: dict[str, list[Path]], ids: dict[str, str]) -> list[Probe]:
    """Alternately a genuine claim (a held-out image of the person) and an impostor claim
    (the same image claimed as the next person)."""
    names = list(people)
    out = []
    for k in range(max(len(ps) for ps in people.values()) - ENROL_IMAGES):
        for i, name in enumerate(names):
            held_out = people[name][ENROL_IMAGES:]
            if k >= len(held_out):
                continue
            path = str(held_out[k])
            out.append(Probe(path, ids[name], ids[name]))
            out.append(Probe(path, ids[names[(i + 1) % len(names)]], None))
    return out


def identify_probes(people: dict[str, list[Path]], ids: dict[str, str]) -> list[Probe]:
    """Held-out images of enrolled people interleaved with LFW images of people not
    enrolled."""
    known = [Probe(str(p), None, ids[n]) for n, ps in people.items() for p in ps[ENROL_IMAGES:]]
    strangers = [
        Probe(str(p), None, None)
        for p in sorted((DATA / "lfw").glob("*.jpg"))
        if _person(p) not in people
    ]
    out = []
    for i in range(max(len(known), len(strangers))):
        out += [x[i] for x in (known, strangers) if i < len(x)]
    return out


# ------------------------------------------------------------------------------- metrics


def read_metrics(client: httpx.Client) -> dict[str, float]:
    """The micro-batch histogram's _sum and _count (0 when nothing was observed yet)."""
    text = client.get("/metrics").text
    out = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f"{BATCH_METRIC}_{part} "):
                out[part] = float(line.split()[1])
    return out


# --------------------------------------------------------------- the client (own process)


def load_run(
    url: str,
    api_key: str,
    endpoint: str,
    probes: list[Probe],
    concurrency: int,
    duration: float,
    max_requests: int,
    timeout: float,
) -> dict[str, Any]:
    """Run in the client process: ``concurrency`` workers, each one request at a time."""
    return asyncio.run(
        _load(url, api_key, endpoint, probes, concurrency, duration, max_requests, timeout)
    )


async def _load(
    url: str,
    api_key: str,
    endpoint: str,
    probes: list[Probe],
    concurrency: int,
    duration: float,
    max_requests: int,
    timeout: float,
) -> dict[str, Any]:
    images = {p.path: Path(p.path).read_bytes() for p in probes}
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    checks: Counter[str] = Counter()
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers={"X-API-Key": api_key}, limits=limits, timeout=timeout
    ) as client:
        start = time.perf_counter()
        deadline = start + duration

        async def worker() -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                probe = probes[issued % len(probes)]
                issued += 1
                files = {"image": (Path(probe.path).name, images[probe.path], "image/jpeg")}
                data = {"subject_id": probe.subject_id} if probe.subject_id else None
                t = time.perf_counter()
                try:
                    r = await client.post(f"/v1/{endpoint}", files=files, data=data)
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - t)
                statuses[str(r.status_code)] += 1
                body = _json(r)
                if r.status_code >= 400:
                    codes[str(body.get("error", {}).get("code", "?"))] += 1
                else:
                    checks[_check(endpoint, probe, body)] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ok = sum(n for s, n in statuses.items() if s.startswith("2"))
    done = len(latencies)
    return {
        "requests": issued,
        "responses": done,
        "ok": ok,
        "wall_seconds": round(wall, 3),
        "stopped_by": "max_requests" if issued >= max_requests else "duration",
        "requests_per_second": round(done / wall, 2),
        "ok_per_second": round(ok / wall, 2),
        "latency_ms": percentiles(latencies, ("p50", "p95", "p99", "max", "mean"), digits=1),
        "status_counts": dict(sorted(statuses.items())),
        "errors": sum(n for s, n in statuses.items() if not s.startswith("2")),
        "error_codes": dict(sorted(codes.items())),
        "answers": dict(sorted(checks.items())),
    }


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _check(endpoint: str, probe: Probe, body: dict[str, Any]) -> str:
    """A label for the answer, so a run that is fast but wrong shows it."""
    if endpoint == "verify":
        kind = "genuine" if probe.expect else "impostor"
        right = bool(body.get("match")) == (probe.expect is not None)
        return f"{kind}_{'right' if right else 'wrong'}"
    matches = {(f.get("match") or {}).get("subject_id") for f in body.get("faces", [])} - {None}
    if probe.expect is not None:
        return "enrolled_right" if probe.expect in matches else "enrolled_wrong"
    return "stranger_rejected" if not matches else "stranger_matched"


# -------------------------------------------------------------------------------- output


def plot(result: dict[str, Any], path: Path) -> None:
    """Left: throughput vs concurrency; right: p50/p95/p99 latency vs concurrency."""
    with figure(path, 1, 2, figsize=(11, 4.3), dpi=110) as (fig, (a, b)):
        colours = {"verify": "tab:blue", "identify": "tab:orange"}
        styles = {"p50": "-", "p95": "--", "p99": ":"}
        for endpoint, runs in result["results"].items():
            xs = [int(c) for c in runs]
            c = colours.get(endpoint)
            a.plot(
                xs, [r["requests_per_second"] for r in runs.values()], "o-", color=c, label=endpoint
            )
            for x, r in zip(xs, runs.values(), strict=True):
                if r["mean_batch_images"] is not None:
                    a.annotate(
                        f"batch {r['mean_batch_images']:.1f}",
                        (x, r["requests_per_second"]),
                        textcoords="offset points",
                        xytext=(4, -12 if endpoint == "identify" else 6),
                        fontsize=7,
                        color=c,
                    )
            for q, ls in styles.items():
                b.plot(
                    xs,
                    [r["latency_ms"][q] for r in runs.values()],
                    ls,
                    marker="o",
                    color=c,
                    label=f"{endpoint} {q}",
                )
        for ax in (a, b):
            ax.set_xscale("log", base=2)
            ax.set_xticks(result["settings"]["concurrency"])
            ax.set_xticklabels([str(c) for c in result["settings"]["concurrency"]])
            ax.set_xlabel("concurrent clients")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        a.set_ylabel("responses / s")
        top = max(
            r["requests_per_second"] for runs in result["results"].values() for r in runs.values()
        )
        a.set_ylim(0, 1.15 * top)
        b.set_ylabel("latency (ms)")
        b.set_yscale("log")
        m = result["machine"]
        fig.suptitle(
            f"facerec gateway on loopback ({m['cpu_count']} cores shared by client and server, "
            f"{result['settings']['server']} server)"
        )


def table(result: dict[str, Any]) -> str:
    head = f"{'endpoint':<9} {'conc':>4} {'req':>5} {'req/s':>7} {'p50':>7} {'p95':>7} "
    head += f"{'p99':>7} {'max':>7} {'batch':>5}  errors"
    lines = [head + "   (latency in ms)"]
    for endpoint, runs in result["results"].items():
        for c, r in runs.items():
            q = r["latency_ms"]
            batch = r["mean_batch_images"]
            errors = ", ".join(
                f"{s}: {n}" for s, n in r["status_counts"].items() if not s.startswith("2")
            )
            lines.append(
                f"{endpoint:<9} {c:>4} {r['responses']:>5} {r['requests_per_second']:>7.1f} "
                f"{q['p50']:>7.1f} {q['p95']:>7.1f} {q['p99']:>7.1f} {q['max']:>7.1f} "
                f"{'-' if batch is None else f'{batch:.2f}':>5}  {errors or '-'}"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- main


def run_all(args: argparse.Namespace, url: str, api_key: str) -> dict[str, Any]:
    from tqdm import tqdm

    people = gallery_people()
    client = httpx.Client(base_url=url, headers={"X-API-Key": api_key}, timeout=args.timeout)
    ids, enrolment = enrol(client, people)
    probes = {"verify": verify_probes(people, ids), "identify": identify_probes(people, ids)}
    results: dict[str, dict[str, Any]] = {e: {} for e in args.endpoints}
    ctx = multiprocessing.get_context("spawn")
    steps = [(e, c) for e in args.endpoints for c in args.concurrency]
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            for endpoint in args.endpoints:  # warm-up: first calls, connections
                n = args.warmup
                pool.submit(
                    load_run, url, api_key, endpoint, probes[endpoint], 1, 60, n, args.timeout
                ).result()
            for endpoint, conc in tqdm(steps, desc="runs", disable=args.no_progress):
                before = read_metrics(client)
                row = pool.submit(
                    load_run,
                    url,
                    api_key,
                    endpoint,
                    probes[endpoint],
                    conc,
                    args.duration,
                    args.max_requests,
                    args.timeout,
                ).result()
                after = read_metrics(client)
                calls = after["count"] - before["count"]
                row["pipeline_calls"] = int(calls)
                row["mean_batch_images"] = (
                    round((after["sum"] - before["sum"]) / calls, 3) if calls else None
                )
                results[endpoint][str(conc)] = row
    finally:
        if args.url:  # leave an external service as we found it
            for sid in ids.values():
                client.delete(f"/v1/subjects/{sid}")
        client.close()
    return record(
        settings={
            "server": "external" if args.url else "spawned",
            "url": url if args.url else "http://127.0.0.1:<free port>",
            "index_type": None if args.url else "FLAT",
            "backend": None if args.url else os.environ.get("FACEREC_BACKEND", "local"),
            "concurrency": args.concurrency,
            "duration_seconds": args.duration,
            "max_requests": args.max_requests,
            "warmup_requests": args.warmup,
            "timeout_seconds": args.timeout,
            "client": "one separate process, httpx.AsyncClient, one request per client at a time",
            "probes": {e: len(p) for e, p in probes.items()},
        },
        enrolment=enrolment,
        probe_examples={e: [asdict(p) for p in ps[:2]] for e, ps in probes.items()},
        results=results,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="an already running gateway (else spawn one)")
    parser.add_argument("--api-key", default=None, help="a key allowed to enrol (with --url)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--endpoints", nargs="+", choices=ENDPOINTS, default=list(ENDPOINTS))
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument("--max-requests", type=int, default=300, help="requests per run (300)")
    parser.add_argument("--warmup", type=int, default=4, help="requests per endpoint first (4)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per request, seconds (60)")
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", type=Path, default=Path("perf/results"))
    args = parser.parse_args()
    if bool(args.url) != bool(args.api_key):
        parser.error("--url and --api-key go together")
    args.concurrency = sorted(set(args.concurrency))

    if args.url:
        result = run_all(args, args.url.rstrip("/"), args.api_key)
    else:
        with spawned_server(args.startup_timeout) as server:
            result = run_all(args, server.url, server.api_key)
        result["server_log_problems"] = server.log_problems
    write_json(args.out / "gateway_load.json", result)
    plot(result, args.out / "gateway_load.png")
    print(table(result))
    print(f"wrote {args.out / 'gateway_load.json'} and {args.out / 'gateway_load.png'}")


if __name__ == "__main__":
    main()
