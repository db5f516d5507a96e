"""``facerec watch``: track and identify faces in a video file, an RTSP or HTTP MJPEG
stream, or a camera.

With ``--json``, stdout carries only JSON lines: one per processed frame
(``{"frame", "time", "faces": [...], "dropped"}``) followed by that frame's events
(``{"event": ..., "track_id", ...}``). Without it, events are printed as sentences and a
status line (fps, latency, tracks, drops; a progress bar for files) runs on stderr.
Ctrl-C stops cleanly: open tracks are ended, the annotated video is finalised, exit 130.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
from tqdm import tqdm

from facerec.cli import identify
from facerec.cli.output import error_entry
from facerec.enrolment import open_gallery
from facerec.errors import FaceRecError, InvalidArgumentError
from facerec.matching import Scoring
from facerec.pipeline import FacePipeline
from facerec.video import (
    FrameResult,
    GalleryPolicy,
    MatchPolicy,
    SourceError,
    SourceOptions,
    TrackEvent,
    VideoConfig,
    VideoStream,
    open_stream,
)
from facerec.video.annotate import AnnotatedWriter

Options = Callable[[argparse.ArgumentParser], None]


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: Options,
    pipeline_options: Options,
) -> None:
    p = sub.add_parser(
        "watch",
        help="track and identify faces in a video file, stream or camera",
        description=(
            "Track faces in a video and name them against a gallery. SOURCE is a video "
            "file (mp4, mkv, avi, webm), rtsp://... (over TCP unless "
            "OPENCV_FFMPEG_CAPTURE_OPTIONS says otherwise), http(s)://... (MJPEG), or a "
            "camera index (0). Live sources reconnect with backoff when they drop."
        ),
    )
    p.add_argument("source", metavar="SOURCE", help="file, rtsp:// or http(s):// URL, camera index")
    p.add_argument("--gallery", type=Path, metavar="DIR", help="one sub-folder per person")
    p.add_argument(
        "--every",
        type=int,
        default=1,
        metavar="N",
        help="run the detector on every N-th frame; the tracker predicts in between (1)",
    )
    p.add_argument(
        "--embed-every",
        type=int,
        default=10,
        metavar="K",
        help="re-embed each named track every K frames (10; unnamed tracks every 3)",
    )
    p.add_argument("--out", type=Path, metavar="FILE", help="annotated video (.mp4 or .avi)")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N processed frames")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="files: play at the file's frame rate, dropping frames when behind "
        "(default: every frame, as fast as possible)",
    )
    identify.add_options(p)  # --fpir, --threshold, --score, --force: as identify
    p.add_argument("--open-timeout", type=float, default=10.0, metavar="S", help="(10 s)")
    p.add_argument("--read-timeout", type=float, default=10.0, metavar="S", help="(10 s)")
    p.add_argument(
        "--reconnect-for",
        type=float,
        default=None,
        metavar="S",
        help="give up on a live source after S seconds without frames (default: never)",
    )
    common(p)
    for action in p._actions:
        if "--json" in action.option_strings:
            action.help = "print only JSON lines on stdout: one per frame, then its events"
    pipeline_options(p)
    p.set_defaults(handler=cmd_watch)


def _line(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, allow_nan=False) + "\n")
    sys.stdout.flush()


def _sentence(event: TrackEvent) -> str:
    who = event.data.get("subject") or "unknown"
    head = f"{event.time:8.2f}s  track {event.track_id}"
    if event.event == "identified":
        d = event.data
        return f"{head} identified: {who} (similarity {d['similarity']:.3f}, {d['votes']} votes)"
    if event.event == "track_started":
        return f"{head} started"
    if event.event == "track_ended":
        return f"{head} ended after {event.data['duration']:.1f} s: {who}"
    return f"{head} {event.event.removeprefix('track_')}: {who}"


class _Status:
    """A progress bar (files with a known length) or a status line, on stderr."""

    def __init__(self, stream: VideoStream, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        total = stream.source.frame_count if not stream.source.live else 0
        if stream.max_frames and total:
            total = min(total, stream.max_frames)
        self.bar = tqdm(total=total or None, unit="frame", disable=not enabled, leave=False)
        self._shown = 0.0

    def update(self, result: FrameResult) -> None:
        if not self.enabled:
            return
        self.bar.update(1)
        now = time.monotonic()
        if now - self._shown < 0.5:
            return
        self._shown = now
        s = self.stream.stats()
        state = "" if s.state == "streaming" else f" [{s.state}]"
        self.bar.set_postfix_str(
            f"{s.fps:.1f} fps, latency {s.latency_ms:.0f} ms, {s.tracks} tracks, "
            f"{s.dropped} dropped{state}",
            refresh=True,
        )

    def close(self) -> None:
        self.bar.close()


def cmd_watch(args: argparse.Namespace, pipeline: FacePipeline) -> int:
    if not args.verbose:  # FFmpeg's and OpenCV's own complaints: our errors say it better
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        cv2.setLogLevel(2)
    try:
        return _watch(args, pipeline)
    except FaceRecError as exc:
        if not args.json:
            raise
        _line(error_entry(exc))  # one JSON line, like everything else on stdout
        return 1


def _watch(args: argparse.Namespace, pipeline: FacePipeline) -> int:
    policy: MatchPolicy | None = None
    if args.gallery is not None:
        enrolled = open_gallery(
            pipeline,
            args.gallery,
            Scoring.parse(args.score),
            args.fpir,
            args.threshold,
            args.force,
            args.progress,
        )
        policy = GalleryPolicy(enrolled.gallery, enrolled.point)
    if args.every < 1 or args.embed_every < 1:
        raise InvalidArgumentError("--every and --embed-every must be at least 1")
    options = SourceOptions(
        open_timeout=args.open_timeout,
        read_timeout=args.read_timeout,
        realtime=args.realtime,
        reconnect_for=args.reconnect_for,
    )
    config = VideoConfig(detect_every=args.every, embed_every=args.embed_every)
    with open_stream(pipeline, args.source, policy, config, options, args.max_frames) as stream:
        started = time.monotonic()
        interrupted = _follow(args, stream)
    stats = stream.stats()
    if stats.state == "failed":
        raise SourceError(f"{args.source}: {stats.last_error or 'the source failed'}")
    if not args.json:
        took = time.monotonic() - started
        print(
            f"{stats.processed} frames in {took:.1f} s ({stats.processed / max(took, 1e-9):.1f}"
            f" fps), {stats.dropped} dropped, {stats.reconnects} reconnects"
            + (" (interrupted)" if interrupted else ""),
            file=sys.stderr,
        )
    return 130 if interrupted else 0


def _follow(args: argparse.Namespace, stream: VideoStream) -> bool:
    """Report every frame's results and events (and write the annotated copy) until the
    stream ends; whether Ctrl-C ended it."""
    writer = AnnotatedWriter(args.out, stream.source.fps) if args.out else None
    status = _Status(stream, args.progress)
    interrupted = threading.Event()

    def _interrupt(signum: int, _frame: object) -> None:
        # Ctrl-C ends the stream after the frame in progress, so no frame's events are cut
        # in half; a second Ctrl-C interrupts at once.
        interrupted.set()
        stream.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, _interrupt)
    try:
        for frame, result in stream:
            _report(result.events, result, args.json)
            if writer is not None:
                writer.write(frame.image, result)
            status.update(result)
    except KeyboardInterrupt:
        interrupted.set()
    finally:
        signal.signal(signal.SIGINT, previous)
        status.close()
        _report(stream.finish(), None, args.json)
        if writer is not None:
            writer.close()
    return interrupted.is_set()


def _report(events: list[TrackEvent], result: FrameResult | None, as_json: bool) -> None:
    if as_json:
        if result is not None:
            _line(result.to_dict())
        for event in events:
            _line(event.to_dict())
        return
    for event in events:
        print(_sentence(event), flush=True)
