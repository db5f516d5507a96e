"""Detection and embedding, independent of HTTP: every face of an image with its box,
score, landmarks and enrolment quality (``/v1/detect``), or with its embedding
(``/v1/embed``, audited: embeddings are biometric data).
"""

from __future__ import annotations

from facerec.pipeline import Face
from gateway.service.analyzer import Analyzer
from gateway.service.enrolment import face_quality
from gateway.service.types import Audit, Caller, DetectedFace


class DetectionService:
    """What the detect and embed routes call."""

    def __init__(self, analyzer: Analyzer, audit: Audit) -> None:
        self.analyzer, self.audit = analyzer, audit

    def detect(self, data: bytes) -> list[DetectedFace]:
        """Every face with its box, score, landmarks and enrolment quality."""
        faces = self.analyzer.analyze(data)
        return [DetectedFace(f, face_quality(f)) for f in faces.faces]

    def embed(self, data: bytes, caller: Caller) -> list[Face]:
        """Every face with its embedding float32[D] (audited: embeddings are biometric)."""
        faces = self.analyzer.analyze(data)
        self.audit("embed", "ok", caller)
        return faces.faces
