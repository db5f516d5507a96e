"""Real streaming servers for the video tests, in the standard library: RTSP with RTP/JPEG
(RFC 2326, RFC 2435) interleaved over the RTSP TCP connection, and HTTP MJPEG
(``multipart/x-mixed-replace``). Both serve a list of frames in a loop at a given rate,
and can be stopped and started again on the same port (a camera that goes away)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from devkit.servers import free_port


def encode_jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    """Baseline 4:2:0 JPEG with the standard Huffman tables (what RFC 2435 carries)."""
    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _jpeg_parts(jpeg: bytes) -> tuple[bytes, bytes]:
    """(the two 64-byte quantisation tables, the entropy-coded scan) of a baseline JPEG."""
    tables: list[bytes] = []
    pos = 2
    while pos < len(jpeg):
        marker, length = jpeg[pos + 1], struct.unpack(">H", jpeg[pos + 2 : pos + 4])[0]
        segment = jpeg[pos + 4 : pos + 2 + length]
        if marker == 0xDB:  # DQT: one or more (precision/id, 64 bytes) tables
            for k in range(0, len(segment), 65):
                tables.append(segment[k + 1 : k + 65])
        elif marker == 0xDA:  # SOS: the scan runs to the EOI marker
            start = pos + 2 + length
            return b"".join(tables[:2]), jpeg[start : jpeg.rindex(b"\xff\xd9")]
        pos += 2 + length
    raise ValueError("no scan in JPEG")


class _Server:
    """A listening socket on loopback, one thread per client, frames sent at ``fps``."""

    def __init__(
        self,
        frames: Sequence[np.ndarray],
        fps: float,
        port: int | None = None,
        host: str = "127.0.0.1",
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.host = host
        self.tls = None  # a server-side TLS context: https:// and rtsps:// (cert, key)
        if tls is not None:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(*tls)
        self.jpegs = [encode_jpeg(f) for f in frames]
        self.height, self.width = frames[0].shape[:2]
        self.fps = fps
        self.port = port or free_port()
        self.clients = 0  # connections accepted so far
        self._sock: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(8)
        sock.settimeout(0.2)
        self._sock = sock
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads = [t]

    def stop(self) -> None:
        """Close the listener and every client connection (the camera goes away)."""
        self._stop.set()
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._conns.clear()
        for t in self._threads:
            t.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.clients += 1
            self._conns.append(conn)
            t = threading.Thread(target=self._serve_safely, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve_safely(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self._serve(conn)
        except OSError:
            pass  # the client went away, or stop() closed the connection
        finally:
            conn.close()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _frames(self) -> Iterator[tuple[int, bytes]]:
        """(frame number, JPEG) at ``fps`` in a loop until stopped."""
        start = time.monotonic()
        n = 0
        while not self._stop.is_set():
            delay = start + n / self.fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield n, self.jpegs[n % len(self.jpegs)]
            n += 1


class RtspServer(_Server):
    """``rtsp://127.0.0.1:PORT/stream``: RTP/JPEG over the RTSP connection (TCP only; a
    client asking for UDP gets 461, as a TCP-only camera answers)."""

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.port}/stream"

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        session = "12345678"
        while not self._stop.is_set():
            line = reader.readline()
            if not line:
                return
            request = line.decode().split()
            headers: dict[str, str] = {}
            while (h := reader.readline().decode()) not in ("\r\n", "\n", ""):
                key, _, value = h.partition(":")
                headers[key.strip().lower()] = value.strip()
            method, url = request[0], request[1]
            reply = [f"CSeq: {headers.get('cseq', '0')}"]
            body = b""
            status = "200 OK"
            if method == "OPTIONS":
                reply.append("Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN")
            elif method == "DESCRIBE":
                body = (
                    "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=test\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
                    f"m=video 0 RTP/AVP 26\r\na=rtpmap:26 JPEG/90000\r\n"
                    f"a=framerate:{self.fps}\r\na=control:track1\r\n"
                ).encode()
                reply += [f"Content-Base: {url.rstrip('/')}/", "Content-Type: application/sdp"]
            elif method == "SETUP":
                if "TCP" not in headers.get("transport", ""):
                    status = "461 Unsupported Transport"
                else:
                    reply += [
                        "Transport: RTP/AVP/TCP;unicast;interleaved=0-1",
                        f"Session: {session}",
                    ]
            elif method == "PLAY":
                reply += [f"Session: {session}", "Range: npt=0.000-"]
            elif method == "TEARDOWN":
                conn.sendall(f"RTSP/1.0 200 OK\r\n{reply[0]}\r\n\r\n".encode())
                return
            else:
                status = "405 Method Not Allowed"
            if body:
                reply.append(f"Content-Length: {len(body)}")
            head = f"RTSP/1.0 {status}\r\n" + "\r\n".join(reply) + "\r\n\r\n"
            conn.sendall(head.encode() + body)
            if method == "PLAY":
                self._stream(conn)
                return

    def _stream(self, conn: socket.socket) -> None:
        seq = 0
        for n, jpeg in self._frames():
            tables, scan = _jpeg_parts(jpeg)
            stamp = int(n * 90000 / self.fps) & 0xFFFFFFFF
            offset = 0
            while offset < len(scan):
                chunk = scan[offset : offset + 1400]
                last = offset + len(chunk) >= len(scan)
                rtp = struct.pack(
                    ">BBHII", 0x80, (0x80 if last else 0) | 26, seq & 0xFFFF, stamp, 0x1234
                )
                jpeg_header = struct.pack(">I", offset & 0xFFFFFF) + struct.pack(
                    ">BBBB", 1, 255, self.width // 8, self.height // 8
                )
                qt = struct.pack(">BBH", 0, 0, len(tables)) + tables if offset == 0 else b""
                packet = rtp + jpeg_header + qt + chunk
                conn.sendall(b"$\x00" + struct.pack(">H", len(packet)) + packet)
                offset += len(chunk)
                seq += 1


class MjpegServer(_Server):
    """``http://127.0.0.1:PORT/stream.mjpg``: ``multipart/x-mixed-replace`` JPEGs."""

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}/stream.mjpg"

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        while reader.readline() not in (b"\r\n", b"\n", b""):
            pass
        conn.sendall(
            b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n"
        )
        for _, jpeg in self._frames():
            part = (
                b"--frame\r\nContent-Type: image/jpeg\r\n"
                + f"Content-Length: {len(jpeg)}\r\n\r\n".encode()
                + jpeg
                + b"\r\n"
            )
            conn.sendall(part)


