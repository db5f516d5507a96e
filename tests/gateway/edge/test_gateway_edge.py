"""The edge of the real service (``facerec serve`` on loopback), spoken to over raw sockets
where HTTP clients would hide what matters: bodies refused before they are read, limits
counted on chunked bodies, slow heads and bodies cut, the connection cap, keep-alive
limits, request ids and the security headers of every response."""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from devkit.servers import Service
from tests.support.data import GALLERY
from tests.support.gateway import running_gateway

pytestmark = pytest.mark.integration

HEAD_TIMEOUT = 2  # FACEREC_HEADER_TIMEOUT_S of the service under test
BODY_TIMEOUT = 2
MAX_CONNECTIONS = 40
PER_CLIENT = 25  # FACEREC_MAX_CONNECTIONS_PER_CLIENT
MAX_JSON = 65536
MAX_UPLOAD = 300_000
ENV = {
    "FACEREC_HEADER_TIMEOUT_S": str(HEAD_TIMEOUT),
    "FACEREC_BODY_TIMEOUT_S": str(BODY_TIMEOUT),
    "FACEREC_BODY_MIN_RATE": "1024",
    "FACEREC_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "FACEREC_MAX_CONNECTIONS_PER_CLIENT": str(PER_CLIENT),
    "FACEREC_KEEPALIVE_MAX_REQUESTS": "3",
    "FACEREC_MAX_JSON_BYTES": str(MAX_JSON),
    "FACEREC_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_gateway(tmp_path_factory.mktemp("edge") / "data", env=ENV) as svc:
        yield svc


def port_of(service: Service) -> int:
    return int(service.url.rsplit(":", 1)[1])


def connect(service: Service, timeout: float = 15, source: str = "127.0.0.1") -> socket.socket:
    """A connection from ``source`` (any 127.0.0.0/8 address is this machine's)."""
    s = socket.create_connection(("127.0.0.1", port_of(service)), source_address=(source, 0))
    s.settimeout(timeout)
    return s


def read_until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def status_of(response: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", response)
    assert match, response[:200]
    return int(match.group(1))


def header(response: bytes, name: str) -> str | None:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


MULTIPART = {"Content-Type": "multipart/form-data; boundary=zz", "Transfer-Encoding": "chunked"}


# -- bodies: refused before they are read, counted as they arrive ------------------------
@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/identify", MULTIPART),
        ("/v1/jobs", MULTIPART),
        ("/v1/subjects", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}),
    ],
)
@pytest.mark.parametrize("key", [None, "frk_0123456789ab_wrongsecret"])
def test_a_request_without_a_valid_key_is_refused_before_its_body_is_read(
    service: Service, path: str, headers: dict[str, str], key: str | None
) -> None:
    """One chunk of a body that never ends: the 401 comes anyway, so the server did not
    wait for (or read) the rest, and it closes the connection."""
    with connect(service) as s:
        auth = {"X-API-Key": key} if key else {}
        s.sendall(request_head("POST", path, {**headers, **auth}))
        s.sendall(chunk(b"a" * 4096))  # the body goes on, as far as the server knows
        response = read_until_closed(s)
    assert status_of(response) == 401
    assert header(response, "connection") == "close"
    expected = b'"missing_api_key"' if key is None else b'"invalid_api_key"'
    assert expected in response


def test_content_length_over_the_route_limit_is_refused_at_once(service: Service) -> None:
    with connect(service) as s:
        s.sendall(
            request_head(
                "POST",
                "/v1/subjects",
                {
                    "X-API-Key": service.key,
                    "Content-Type": "application/json",
                    "Content-Length": str(MAX_JSON + 1),
                },
            )
        )  # and no body at all
        response = read_until_closed(s)
    assert status_of(response) == 413 and b'"payload_too_large"' in response


PART = b'--zz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'


