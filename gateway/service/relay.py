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
import socket
import ssl
import threading
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322}
MAX_HEAD = 64 * 1024  # one response head; more is refused
TIMEOUT_S = 15.0  # connecting, and waiting for a response head
PLAYLIST_TYPES = ("mpegurl", "m3u")  # application/vnd.apple.mpegurl, audio/x-mpegurl ...


class Refused(Exception):  # noqa: N818 (a verdict on what the source answered)
    """The source answered something the relay does not pass on."""


class SourceRelay:
    """One stream's relay (see the module docstring). ``allowed(host, port)`` is the
    allow-list check, run for every connection. :attr:`url` is what FFmpeg opens."""

    def __init__(self, uri: str, allowed: Callable[[str, int | None], bool]) -> None:
        parts = urlsplit(uri)
        self.scheme = parts.scheme.lower()
        self.host = parts.hostname or ""
        self.port = parts.port or DEFAULT_PORTS[self.scheme]
        self.rtsp = self.scheme.startswith("rtsp")
        self.tls = self.scheme in ("https", "rtsps")
        self.allowed = allowed
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
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
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
        upstream: socket.socket | None = None
        self._track(client, True)
        try:
            if not self.allowed(self.host, self.port):
                raise Refused(f"the host {self.host} is no longer in the allow-list")
            upstream = socket.create_connection((self.host, self.port), timeout=TIMEOUT_S)
            if self.tls:
                context = ssl.create_default_context()
                upstream = context.wrap_socket(upstream, server_hostname=self.host)
            self._track(upstream, True)
            forward = threading.Thread(
                target=self._forward, args=(client, upstream), name="source relay", daemon=True
            )
            forward.start()
            if self.rtsp:
                self._rtsp_answers(upstream, client)
            else:
                self._http_answer(upstream, client)
        except Refused as why:
            self.refused = str(why)
            log.warning("stream source %s refused: %s", self.host, why)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.info("stream source %s: %s", self.host, exc)
        finally:
            for s in (client, upstream):
                if s is not None:
                    self._track(s, False)
                    with contextlib.suppress(OSError):
                        s.close()

    def _forward(self, client: socket.socket, upstream: socket.socket) -> None:
        """What FFmpeg sends, to the source (an HTTP request's ``Host`` set to the
        source's own, since FFmpeg addressed the relay)."""
        first = not self.rtsp
        try:
            while data := client.recv(65536):
                if first:
                    data = self._with_host(data)
                    first = False
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)

    def _with_host(self, head: bytes) -> bytes:
        lines = head.split(b"\r\n")
        for i, line in enumerate(lines[1:], 1):
            if not line:
                break
            if line.lower().startswith(b"host:"):
                lines[i] = b"Host: " + self.authority.encode()
        return b"\r\n".join(lines)

    # -- what the source answers ----------------------------------------------------------
    def _http_answer(self, upstream: socket.socket, client: socket.socket) -> None:
        reader = _Reader(upstream)
        head = reader.head()
        status, headers = _parse_head(head, b"HTTP/")
        if 300 <= status < 400:
            where = headers.get("location", "?")
            raise Refused(f"the source answered {status} to {where}: redirects are refused")
        kind = headers.get("content-type", "").lower()
        if any(t in kind for t in PLAYLIST_TYPES):
            raise Refused(f"the source answered a playlist ({kind}): playlists are refused")
        start = reader.peek(7)
        if start.startswith(b"#EXTM3U"):
            raise Refused("the source answered a playlist (#EXTM3U): playlists are refused")
        client.sendall(head)
        upstream.settimeout(None)
        _pass_on(reader, client)

    def _rtsp_answers(self, upstream: socket.socket, client: socket.socket) -> None:
        reader = _Reader(upstream)
        while True:
            first = reader.peek(1)
            if not first:
                return
            if first == b"$":  # an interleaved packet: channel, 16-bit length, data
                frame = reader.exactly(4)
                client.sendall(frame + reader.exactly(int.from_bytes(frame[2:4], "big")))
                continue
            head = reader.head()
            status, headers = _parse_head(head, b"RTSP/")
            if 300 <= status < 400:
                where = headers.get("location", "?")
                raise Refused(f"the source answered {status} to {where}: redirects are refused")
            body = reader.exactly(int(headers.get("content-length", "0") or 0))
            client.sendall(head + body)
            upstream.settimeout(None)  # once playing, the read timeout is FFmpeg's


class _Reader:
    """Buffered reads from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def peek(self, n: int) -> bytes:
        while len(self.buffer) < n and self._fill():
            pass
        return self.buffer[:n]

    def exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise ValueError("the source closed in the middle of a message")
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def head(self) -> bytes:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > MAX_HEAD:
                raise Refused(f"a response head over {MAX_HEAD} bytes")
            if not self._fill():
                raise ValueError("the source closed before its answer's head ended")
        return self.exactly(end + 4)

    def drain(self) -> bytes:
        out, self.buffer = self.buffer, b""
        return out


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


def _pass_on(reader: _Reader, client: socket.socket) -> None:
    """The rest of an HTTP answer, as it comes."""
    pending = reader.drain()
    if pending:
        client.sendall(pending)
    while data := reader.sock.recv(65536):
        client.sendall(data)


__all__ = ["SourceRelay"]
