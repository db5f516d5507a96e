"""A relay between FFmpeg and a stream's source that refuses redirects.

The allow-list (:mod:`gateway.service.sources`) checks the URL a stream is created with,
but FFmpeg follows what the source answers on its own: an HTTP ``302``, an RTSP ``302``
(FFmpeg reconnects to the ``Location``, on every reconnect), an HLS playlist whose
segments lie on other hosts. FFmpeg 5.1 (the pinned OpenCV's) has no option to stop any
of them. So FFmpeg never talks to the source directly: it opens a plain-text URL on a
loopback port of this relay, and the relay

- connects to the source itself, each time FFmpeg connects, after checking the source's
  host against the allow-list again (with TLS and certificate checks for ``https`` and
  ``rtsps``: the relay terminates TLS, so it can read what the source answers);
- reads every response the source sends before FFmpeg sees it: a redirect (any ``3xx``)
  closes both connections, as does an HTTP answer that is a playlist (HLS: an
  ``mpegurl`` content type, or a body beginning ``#EXTM3U``); RTSP messages are followed
  through the whole session (interleaved ``$`` packets are passed on untouched);
- says why in :attr:`SourceRelay.refused`, which the stream's status shows.

FFmpeg never learns another address, so there is no hop left to check.
"""

from __future__ import annotations

import contextlib
import logging
import select
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322}
MAX_HEAD = 64 * 1024  # one response head; more is refused
TIMEOUT_S = 15.0  # connecting, and waiting for a response head
PLAYLIST_TYPES = ("mpegurl", "m3u")  # application/vnd.apple.mpegurl, audio/x-mpegurl ...
PLAYLIST_MAGIC = b"#EXTM3U"


class Refused(Exception):  # noqa: N818 (a verdict on what the source answered)
    """The source answered something the relay does not pass on."""


class SourceRelay:
    """One stream's relay (see the module docstring). ``allowed(host, port)`` is the
    allow-list check, run for every connection; ``tls`` checks the certificates of
    ``https`` and ``rtsps`` sources. :attr:`url` is what FFmpeg opens."""

    def __init__(
        self,
        uri: str,
        allowed: Callable[[str, int | None], bool],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(uri)
        self.scheme = parts.scheme.lower()
        self.host = parts.hostname or ""
        self.port = parts.port or DEFAULT_PORTS[self.scheme]
        self.rtsp = self.scheme.startswith("rtsp")
        self.tls = self.scheme in ("https", "rtsps")
        self.allowed = allowed
        self.context = tls or ssl.create_default_context()
        self.authority = parts.netloc.rpartition("@")[2]  # the Host an HTTP source expects
        self.refused: str | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.5)
        userinfo = parts.netloc.rpartition("@")[0]
        local = f"127.0.0.1:{self._listener.getsockname()[1]}"
        netloc = f"{userinfo}@{local}" if userinfo else local
        plain = "rtsp" if self.rtsp else "http"
        self.url = urlunsplit((plain, netloc, parts.path, parts.query, parts.fragment))
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="source relay", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for s in self._sockets:
                _hang_up(s, close=False)
        self._thread.join(timeout=5)
        self._listener.close()

    # -- connections --------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(
                target=self._serve, args=(client,), name="source relay", daemon=True
            ).start()

    def _track(self, s: socket.socket, keep: bool) -> None:
        with self._lock:
            if keep:
                self._sockets.add(s)
            else:
                self._sockets.discard(s)

    def _serve(self, client: socket.socket) -> None:
        """One FFmpeg connection, both directions in this one thread (an SSL connection
        must not be read and written from two threads at once)."""
        upstream: socket.socket | None = None
        self._track(client, True)
        try:
            if not self.allowed(self.host, self.port):
                raise Refused(f"the host {self.host} is no longer in the allow-list")
            upstream = socket.create_connection((self.host, self.port), timeout=TIMEOUT_S)
            if self.tls:
                upstream = self.context.wrap_socket(upstream, server_hostname=self.host)
            self._pump(client, upstream)
        except Refused as why:
            self.refused = str(why)
            log.warning("stream source %s refused: %s", self.host, why)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.info("stream source %s: %s", self.host, exc)
        finally:
            self._track(client, False)
            _hang_up(client)
            if upstream is not None:
                with contextlib.suppress(OSError, ssl.SSLError):
                    upstream.close()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        """Pass FFmpeg's bytes on (an HTTP request's ``Host`` set to the source's own, since
        FFmpeg addressed the relay) and the source's through :class:`_Answers`, until
        either side closes; the first answer must begin within ``TIMEOUT_S``."""
        answers = _Answers(self.rtsp)
        first_request = not self.rtsp
        deadline = time.monotonic() + TIMEOUT_S
        upstream.setblocking(False)
        client.setblocking(False)
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ)
            selector.register(upstream, selectors.EVENT_READ)
            while True:
                pending = isinstance(upstream, ssl.SSLSocket) and upstream.pending() > 0
                wait = 0.0 if pending else (1.0 if answers.started else deadline - time.monotonic())
                if wait < 0:
                    raise OSError("the source did not answer in time")
                ready = {key.fileobj for key, _ in selector.select(wait)}
                if pending:
                    ready.add(upstream)
                if client in ready:
                    data = _recv(client)
                    if data is None:
                        pass
                    elif not data:
                        return
                    else:
                        if first_request:
                            data, first_request = self._with_host(data), False
                        _send(upstream, data)
                if upstream in ready:
                    data = _recv(upstream)
                    if data is None:
                        continue
                    if not data:
                        _send(client, answers.feed(b"", end=True))
                        return
                    _send(client, answers.feed(data))
                if self._closed.is_set():
                    return

    def _with_host(self, head: bytes) -> bytes:
        lines = head.split(b"\r\n")
        for i, line in enumerate(lines[1:], 1):
            if not line:
                break
            if line.lower().startswith(b"host:"):
                lines[i] = b"Host: " + self.authority.encode()
        return b"\r\n".join(lines)


