"""Images in, faces out: what every face operation and the video path share.

One :class:`Analyzer` per process holds the pipeline, the
:class:`~facerec.batching.MicroBatcher` (so concurrent requests, video frames and face
crops share pipeline calls) and the decode budget: :meth:`Analyzer.decoded` is the one
way an upload or a frame is decoded (header checks, the bytes decoding costs reserved
while the image is in use, memory given back after a large one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import numpy as np

from facerec.batching import MicroBatcher
from facerec.errors import FaceRecError, ImageError, NoFaceError
from facerec.imaging.budget import DecodeBudget
from facerec.imaging.decode import (
    DECODE_BYTES_PER_PIXEL,
    DecodeLimits,
    decode_cost,
    decode_image,
    probe_image,
)
from facerec.pipeline import Face, FacePipeline, ImageFaces
from gateway.memory import release_memory
from gateway.service.types import Upload

_T = TypeVar("_T")
_R = TypeVar("_R")


class Analyzer:
    """Decoding within the budget, and the pipeline through the micro-batcher."""

    def __init__(
        self,
        pipeline: FacePipeline,
        batcher: MicroBatcher,
        limits: DecodeLimits,
        budget: DecodeBudget | None = None,
        trim_after_pixels: int = 0,
    ) -> None:
        self.pipeline, self.batcher, self.limits = pipeline, batcher, limits
        # not given: the per-image limit's, else room for ten of the largest images
        largest = limits.max_pixels * max(DECODE_BYTES_PER_PIXEL.values())
        self.budget = budget or DecodeBudget(limits.max_decode_bytes or 10 * largest)
        self.trim_after_pixels = trim_after_pixels
        self._fanout = ThreadPoolExecutor(8, thread_name_prefix="fanout")

    def close(self) -> None:
        self._fanout.shutdown(wait=True)
        self.batcher.close()

    @contextmanager
    def decoded(
        self,
        data: bytes,
        limits: DecodeLimits | None = None,
        formats: frozenset[str] | None = None,
    ) -> Iterator[np.ndarray]:
        """One image (an upload, a video frame) decoded to RGB uint8[H, W, 3], the one way
        every route and the video path decode. The header is checked first against
        ``limits`` (the service's by default; a file too short for its frame is
        ``truncated_image``; a format outside ``formats``, when given, is
        ``unsupported_format``); then what decoding it costs (:func:`decode_cost`:
        channels and depth counted) is reserved in the budget shared by every request and
        frame in flight, until the block ends, so concurrent large images wait (or get
        503 ``busy``) instead of adding up; after a large one, freed memory goes back to
        the system."""
        limits = limits or self.limits
        info = probe_image(data, limits)
        if formats is not None and info.format not in formats:
            raise ImageError(
                f"send {' or '.join(sorted(formats))}, not {info.format}",
                code="unsupported_format",
                format=info.format,
            )
        try:
            with self.budget.reserve(decode_cost(info)):
                yield decode_image(data, limits)
        finally:
            if self.trim_after_pixels and info.pixels >= self.trim_after_pixels:
                release_memory()

    def in_parallel(self, work: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
        """``work`` on each of ``items`` on the service's fan-out threads, in order."""
        return list(self._fanout.map(work, items))

    def analyze(self, data: bytes, primary_only: bool = False) -> ImageFaces:
        """Decode and analyse one upload (within the decode budget, see :meth:`decoded`)."""
        with self.decoded(data) as image:
            return self.batcher.analyze(image, primary_only)

    def analyze_many(
        self, uploads: Sequence[Upload], primary_only: bool = False
    ) -> list[ImageFaces | FaceRecError]:
        """Decode and analyse several uploads at once; a bad one yields its error."""

        def one(upload: Upload) -> ImageFaces | FaceRecError:
            try:
                return self.analyze(upload.data, primary_only)
            except FaceRecError as exc:
                return exc

        return self.in_parallel(one, uploads)

    def probe(self, data: bytes) -> Face:
        """The primary face of one upload, embedded (``no_face`` when there is none)."""
        faces = self.analyze(data, primary_only=True)
        if not faces.faces:
            raise NoFaceError("no face found in the image")
        return faces.faces[0]