class RedirectingServer(_Server):
    """A source that sends its client elsewhere, every time it connects: ``kind`` is
    ``http`` (an HTTP 302 to ``target``), ``rtsp`` (an RTSP 302 to ``target``, the answer
    to the first request) or ``hls`` (an HTTP 200 with an HLS playlist whose one segment
    is ``target``; ``playlist_type`` is its Content-Type)."""

    def __init__(
        self,
        kind: str,
        target: str,
        playlist_type: str = "application/vnd.apple.mpegurl",
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        super().__init__([np.zeros((16, 16, 3), np.uint8)], 1.0, tls=tls)
        self.kind, self.target, self.playlist_type = kind, target, playlist_type

    @property
    def url(self) -> str:
        path = {"http": "cam.mjpg", "rtsp": "stream", "hls": "live.m3u8"}[self.kind]
        scheme = ("rtsp" if self.kind == "rtsp" else "http") + ("s" if self.tls else "")
        return f"{scheme}://{self.host}:{self.port}/{path}"

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        cseq = "1"
        while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
            if line.lower().startswith(b"cseq:"):
                cseq = line.split(b":", 1)[1].strip().decode()
        if self.kind == "rtsp":
            answer = f"RTSP/1.0 302 Moved Temporarily\r\nCSeq: {cseq}\r\nLocation: {self.target}"
            conn.sendall(f"{answer}\r\n\r\n".encode())
        elif self.kind == "http":
            conn.sendall(f"HTTP/1.0 302 Found\r\nLocation: {self.target}\r\n\r\n".encode())
        else:
            playlist = (
                "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
                f"#EXTINF:2.0,\n{self.target}\n"
            )
            conn.sendall(
                f"HTTP/1.0 200 OK\r\nContent-Type: {self.playlist_type}\r\n"
                f"Content-Length: {len(playlist)}\r\n\r\n{playlist}".encode()
            )
        time.sleep(0.2)
