""":class:`Gallery`: people enrolled through the project's enrolment policy, searched
open-set.

Enrolment is the one the command line's gallery folders and the gateway use: each
photo's primary face, the quality gates and the consistency gate
(:func:`facerec.selection.check_enrolment`) inside the one enrolment loop
(:func:`facerec.enrolment.enrol_in_order`: most typical photo first, so that a stranger's
photo among a person's is the one refused). A folder is enrolled by
:func:`facerec.enrolment.open_gallery` itself. Identification is
:meth:`facerec.matching.IdentificationPolicy.identify`: subject scores, then the open-set
decision at the operating point for the gallery's size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from facerec.api.images import ImageInput, image_label, is_single, load_image
from facerec.api.recognizer import FaceRecognizer
from facerec.api.results import Enrolment, Identification, RefusedPhoto
from facerec.errors import FaceRecError, InvalidArgumentError, NoFaceError
from facerec.matching import DEFAULT_SCORING, IdentificationPolicy, Scoring
from facerec.matching import Gallery as SubjectIndex

if TYPE_CHECKING:
    from facerec.openset import OperatingPoint
    from facerec.pipeline import Face
    from facerec.video import GalleryPolicy


class Gallery:
    """Enrolled people, each with one or more templates, searched open-set (1:N).

    ``score``: how a person's templates become one score (``centroid``, ``max`` or
    ``topk``, as ``facerec identify --score``). The threshold is the model card's for
    the gallery's current size at ``fpir`` (default ``$FACEREC_IDENTIFY_FPIR``, else
    1e-3), unless ``threshold`` is given. ``force`` keeps photos the consistency gate
    would refuse (the quality gates still apply). Refused photos are reported in each
    :class:`~facerec.api.results.Enrolment` and collected in :attr:`refused`, never
    used silently.

    >>> import shutil, tempfile
    >>> from pathlib import Path
    >>> from facerec import Gallery
    >>> folder = Path(tempfile.mkdtemp())  # one sub-folder of photos per person
    >>> for name in ("Ben_Affleck", "John_Kerry", "Cruz_Bustamante"):
    ...     (folder / name).mkdir()
    ...     for photo in sorted(Path("tests/data/gallery").glob(f"{name}_*.jpg"))[:4]:
    ...         _ = shutil.copy(photo, folder / name)
    >>> gallery = Gallery.from_folder(folder)
    >>> gallery.subjects, gallery.refused
    (['Ben_Affleck', 'Cruz_Bustamante', 'John_Kerry'], [])
    >>> [face.match for face in gallery.identify("tests/data/gallery/John_Kerry_0009.jpg")]
    ['John_Kerry']
    >>> shutil.rmtree(folder)
    """

    def __init__(
        self,
        recognizer: FaceRecognizer,
        *,
        score: str = DEFAULT_SCORING.method,
        fpir: float | None = None,
        threshold: float | None = None,
        force: bool = False,
    ) -> None:
        pipeline = recognizer.pipeline
        cfg = pipeline.config
        scoring = Scoring.parse(score)
        self.recognizer = recognizer
        self.policy = IdentificationPolicy.from_card(
            pipeline.card, cfg.alignment, cfg.flip, cfg.precision, scoring
        )
        self.policy.operating_point(1, fpir, threshold)  # a bad setting fails here
        self.fpir, self.threshold, self.force = fpir, threshold, force
        self._index = SubjectIndex(pipeline.card.embedding_size, scoring)
        self._refused: list[RefusedPhoto] = []

    @classmethod
    def from_folder(
        cls,
        path: str | os.PathLike[str],
        recognizer: FaceRecognizer | None = None,
        *,
        score: str = DEFAULT_SCORING.method,
        fpir: float | None = None,
        threshold: float | None = None,
        force: bool = False,
        processes: int | None = None,
    ) -> Gallery:
        """Enrol the folder ``path``, one sub-folder of photos per person named after
        them, as ``facerec identify --gallery`` does (:func:`facerec.enrolment.open_gallery`;
        ``processes`` as its ``--processes``). ``recognizer``: default
        ``FaceRecognizer()``. Raises :class:`~facerec.errors.InvalidArgumentError`
        (``not_found``, ``empty_gallery``) for a folder without a usable photo. See the
        class's example."""
        from facerec.enrolment import open_gallery

        gallery = cls(
            recognizer or FaceRecognizer(), score=score, fpir=fpir, threshold=threshold, force=force
        )
        enrolled = open_gallery(
            gallery.recognizer.pipeline,
            Path(path),
            gallery.policy.scoring,
            fpir,
            threshold,
            force,
            processes=processes,
        )
        gallery._index = enrolled.gallery
        gallery._refused = [RefusedPhoto.from_dict(r) for r in enrolled.refused]
        return gallery

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, name: object) -> bool:
        return name in self._index.subjects

    @property
    def subjects(self) -> list[str]:
        """The enrolled people, in enrolment order."""
        return self._index.subjects

    @property
    def refused(self) -> list[RefusedPhoto]:
        """Every photo refused so far, with its error."""
        return list(self._refused)

    def add(self, name: str, images: ImageInput | Sequence[ImageInput]) -> Enrolment:
        """Enrol photos of ``name`` (one image or several): each photo's primary face
        through every enrolment gate, checked against the templates ``name`` already
        has and those accepted before it, most typical photo first. A photo that cannot
        be read, has no face or fails a gate is refused and reported; the others become
        templates.

        >>> from facerec import FaceRecognizer
        >>> gallery = FaceRecognizer().gallery()
        >>> gallery.add("Dean_Barker", "tests/data/lfw/Dean_Barker_0001.jpg").accepted
        1
        >>> "Dean_Barker" in gallery, len(gallery)
        (True, 1)
        """
        from facerec.enrolment import aligned_crop, enrol_in_order
        from facerec.selection import check_enrolment

        if not isinstance(name, str) or not name:
            raise InvalidArgumentError("a subject's name must be a non-empty string")
        batch = [images] if is_single(images) else list(cast(Sequence[ImageInput], images))
        photos, refused = self._primary_faces(batch)
        pipeline = self.recognizer.pipeline
        embeddings = [face.embedding for _, _, face in photos if face.embedding is not None]

        def accept(i: int, templates: np.ndarray | None) -> None:
            """The enrolment gates for photo ``i`` against ``templates`` (raises)."""
            _, pixels, face = photos[i]
            crop = aligned_crop(pipeline, pixels, face)
            check_enrolment(face, pixels.shape[:2], crop, templates, force=self.force)

        existing = list(self._index.templates(name)) if name in self else []
        outcomes = enrol_in_order(embeddings, accept, existing)
        accepted = []
        for (k, _, _), embedding, outcome in zip(photos, embeddings, outcomes, strict=True):
            if isinstance(outcome, FaceRecError):
                refused.append((k, outcome))
            else:
                accepted.append(embedding)
        if accepted:
            self._index.add(name, np.stack(accepted))
        reported = tuple(
            RefusedPhoto(name, image_label(batch[k], k), error.to_dict())
            for k, error in sorted(refused, key=lambda r: r[0])
        )
        self._refused.extend(reported)
        return Enrolment(name, len(accepted), reported)

    def _primary_faces(
        self, batch: Sequence[ImageInput]
    ) -> tuple[list[tuple[int, np.ndarray, Face]], list[tuple[int, FaceRecError]]]:
        """(position, pixels, embedded primary face) of each image that has one, and
        (position, error) of each that cannot be read or has no face."""
        refused: list[tuple[int, FaceRecError]] = []
        read: list[tuple[int, np.ndarray]] = []
        for k, image in enumerate(batch):
            try:
                read.append((k, load_image(image)))
            except FaceRecError as exc:
                refused.append((k, exc))
        pixels = [p for _, p in read]
        analysed = self.recognizer.pipeline.analyze(pixels, primary_only=True) if read else []
        photos = []
        for (k, image), result in zip(read, analysed, strict=True):
            if result.faces:
                photos.append((k, image, result.faces[0]))
            else:
                refused.append((k, NoFaceError(f"no face found in {image_label(batch[k], k)}")))
        return photos, refused

    def operating_point(self) -> OperatingPoint:
        """The threshold for the gallery's current size, and where it came from.

        >>> from facerec import FaceRecognizer
        >>> gallery = FaceRecognizer().gallery(fpir=0.01)
        >>> point = gallery.operating_point()
        >>> point.fpir, point.gallery_size, point.method
        (0.01, 0, 'centroid')
        """
        return self.policy.operating_point(len(self), self.fpir, self.threshold)

    def identify(self, image: ImageInput, top_k: int = 5) -> list[Identification]:
        """Who each face of ``image`` is: its ``top_k`` candidates and the open-set
        decision (``match`` None: not enrolled), one
        :class:`~facerec.api.results.Identification` per face; an empty list when the
        image has no face. See :class:`~facerec.api.results.Identification` for an
        example."""
        if top_k < 1:
            raise InvalidArgumentError("top_k must be at least 1")
        faces = self.recognizer.embed(image)
        if not faces:
            return []
        probes = np.stack([f.embedding for f in faces if f.embedding is not None])
        decisions = self.policy.identify(self._index, probes, top_k, self.fpir, self.threshold)
        return [Identification(f, d) for f, d in zip(faces, decisions, strict=True)]

    def match_policy(self, recognizer: FaceRecognizer | None = None) -> GalleryPolicy:
        """The gallery at its current operating point as video's
        :class:`~facerec.video.MatchPolicy`, for a stream analysed by ``recognizer``
        (default: the gallery's own), which must embed with the same model (else
        ``model_mismatch``).

        >>> from facerec import FaceRecognizer
        >>> FaceRecognizer().gallery(threshold=0.6).match_policy().point.source
        'explicit'
        """
        from facerec.video import GalleryPolicy

        if recognizer is not None and recognizer.model_id != self.recognizer.model_id:
            raise InvalidArgumentError(
                f"the gallery holds templates of {self.recognizer.model_id}, not of "
                f"{recognizer.model_id}",
                code="model_mismatch",
            )
        return GalleryPolicy(self._index, self.operating_point())


__all__ = ["Gallery"]
