""":class:`FaceRecognizer`: one object over one :class:`~facerec.pipeline.FacePipeline`.

Every method is a thin layer over the functions the command line and the gateway use:
the pipeline's ``analyze`` (detect, select the primary face, align, embed), the 1:1 rule
:func:`facerec.matching.verified`, the enrolment loop and open-set decision behind
:class:`~facerec.api.gallery.Gallery`, and the video loop behind
:class:`~facerec.api.watch.Watch`. The pipeline, and with it ONNX Runtime, loads when a
recognizer is built, not when ``facerec`` is imported.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from facerec.api.images import ImageInput, image_label, load_image
from facerec.api.results import Verification
from facerec.errors import FaceRecError, NoFaceError
from facerec.models import BASE_MODEL

if TYPE_CHECKING:
    import numpy as np

    from facerec.alignment import AlignMethod
    from facerec.api.gallery import Gallery
    from facerec.api.watch import Watch
    from facerec.pipeline import Face, FacePipeline, ImageFaces


class FaceRecognizer:
    """Detection, embedding and 1:1 verification, and the way to galleries and video.

    The options are the command line's pipeline options (``--model``, ``--precision``,
    ``--alignment``, ``--no-flip``, ``--min-face-size``, ``--detection-thresholds``,
    ``--max-detect-side``, ``--threads``), with the same defaults. The models run
    in-process on ONNX Runtime, or on the Triton server at ``triton`` (``host:port``);
    without it ``FACEREC_BACKEND`` chooses, as for the command line. ``home``: where
    ``facerec models`` put the models (default ``$FACEREC_HOME``, else
    ``~/.cache/facerec``). Images are anything :data:`~facerec.api.images.ImageInput`
    names: a path, bytes, RGB ``uint8[H, W, 3]`` pixels or a PIL image.

    >>> from facerec import FaceRecognizer
    >>> recognizer = FaceRecognizer()
    >>> faces = recognizer.embed("tests/data/lfw/Amber_Tamblyn_0001.jpg")
    >>> len(faces), faces[0].embedding.shape
    (1, (128,))
    >>> recognizer.model_id.startswith("facenet128:")
    True
    >>> FaceRecognizer(precision="fp64")
    Traceback (most recent call last):
    ...
    facerec.errors.InvalidArgumentError: unknown precision 'fp64'
    """

    def __init__(
        self,
        model: str = BASE_MODEL,
        *,
        precision: str = "int8",
        alignment: AlignMethod = "similarity",
        flip: bool = True,
        min_face_size: int = 20,
        detection_thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        max_detect_side: int = 2048,
        threads: int | None = None,
        triton: str | None = None,
        home: str | os.PathLike[str] | None = None,
    ) -> None:
        from facerec.detection.mtcnn import MTCNNConfig
        from facerec.pipeline import FacePipeline, PipelineConfig

        p, r, o = detection_thresholds
        config = PipelineConfig(
            detector=MTCNNConfig(min_face_size=min_face_size, thresholds=(p, r, o)),
            alignment=alignment,
            flip=flip,
            precision=precision,
            threads=threads,
            max_detect_side=max_detect_side,
            model=model,
        )
        self._pipeline = FacePipeline.open(
            config,
            None if home is None else Path(home),
            backend="triton" if triton else None,
            url=triton,
        )

    @classmethod
    def from_pipeline(cls, pipeline: FacePipeline) -> FaceRecognizer:
        """A recognizer over a pipeline already built (e.g. shared with a service).

        >>> from facerec import FaceRecognizer
        >>> from facerec.pipeline import FacePipeline
        >>> FaceRecognizer.from_pipeline(FacePipeline.local()).threshold > 0
        True
        """
        recognizer = cls.__new__(cls)
        recognizer._pipeline = pipeline
        return recognizer

    @property
    def pipeline(self) -> FacePipeline:
        """The pipeline underneath: its steps (``detect``, ``align``, ``embed``) are public."""
        return self._pipeline

    @property
    def model_id(self) -> str:
        """The embedding model's identity, ``name:sha``: embeddings are comparable only
        between equal identities."""
        return self._pipeline.model_id

    @property
    def threshold(self) -> float:
        """The model card's calibrated 1:1 threshold for this pipeline variant."""
        return self._pipeline.threshold

    def detect(self, image: ImageInput) -> list[Face]:
        """Every face found in ``image`` (box, score, 5 landmarks; no embedding), in the
        image's pixel coordinates; an empty list when there is none.

        >>> from facerec import FaceRecognizer
        >>> (face,) = FaceRecognizer().detect("tests/data/lfw/Dean_Barker_0001.jpg")
        >>> face.score > 0.9, face.landmarks.shape, face.embedding is None
        (True, (5, 2), True)
        >>> sorted(face.to_dict())
        ['box', 'landmarks', 'score']
        """
        return self._analyze([image], primary_only=False, embed=False)[0].faces

    def embed(self, image: ImageInput) -> list[Face]:
        """Every face of ``image`` with its embedding (``face.embedding``: float32[128],
        unit length); an empty list when there is none. ``face.to_dict(True)`` includes
        the embedding.

        >>> from facerec import FaceRecognizer
        >>> (face,) = FaceRecognizer().embed("tests/data/lfw/Dean_Barker_0001.jpg")
        >>> round(float(face.embedding @ face.embedding), 4)
        1.0
        """
        return self._analyze([image], primary_only=False, embed=True)[0].faces

    def embed_primary(self, image: ImageInput) -> Face:
        """The one face a single-face operation uses, embedded: the largest, most central
        (``facerec embed --single``). Raises :class:`~facerec.errors.NoFaceError` (code
        ``no_face``) when there is none.

        >>> import numpy as np
        >>> from facerec import FaceRecognizer
        >>> recognizer = FaceRecognizer()
        >>> recognizer.embed_primary("tests/data/lfw/Dean_Barker_0001.jpg").embedding.shape
        (128,)
        >>> recognizer.embed_primary(np.full((200, 200, 3), 128, np.uint8))
        Traceback (most recent call last):
        ...
        facerec.errors.NoFaceError: no face found in image #0
        """
        return self._primary([image])[0]

    def verify(self, a: ImageInput, b: ImageInput, threshold: float | None = None) -> Verification:
        """Whether the primary faces of ``a`` and ``b`` are the same person, at the model
        card's calibrated threshold (or ``threshold``), as ``facerec verify`` decides.
        Raises :class:`~facerec.errors.NoFaceError` when an image has no face.

        >>> from facerec import FaceRecognizer
        >>> result = FaceRecognizer().verify(
        ...     "tests/data/lfw/Ann_Veneman_0003.jpg", "tests/data/lfw/Dean_Barker_0001.jpg"
        ... )
        >>> result.match
        False
        """
        first, second = self._primary([a, b])
        if threshold is None:
            return Verification.between(first, second, self.threshold, "model_card")
        return Verification.between(first, second, threshold, "argument")

    def gallery(
        self,
        *,
        score: str = "centroid",
        fpir: float | None = None,
        threshold: float | None = None,
        force: bool = False,
    ) -> Gallery:
        """An empty :class:`~facerec.api.gallery.Gallery` on this recognizer (see there
        for the options; :meth:`Gallery.from_folder
        <facerec.api.gallery.Gallery.from_folder>` enrols a folder).

        >>> from facerec import FaceRecognizer
        >>> len(FaceRecognizer().gallery())
        0
        """
        from facerec.api.gallery import Gallery

        return Gallery(self, score=score, fpir=fpir, threshold=threshold, force=force)

    def watch(
        self,
        source: str | os.PathLike[str] | int,
        gallery: Gallery | None = None,
        *,
        every: int = 1,
        embed_every: int = 10,
        max_frames: int | None = None,
        realtime: bool = False,
        open_timeout: float = 10.0,
        read_timeout: float = 10.0,
        reconnect_for: float | None = None,
    ) -> Watch:
        """Track faces in a video and name them against ``gallery`` (None: tracking only):
        see :class:`~facerec.api.watch.Watch` for what iterating gives. ``source`` is a
        video file, an ``rtsp://`` or ``http(s)://`` (MJPEG) URL, or a camera index; the
        options are ``facerec watch``'s (``--every``, ``--embed-every``,
        ``--max-frames``, ``--realtime``, the timeouts and ``--reconnect-for``).

        >>> from facerec import FaceRecognizer
        >>> FaceRecognizer().watch("no/such/video.mp4")
        Traceback (most recent call last):
        ...
        facerec.errors.InvalidArgumentError: no such file: no/such/video.mp4
        """
        from facerec.api.watch import Watch
        from facerec.video import SourceOptions, VideoConfig

        policy = None if gallery is None else gallery.match_policy(self)
        options = SourceOptions(
            open_timeout=open_timeout,
            read_timeout=read_timeout,
            realtime=realtime,
            reconnect_for=reconnect_for,
        )
        config = VideoConfig(detect_every=every, embed_every=embed_every)
        uri = str(source) if isinstance(source, int) else os.fspath(source)
        return Watch(self._pipeline, uri, policy, config, options, max_frames)

    # -- shared steps -----------------------------------------------------------------

    def _analyze(
        self, images: Sequence[ImageInput], primary_only: bool, embed: bool
    ) -> list[ImageFaces]:
        return self._pipeline.analyze(_load_all(images), primary_only, embed)

    def _primary(self, images: Sequence[ImageInput]) -> list[Face]:
        """The embedded primary face of each image, or ``no_face``."""
        found = self._analyze(images, primary_only=True, embed=True)
        for k, (image, result) in enumerate(zip(images, found, strict=True)):
            if not result.faces:
                label = image_label(image, k)
                raise NoFaceError(f"no face found in image {label}", image=label)
        return [result.faces[0] for result in found]


def _load_all(images: Sequence[ImageInput]) -> list[np.ndarray]:
    """Pixels of every image; a bad one raises its error with ``image`` (its label)."""
    pixels = []
    for k, image in enumerate(images):
        try:
            pixels.append(load_image(image))
        except FaceRecError as exc:
            exc.details.setdefault("image", image_label(image, k))
            raise
    return pixels


__all__ = ["FaceRecognizer"]