@pytest.mark.parametrize(
    ("path", "headers", "start", "limit"),
    [
        (
            "/v1/subjects",
            {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            b'{"name": "',
            MAX_JSON,
        ),
        ("/v1/identify", MULTIPART, PART, MAX_UPLOAD + 64 * 1024),
    ],
)
def test_a_chunked_body_is_counted_as_it_arrives(
    service: Service, path: str, headers: dict[str, str], start: bytes, limit: int
) -> None:
    """Chunks past the route's limit, with no end chunk: 413 without waiting for an end
    (the old check looked at Content-Length only, and read chunked bodies whole)."""
    with connect(service) as s:
        s.sendall(request_head("POST", path, {**headers, "X-API-Key": service.key}))
        s.sendall(chunk(start))
        sent, piece = len(start), b"x" * 16384
        while sent <= limit:
            s.sendall(chunk(piece))
            sent += len(piece)
        response = read_until_closed(s)
    assert status_of(response) == 413, response[:300]
    assert b'"payload_too_large"' in response
    assert header(response, "connection") == "close"


def test_a_chunked_body_within_the_limit_is_served(service: Service) -> None:
    body = b'{"name": "chunked"}'
    with connect(service) as s:
        s.sendall(
            request_head(
                "POST",
                "/v1/subjects",
                {
                    "X-API-Key": service.key,
                    "Content-Type": "application/json",
                    "Transfer-Encoding": "chunked",
                    "Connection": "close",
                },
            )
        )
        s.sendall(chunk(body[:7]) + chunk(body[7:]) + b"0\r\n\r\n")
        response = read_until_closed(s)
    assert status_of(response) == 201 and b'"chunked"' in response


# -- slow clients -----------------------------------------------------------------------
def test_a_connection_that_sends_nothing_is_closed(service: Service) -> None:
    with connect(service) as s:
        response = read_until_closed(s)  # the socket timeout (15 s) would fail this
    assert status_of(response) == 408


def test_a_partial_head_is_closed_within_the_timeout(service: Service) -> None:
    with connect(service) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        response = read_until_closed(s)
    assert status_of(response) == 408 and b'"request_timeout"' in response


def trickle(s: socket.socket, data: bytes, every: float, stop: threading.Event) -> int:
    """Send ``data`` a byte at a time until the server closes; returns the bytes sent."""
    sent = 0
    for byte in data:
        if stop.is_set():
            break
        try:
            s.sendall(bytes([byte]))
        except OSError:
            break
        sent += 1
        time.sleep(every)
    return sent


def test_a_trickled_head_does_not_extend_its_timeout(service: Service) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"p" * 200 + b"\r\n\r\n"
    stop = threading.Event()
    with connect(service) as s:
        sender = threading.Thread(target=trickle, args=(s, head, 0.2, stop))
        sender.start()
        response = read_until_closed(s)
        stop.set()
        sender.join()
    assert status_of(response) == 408  # 1 byte per 0.2 s would take 45 s to finish


def test_a_trickled_body_is_cut(service: Service) -> None:
    """1,000 declared bytes at 5 bytes/s (far below FACEREC_BODY_MIN_RATE): cut after
    about FACEREC_BODY_TIMEOUT_S with 408, not after the 200 s it would take."""
    stop = threading.Event()
    with connect(service) as s:
        s.sendall(
            request_head(
                "POST",
                "/v1/subjects",
                {
                    "X-API-Key": service.key,
                    "Content-Type": "application/json",
                    "Content-Length": "1000",
                },
            )
        )
        sender = threading.Thread(target=trickle, args=(s, b" " * 1000, 0.2, stop))
        sender.start()
        response = read_until_closed(s)
        stop.set()
        sender.join()
    assert status_of(response) == 408


def test_slow_clients_do_not_stop_others_from_being_served(service: Service) -> None:
    """Twenty connections holding half a head each: other clients are served meanwhile,
    and the slow ones are all closed by the server."""
    slow = []
    for _ in range(20):
        s = connect(service)
        s.sendall(b"POST /v1/subjects HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        slow.append(s)
    try:
        for _ in range(5):
            r = httpx.get(f"{service.url}/healthz", timeout=5)
            assert r.status_code == 200
        closed = [status_of(read_until_closed(s)) for s in slow]
        assert closed == [408] * len(slow)
    finally:
        for s in slow:
            s.close()


def test_connections_over_the_cap_are_refused_and_room_comes_back(service: Service) -> None:
    half = MAX_CONNECTIONS // 2  # from two addresses, each within its share
    held = [connect(service, source=f"127.0.0.{2 + i // half}") for i in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)  # let the server accept them all
        with connect(service) as s:
            response = read_until_closed(s)
        assert status_of(response) == 503 and b'"too_many_connections"' in response
        assert header(response, "retry-after") == "1"
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)
    assert httpx.get(f"{service.url}/healthz", timeout=5).status_code == 200


def test_one_client_cannot_keep_the_connection_cap_full(service: Service) -> None:
    """Issue 19, high 2: one address holding idle connections, reopening each one the
    server cuts, gets at most its share; another client is served throughout."""
    stop = threading.Event()
    refused: list[bytes] = []

    def squat() -> None:
        held: list[socket.socket] = []
        while not stop.is_set():
            held = [s for s in held if s.fileno() != -1]
            while len(held) < MAX_CONNECTIONS and not stop.is_set():
                s = connect(service, timeout=HEAD_TIMEOUT + 3)
                s.setblocking(False)
                try:  # a refused one is answered and closed at once
                    time.sleep(0.01)
                    answer = s.recv(4096)
                    refused.append(answer)
                    s.close()
                    break
                except BlockingIOError:
                    held.append(s)
            for s in list(held):
                try:
                    if s.recv(4096) == b"":  # cut by the head timeout: reopen
                        s.close()
                except BlockingIOError:
                    pass
                except OSError:
                    s.close()
            time.sleep(0.05)
        for s in held:
            s.close()

    attacker = threading.Thread(target=squat)
    attacker.start()
    try:
        served = []
        transport = httpx.HTTPTransport(local_address="127.0.0.9")
        with httpx.Client(transport=transport, timeout=5) as client:
            deadline = time.monotonic() + 2.5 * HEAD_TIMEOUT  # past a round of cuts
            while time.monotonic() < deadline:
                served.append(client.get(f"{service.url}/healthz").status_code)
                time.sleep(0.2)
    finally:
        stop.set()
        attacker.join()
    assert served and set(served) == {200}
    assert refused and all(
        status_of(r) == 503 and b'"too_many_client_connections"' in r for r in refused
    )


def test_a_connection_serves_a_bounded_number_of_requests(service: Service) -> None:
    with connect(service) as s:
        for _ in range(4):  # the fourth is never answered: the third closed the connection
            try:
                s.sendall(request_head("GET", "/healthz", {}))
            except OSError:
                break
            time.sleep(0.2)
        responses = read_until_closed(s)
    parts = responses.split(b"HTTP/1.1 ")[1:]
    assert len(parts) == 3 and all(p.startswith(b"200") for p in parts)
    assert b"connection: close" in parts[-1] and b"connection: close" not in parts[0]


# -- request ids and headers ------------------------------------------------------------
def test_request_ids_are_validated_and_echoed(service: Service) -> None:
    with service.client() as c:
        r = c.get("/v1/subjects", headers={"X-Request-ID": "trace-42.a:b_c"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "trace-42.a:b_c"
        for bad in ("x" * 129, "has space", "semi;colon", "<script>"):
            r = c.get("/v1/subjects", headers={"X-Request-ID": bad})
            assert r.status_code == 400, bad
            assert r.json()["error"]["code"] == "invalid_request_id"
            assert r.headers["x-request-id"] != bad  # a fresh one, never the bad one
        assert len(c.get("/healthz").headers["x-request-id"]) == 32  # made when absent


def inline_script_hashes(html: str) -> set[str]:
    return {
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in re.findall(r"<script>(.*?)</script>", html, re.S)
    }


def test_pages_send_a_content_security_policy(service: Service) -> None:
    for path in ("/", "/docs"):
        r = httpx.get(service.url + path, timeout=10)
        assert r.status_code == 200
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        script_src = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
        assert "'unsafe-inline'" not in script_src and "http" not in script_src
        hashes = inline_script_hashes(r.text)
        assert hashes and all(h in script_src for h in hashes)
    api = httpx.get(f"{service.url}/healthz", timeout=10)
    assert api.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert api.headers["x-content-type-options"] == "nosniff"


def test_docs_use_only_local_files(service: Service) -> None:
    html = httpx.get(f"{service.url}/docs", timeout=10).text
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls and all(u.startswith("/docs/assets/") for u in urls), urls
    assert "cdn" not in html
    for url in urls:
        r = httpx.get(service.url + url, timeout=10)
        assert r.status_code == 200 and len(r.content) > 100
        assert r.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{service.url}/docs/assets/../../etc/passwd", timeout=10).status_code == 404
    assert httpx.get(f"{service.url}/docs/assets/index.html", timeout=10).status_code == 404


def test_an_enrolment_still_works_through_the_edge(service: Service) -> None:
    image = sorted(GALLERY.glob("*.jpg"))[0]
    with service.client() as c:
        sid = c.post("/v1/subjects", json={"name": "edge"}).json()["id"]
        r = c.post(
            f"/v1/subjects/{sid}/faces",
            data={"face": "primary"},
            files={"images": (image.name, image.read_bytes(), "image/jpeg")},
        )
        assert r.status_code == 200, r.text
