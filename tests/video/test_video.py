"""Real-time video end to end: the synthetic ground-truth video through ``facerec watch``
and the in-process analyzer, a real RTSP server (stopped and restarted under a running
``watch``), an HTTP MJPEG stream, the reader's frame dropping, bad sources, and several
streams sharing one batcher."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from devkit import scenes as vs
from devkit.media import MjpegServer, RtspServer
from devkit.servers import free_port
from facerec.batching import MicroBatcher
from facerec.enrolment import open_gallery
from facerec.errors import FaceRecError
from facerec.pipeline import FacePipeline
from facerec.video import (
    GalleryPolicy,
    SourceOptions,
    StreamAnalyzer,
    VideoConfig,
    open_source,
)
from tests.support.cli import FACEREC

FPS = 10.0
ENROLLED = {name for name, _, photos in vs.CAST if photos}
FRAME_KEYS = {"frame", "time", "faces", "dropped"}
FACE_KEYS = {"track_id", "box", "score", "match", "similarity"}


@pytest.fixture(scope="module")
def scene(pipeline: FacePipeline) -> vs.Scene:
    """8 s of the scene at 480x360, 10 frames/s; faces placed where the detector finds
    them in the still photos."""
    boxes = {n: pipeline.detect([f])[0].boxes[0].tolist() for n, f in vs.cast_faces().items()}
    return vs.render(boxes, 480, 360, FPS, 8.0)


@pytest.fixture(scope="module")
def files(scene: vs.Scene, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("video")
    return {
        "video": vs.write_video(d / "scene.mp4", scene.frames, FPS),
        "gallery": vs.write_gallery(d / "gallery"),
        "dir": d,
    }


@pytest.fixture(scope="module")
def policy(pipeline: FacePipeline, files: dict[str, Path]) -> GalleryPolicy:
    enrolled = open_gallery(pipeline, files["gallery"])  # the default operating point
    assert not enrolled.refused and sorted(enrolled.gallery.subjects) == sorted(ENROLLED)
    return GalleryPolicy(enrolled.gallery, enrolled.point)


def watch(*args: str | Path, timeout: float = 300) -> tuple[int, list[dict[str, Any]], str]:
    done = subprocess.run(
        [*FACEREC, "watch", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()], done.stderr


def split(lines: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    frames = [line for line in lines if "frame" in line and "event" not in line]
    events = [line for line in lines if "event" in line]
    return frames, events


def hyps(frames: list[dict[str, Any]]) -> dict[int, list[vs.HypFace]]:
    return {
        f["frame"]: [vs.HypFace(x["track_id"], tuple(x["box"]), x["match"]) for x in f["faces"]]
        for f in frames
    }


def check_run(
    scene: vs.Scene, runs: dict[int, list[vs.HypFace]], min_mota: float = 0.85
) -> dict[str, Any]:
    """What every run on the synthetic video must give: one track per person, no ID
    switch, no wrong name, every enrolled person named, the stranger never named."""
    score = vs.evaluate(scene, runs)
    assert score["id_switches"] == 0, score
    assert all(len(ids) == 1 for ids in score["tracks_per_person"].values()), score
    assert score["wrong_names"] == 0, score
    assert score["never_named"] == [], score
    assert score["mota"] > min_mota and score["idf1"] > 0.9, score
    stranger = {n for n, _, photos in vs.CAST if not photos}
    assert stranger <= set(score["tracks_per_person"])  # found, and never named (above)
    return score


def test_watch_file_json_gives_stable_ids_and_right_names(
    scene: vs.Scene, files: dict[str, Path]
) -> None:
    out = files["dir"] / "annotated.mp4"
    code, lines, _ = watch(files["video"], "--gallery", files["gallery"], "--json", "--out", out)
    assert code == 0
    frames, events = split(lines)
    assert [f["frame"] for f in frames] == list(range(len(scene.frames)))  # none dropped
    for f in frames:
        assert set(f) == FRAME_KEYS and f["dropped"] == 0
        assert f["time"] == pytest.approx(f["frame"] / FPS, abs=1e-3)
        for face in f["faces"]:
            assert set(face) == FACE_KEYS
            assert len(face["box"]) == 4 and 0 < face["score"] <= 1
    check_run(scene, hyps(frames))
    started = {e["track_id"] for e in events if e["event"] == "track_started"}
    ended = {e["track_id"] for e in events if e["event"] == "track_ended"}
    assert started == ended == {face["track_id"] for f in frames for face in f["faces"]}
    named = {e["subject"] for e in events if e["event"] == "identified"}
    assert named == ENROLLED
    for e in events:
        if e["event"] == "identified":
            assert e["votes"] >= 2 and e["similarity"] >= 0.4
    # the annotated copy has every frame, boxes drawn over it
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(scene.frames)
    cap.release()


def test_detecting_every_third_frame_keeps_ids_and_names(
    scene: vs.Scene, pipeline: FacePipeline, policy: GalleryPolicy
) -> None:
    batcher = MicroBatcher(pipeline)
    analyzer = StreamAnalyzer(batcher, policy, VideoConfig(detect_every=3))
    runs = {}
    try:
        for k, image in enumerate(scene.frames):
            result = analyzer.process(image, k, k / FPS)
            assert result.detected == (k % 3 == 0)
            runs[k] = [vs.HypFace(f.track_id, f.box, f.match) for f in result.faces]
    finally:
        batcher.close()
    # between detections the boxes are predictions: at 10 frames/s, 0.3 s apart, some
    # fall under IoU 0.5 with the truth, which costs MOTA, not ids or names
    check_run(scene, runs, min_mota=0.75)
    assert batcher.images == len(range(0, len(scene.frames), 3))  # the detector's frames


def test_streams_share_one_batcher(
    scene: vs.Scene, pipeline: FacePipeline, policy: GalleryPolicy
) -> None:
    """Three streams on one batcher: each gets its own right answer, and their crops and
    frames went through shared calls."""
    batcher = MicroBatcher(pipeline, max_wait=0.02)
    frames = scene.frames[:40]
    results: dict[int, dict[int, list[vs.HypFace]]] = {}

    def run(stream: int) -> None:
        analyzer = StreamAnalyzer(batcher, policy)
        results[stream] = {}
        for k, image in enumerate(frames):
            r = analyzer.process(image, k, k / FPS)
            results[stream][k] = [vs.HypFace(f.track_id, f.box, f.match) for f in r.faces]

    threads = [threading.Thread(target=run, args=(s,)) for s in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        batcher.close()
    assert len(results) == 3
    assert results[0] == results[1] == results[2]  # same frames, same answer
    calls = 3 * len(frames)
    assert batcher.images == calls
    assert batcher.batches < calls  # detection and embedding calls were shared


@pytest.fixture()
def rtsp(scene: vs.Scene) -> Iterator[RtspServer]:
    with RtspServer(scene.frames, FPS) as server:
        yield server


def test_watch_rtsp_survives_a_server_restart(rtsp: RtspServer, files: dict[str, Path]) -> None:
    """A running ``watch`` on the RTSP server; the server goes away for 2 s and comes
    back on the same port: the command reconnects and goes on."""
    proc = subprocess.Popen(
        [*FACEREC, "watch", rtsp.url, "--gallery", str(files["gallery"]), "--json",
         "--max-frames", "60", "--read-timeout", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[dict[str, Any]] = []
    restarted = False
    for raw in proc.stdout:
        lines.append(json.loads(raw))
        if not restarted and sum("faces" in x for x in lines) == 20:
            rtsp.stop()
            time.sleep(2.0)
            rtsp.start()
            restarted = True
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    frames, events = split(lines)
    assert len(frames) == 60 and restarted
    assert rtsp.clients >= 2  # it connected again
    stamps = [f["time"] for f in frames]
    assert stamps == sorted(stamps)
    assert max(b - a for a, b in itertools.pairwise(stamps)) >= 1.5  # the outage
    assert {e["subject"] for e in events if e["event"] == "identified"} & ENROLLED


def test_watch_stops_cleanly_on_ctrl_c(rtsp: RtspServer, files: dict[str, Path]) -> None:
    out = files["dir"] / "interrupted.avi"
    proc = subprocess.Popen(
        [*FACEREC, "watch", rtsp.url, "--json", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for raw in proc.stdout:
        lines.append(json.loads(raw))
        if sum("faces" in x for x in lines) == 25:
            proc.send_signal(signal.SIGINT)
            break
    # The rest through the same buffered reader: communicate() would read the pipe beneath
    # it and lose the lines the loop above had already buffered.
    rest = proc.stdout.read()
    proc.wait(timeout=60)
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines += [json.loads(line) for line in rest.splitlines()]  # every line whole
    frames, events = split(lines)
    started = {e["track_id"] for e in events if e["event"] == "track_started"}
    ended = {e["track_id"] for e in events if e["event"] == "track_ended"}
    assert started and started == ended  # open tracks were ended on the way out
    cap = cv2.VideoCapture(str(out))  # a finished file: the interrupt may have come
    written = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))  # between a line and its frame
    assert len(frames) - 1 <= written <= len(frames)
    assert cap.read()[0]
    cap.release()


def test_unreachable_rtsp_is_a_clear_error() -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/camera"
    code, lines, _ = watch(url, "--json", "--open-timeout", "3", timeout=60)
    assert code == 1
    assert lines == [
        {"error": {"code": "source_unavailable", "message": f"cannot open stream {url}"}}
    ]
    code, _, err = watch(url, "--open-timeout", "3", timeout=60)
    assert code == 1 and "source_unavailable" in err


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        ("missing.mp4", "file_not_found"),
        ("notes.mp4", "not_a_video"),
        ("ftp://127.0.0.1/stream", "invalid_source"),
    ],
)
def test_bad_sources(uri: str, code: str, tmp_path: Path) -> None:
    (tmp_path / "notes.mp4").write_text("not a video\n" * 100)
    target = uri if "://" in uri else str(tmp_path / uri)
    with pytest.raises(FaceRecError) as info:
        open_source(target)
    assert info.value.code == code


def test_mjpeg_over_http_and_the_newest_frame_policy(scene: vs.Scene) -> None:
    """A slow consumer of a live stream gets the newest frame, the frames it missed are
    counted as dropped; a file read as fast as possible drops nothing."""
    with MjpegServer(scene.frames, 25.0) as server:
        source = open_source(server.url, SourceOptions(open_timeout=5, read_timeout=5))
        try:
            first = source.read(timeout=10)
            assert first is not None and first.image.shape == (360, 480, 3)
            time.sleep(1.0)  # about 25 frames arrive meanwhile
            newest = source.read(timeout=10)
            assert newest is not None
            assert newest.index - first.index >= 10
            stats = source.stats
            assert stats.dropped >= 10 and stats.delivered == 2
            assert stats.frames_read - stats.delivered - stats.dropped in (0, 1)  # 1 waiting
        finally:
            source.close()
        assert source.stats.state == "closed"


def test_file_fast_drops_nothing_and_realtime_drops_behind(files: dict[str, Path]) -> None:
    with open_source(str(files["video"])) as fast:
        frames = []
        while (f := fast.read(timeout=10)) is not None:
            frames.append(f.index)
            if len(frames) == 1:
                time.sleep(0.5)  # a slow consumer: the reader waits for it
        assert frames == list(range(80)) and fast.stats.dropped == 0
        assert fast.stats.state == "ended" and fast.frame_count == 80
    with open_source(str(files["video"]), SourceOptions(realtime=True)) as paced:
        got = []
        while (f := paced.read(timeout=10)) is not None:
            got.append(f.index)
            time.sleep(0.25)  # slower than the file's 10 frames/s
        assert paced.stats.dropped > 0 and len(got) < 80
        assert got == sorted(got) and paced.stats.dropped + len(got) == 80


def test_opencv_rtsp_transport_is_tcp_unless_the_user_chose() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_CAPTURE_OPTIONS"}
    code = (
        "import os\n"
        "from facerec.video import open_source\n"
        "try:\n"
        "    open_source('rtsp://127.0.0.1:9/x')\n"
        "except Exception:\n"
        "    pass\n"
        "print(os.environ['OPENCV_FFMPEG_CAPTURE_OPTIONS'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "rtsp_transport;tcp"
    env["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;udp"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "rtsp_transport;udp"


def test_frame_result_json_shape(scene: vs.Scene, pipeline: FacePipeline) -> None:
    batcher = MicroBatcher(pipeline)
    try:
        analyzer = StreamAnalyzer(batcher)  # no gallery: tracking only
        doc: dict[str, Any] = {}
        for k in range(30, 36):
            result = analyzer.process(scene.frames[k], k, k / FPS, dropped=3)
            doc = result.to_dict()
    finally:
        batcher.close()
    assert set(doc) == FRAME_KEYS and doc["dropped"] == 3 and doc["frame"] == 35
    assert doc["faces"] and all(f["match"] is None for f in doc["faces"])
    json.dumps(doc, allow_nan=False)
    assert np.isfinite([v for f in doc["faces"] for v in f["box"]]).all()


def test_detector_runs_when_frames_come_far_apart(scene: vs.Scene, pipeline: FacePipeline) -> None:
    """Every 3rd frame, unless more than max_detect_gap (0.3 s) passed since the last
    detection: frames 0.5 s apart (a slow consumer dropping frames) are all detected."""
    batcher = MicroBatcher(pipeline)
    try:
        analyzer = StreamAnalyzer(batcher, config=VideoConfig(detect_every=3))
        flags = [analyzer.process(scene.frames[k], k, k * 0.5).detected for k in range(4)]
        analyzer = StreamAnalyzer(batcher, config=VideoConfig(detect_every=3))
        close = [analyzer.process(scene.frames[k], k, k * 0.04).detected for k in range(4)]
    finally:
        batcher.close()
    assert flags == [True, True, True, True]
    assert close == [True, False, False, True]
