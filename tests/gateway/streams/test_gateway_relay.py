"""The stream relay's reading of what a source answers (gateway/service/relay.py), fed in
pieces as a network delivers them: redirects and playlists refused wherever the bytes are
cut, everything else passed on unchanged. (The relay on real servers, with FFmpeg behind
it: tests/gateway/streams/test_gateway_stream.py.)"""

from __future__ import annotations

import pytest

from gateway.service.relay import Refused, _Answers


def fed(answers: _Answers, data: bytes, piece: int) -> bytes:
    out = b""
    for i in range(0, len(data), piece):
        out += answers.feed(data[i : i + piece])
    return out


RTSP_OK = b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Length: 5\r\n\r\nv=0\r\n"
PACKET = b"$\x00\x00\x06" + b"\x80\x1a\x00\x01\xff\xd8"


@pytest.mark.parametrize("piece", [1, 3, 7, 4096])
def test_rtsp_messages_and_packets_pass_whole_and_unchanged(piece: int) -> None:
    session = RTSP_OK + PACKET + b"RTSP/1.0 200 OK\r\nCSeq: 3\r\n\r\n" + PACKET * 3
    answers = _Answers(rtsp=True)
    assert fed(answers, session, piece) == session and answers.started


@pytest.mark.parametrize("piece", [1, 5, 4096])
@pytest.mark.parametrize("status", [301, 302, 305])
def test_an_rtsp_redirect_is_refused_even_mid_session(piece: int, status: int) -> None:
    redirect = f"RTSP/1.0 {status} Moved\r\nCSeq: 4\r\nLocation: rtsp://10.0.0.9/x\r\n\r\n"
    answers = _Answers(rtsp=True)
    with pytest.raises(Refused, match=r"10\.0\.0\.9"):
        fed(answers, RTSP_OK + PACKET + redirect.encode(), piece)


@pytest.mark.parametrize("piece", [1, 9, 4096])
def test_http_answers(piece: int) -> None:
    mjpeg = (
        b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=f\r\n\r\n"
        b"--f\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8..."
    )
    assert fed(_Answers(rtsp=False), mjpeg, piece) == mjpeg
    for refused in (
        b"HTTP/1.1 302 Found\r\nLocation: http://[::1]/x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.apple.mpegurl\r\n\r\n#EXTM3U\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n#EXTM3U\n#EXTINF:2,\nx.ts\n",
    ):
        with pytest.raises(Refused):
            fed(_Answers(rtsp=False), refused, piece)


def test_a_head_that_never_ends_is_refused() -> None:
    with pytest.raises(Refused, match="head over"):
        _Answers(rtsp=False).feed(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20_000)
