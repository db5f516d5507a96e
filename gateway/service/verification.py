"""1:1, independent of HTTP: a probe image against an enrolled subject, or two images
against each other, decided at the model's verification threshold (or the request's) by
:func:`facerec.matching.verified`. Only templates of the running model are compared
(:mod:`gateway.model_ids`); every decision is audited with its score and threshold.
"""

from __future__ import annotations

import numpy as np

from facerec.errors import FaceRecError, InvalidArgumentError, NoFaceError
from facerec.matching import verified
from gateway.model_ids import mismatch
from gateway.service.analyzer import Analyzer
from gateway.service.subjects import SubjectService
from gateway.service.types import Audit, Caller, PairVerification, Upload, Verification
from gateway.storage.faces import FaceRepository
from gateway.storage.model_migration import ModelMigrationRepository


class VerificationService:
    """What the verify routes call."""

    def __init__(
        self,
        subjects: SubjectService,
        faces: FaceRepository,
        models: ModelMigrationRepository,
        analyzer: Analyzer,
        audit: Audit,
        model_id: str,
    ) -> None:
        self.subjects, self.faces, self.models = subjects, faces, models
        self.analyzer, self.audit = analyzer, audit
        self.model_id = model_id  # only templates of this model are compared
        self.threshold = analyzer.pipeline.threshold  # the model's, for 1:1

    def _threshold(self, threshold: float | None) -> float:
        if threshold is None:
            return self.threshold
        if not -1.0 <= threshold <= 1.0:
            raise InvalidArgumentError("threshold must be a cosine similarity in [-1, 1]")
        return threshold

    def verify(
        self, data: bytes, subject_id: str, caller: Caller, threshold: float | None = None
    ) -> Verification:
        """1:1 against the subject's best-matching template of the running model; a subject
        with templates only of other models is refused (409 ``template_model_mismatch``)."""
        limit = self._threshold(threshold)
        self.subjects.get_subject(subject_id, caller)
        templates = [v for _, _, v in self.faces.templates(subject_id, self.model_id)]
        if not templates:
            stored = list(self.models.model_counts(subject_id))
            if stored:
                raise mismatch(subject_id, self.model_id, stored)
            raise NoFaceError(
                f"subject {subject_id} has no enrolled faces", code="subject_has_no_faces"
            )
        probe = self.analyzer.probe(data)
        assert probe.embedding is not None
        similarity = float(np.max(np.stack(templates) @ probe.embedding))
        match = verified(similarity, limit)
        self.audit(
            "verify",
            "match" if match else "no_match",
            caller,
            subject=subject_id,
            score=similarity,
            threshold=limit,
        )
        return Verification(match, round(similarity, 6), limit, subject_id, probe)

    def verify_pair(
        self, data_a: bytes, data_b: bytes, caller: Caller, threshold: float | None = None
    ) -> PairVerification:
        limit = self._threshold(threshold)
        uploads = [Upload("image_a", data_a), Upload("image_b", data_b)]
        found = self.analyzer.analyze_many(uploads, True)
        faces = []
        for name, f in zip(("image_a", "image_b"), found, strict=True):
            if isinstance(f, FaceRecError):
                f.details.setdefault("image", name)
                raise f
            if not f.faces:
                raise NoFaceError(f"no face found in {name}", image=name)
            faces.append(f.faces[0])
        a, b = (f.embedding for f in faces)
        assert a is not None and b is not None
        similarity = float(a @ b)
        match = verified(similarity, limit)
        self.audit(
            "verify_pair",
            "match" if match else "no_match",
            caller,
            score=similarity,
            threshold=limit,
        )
        return PairVerification(match, round(similarity, 6), limit, faces[0], faces[1])