def _recv(s: socket.socket) -> bytes | None:
    """What a non-blocking socket has (b"" when it closed), None when nothing yet."""
    try:
        return s.recv(65536)
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return None


def _send(s: socket.socket, data: bytes) -> None:
    """All of ``data`` on a non-blocking socket (waiting for room as needed)."""
    view = memoryview(data)
    while view:
        try:
            view = view[s.send(view) :]
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            select.select([], [s], [], 1.0)


def _hang_up(s: socket.socket, close: bool = True) -> None:
    """End a plain connection now: ``shutdown`` sends the FIN and wakes a thread waiting
    on it (``close`` alone does neither while another thread uses it)."""
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    if close:
        with contextlib.suppress(OSError):
            s.close()


class _Answers:
    """What the source sends, checked as it arrives; :meth:`feed` returns the bytes that
    may go on to FFmpeg, or raises :class:`Refused`.

    HTTP: the first response's head (no ``3xx``, no playlist type) and the first bytes
    of its body (no ``#EXTM3U``), then the rest as it comes. RTSP: every message, for the
    whole session: interleaved ``$`` packets pass as they are, each response's head is
    read whole (no ``3xx``) and passes with its body."""

    def __init__(self, rtsp: bool) -> None:
        self.rtsp = rtsp
        self.buffer = b""
        self.started = False  # the first answer passed its checks
        self.through = False  # HTTP: checked; the rest passes as it comes

    def feed(self, data: bytes, end: bool = False) -> bytes:
        if self.through:
            return data
        self.buffer += data
        if self.rtsp:
            return self._rtsp(end)
        return self._http(end)

    def _http(self, end: bool) -> bytes:
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self.buffer) > MAX_HEAD:
                raise Refused(f"a response head over {MAX_HEAD} bytes")
            return b""
        status, headers = _parse_head(self.buffer[: head_end + 4], b"HTTP/")
        if 300 <= status < 400:
            where = headers.get("location", "?")
            raise Refused(f"the source answered {status} to {where}: redirects are refused")
        kind = headers.get("content-type", "").lower()
        if any(t in kind for t in PLAYLIST_TYPES):
            raise Refused(f"the source answered a playlist ({kind}): playlists are refused")
        body = self.buffer[head_end + 4 :]
        if len(body) < len(PLAYLIST_MAGIC) and not end:
            return b""
        if body.startswith(PLAYLIST_MAGIC):
            raise Refused("the source answered a playlist (#EXTM3U): playlists are refused")
        out, self.buffer = self.buffer, b""
        self.started = self.through = True
        return out

    def _rtsp(self, end: bool) -> bytes:
        out = bytearray()
        while self.buffer:
            if self.buffer[:1] == b"$":  # an interleaved packet: channel, length, data
                if len(self.buffer) < 4:
                    break
                size = 4 + int.from_bytes(self.buffer[2:4], "big")
                if len(self.buffer) < size:
                    break
                out += self.buffer[:size]
                self.buffer = self.buffer[size:]
                continue
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                if len(self.buffer) > MAX_HEAD:
                    raise Refused(f"a response head over {MAX_HEAD} bytes")
                break
            status, headers = _parse_head(self.buffer[: head_end + 4], b"RTSP/")
            if 300 <= status < 400:
                where = headers.get("location", "?")
                raise Refused(f"the source answered {status} to {where}: redirects are refused")
            size = head_end + 4 + int(headers.get("content-length", "0") or 0)
            if len(self.buffer) < size:
                break
            out += self.buffer[:size]
            self.buffer = self.buffer[size:]
            self.started = True
        return bytes(out)


def _parse_head(head: bytes, protocol: bytes) -> tuple[int, dict[str, str]]:
    """(status, headers by lowercase name) of a response head; status 0 for a request
    the source sends (RTSP servers may send those too)."""
    lines = head.decode("latin-1").split("\r\n")
    status = 0
    if lines[0].encode("latin-1").startswith(protocol):
        parts = lines[0].split(None, 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


__all__ = ["SourceRelay"]
