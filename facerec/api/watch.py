""":class:`Watch`: faces tracked and named in a video, as an iterator.

It runs the video loop ``facerec watch`` runs (:func:`facerec.video.open_stream`: a
:class:`~facerec.video.VideoStream` over the source, a
:class:`~facerec.video.StreamAnalyzer` on a micro-batcher) and hands out what the command
prints.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import ExitStack
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from facerec.pipeline import FacePipeline
    from facerec.video import (
        FrameResult,
        MatchPolicy,
        SourceOptions,
        StreamStats,
        TrackEvent,
        VideoConfig,
    )


class Watch:
    """The results of a video, frame by frame (made by :meth:`FaceRecognizer.watch
    <facerec.api.recognizer.FaceRecognizer.watch>`).

    Iterating gives, for every processed frame, its :class:`~facerec.video.FrameResult`
    (``faces``: track id, box, score, ``match``: the track's name or None, similarity)
    followed by the :class:`~facerec.video.TrackEvent` s that frame caused
    (``track_started``, ``identified``, ``track_lost``, ``track_resumed``,
    ``track_ended``); when the source ends, the ``track_ended`` events of the tracks still
    open. Each item's ``to_dict()`` is one line of ``facerec watch --json``. The source
    and the batcher are closed when the iteration ends, on :meth:`close` or on leaving a
    ``with`` block; :meth:`stop` (from any thread) ends it after the frame in progress. A
    live source that fails for good raises :class:`~facerec.video.SourceError` at the end.

    >>> import tempfile
    >>> from pathlib import Path
    >>> import cv2, numpy as np
    >>> from facerec import FaceRecognizer
    >>> recognizer = FaceRecognizer()
    >>> gallery = recognizer.gallery()
    >>> photos = sorted(Path("tests/data/gallery").glob("Ben_Affleck_*.jpg"))
    >>> gallery.add("Ben_Affleck", photos[:4]).accepted
    4
    >>> clip = Path(tempfile.mkdtemp()) / "clip.avi"  # 2 s of his fifth photo, sliding
    >>> face = cv2.imread(str(photos[4]))
    >>> video = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 200))
    >>> for k in range(20):
    ...     frame = np.full((200, 320, 3), 100, np.uint8)
    ...     frame[25:175, 5 * k : 5 * k + 150] = face
    ...     video.write(frame)
    >>> video.release()
    >>> with recognizer.watch(clip, gallery) as watch:
    ...     lines = [item.to_dict() for item in watch]
    >>> sum("faces" in line for line in lines)  # one result per frame
    20
    >>> [(line["event"], line.get("subject")) for line in lines if "event" in line]
    [('track_started', None), ('identified', 'Ben_Affleck'), ('track_ended', 'Ben_Affleck')]
    """

    def __init__(
        self,
        pipeline: FacePipeline,
        uri: str,
        policy: MatchPolicy | None,
        config: VideoConfig,
        options: SourceOptions,
        max_frames: int | None = None,
    ) -> None:
        from facerec.video import open_stream

        self.uri = uri
        self._resources = ExitStack()
        self._stream = self._resources.enter_context(
            open_stream(pipeline, uri, policy, config, options, max_frames)
        )
        self._items = self._run()

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> FrameResult | TrackEvent:
        return next(self._items)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> Generator[FrameResult | TrackEvent, None, None]:
        from facerec.video import SourceError

        try:
            for _, result in self._stream:
                yield result
                yield from result.events
            yield from self._stream.finish()
        finally:
            self._resources.close()
        stats = self._stream.stats()
        if stats.state == "failed":
            raise SourceError(f"{self.uri}: {stats.last_error or 'the source failed'}")

    def stats(self) -> StreamStats:
        """Frames processed and dropped, fps, latency, tracks, the source's state."""
        return self._stream.stats()

    def stop(self) -> None:
        """End the iteration after the frame in progress (any thread); the open tracks'
        ``track_ended`` events still follow."""
        self._stream.stop()

    def close(self) -> None:
        """Stop now and release the source and the batcher (idempotent)."""
        self._items.close()
        self._resources.close()


__all__ = ["Watch"]
