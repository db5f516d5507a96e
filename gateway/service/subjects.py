"""Subjects, independent of HTTP: creating, reading, listing, renaming and deleting the
people enrolled, within the caller's namespace and gallery, and the retention purge.

A subject out of the caller's scope is 404, as if it did not exist (the scope is in the
query: :meth:`gateway.storage.subjects.SubjectRepository.get`). Deleting one goes through
:class:`~gateway.gallery.Gallery` (vectors, then the record with its data key); every
change is audited.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gateway.errors import ForbiddenError, NotFoundError
from gateway.gallery import Gallery
from gateway.scope import DEFAULT_GALLERY, DEFAULT_NAMESPACE, check_id
from gateway.service.matching import GallerySizes
from gateway.service.models import ModelCensus
from gateway.service.names import clean_name
from gateway.service.types import UNSET, Audit, Caller, FaceInfo, Subject, SubjectPage
from gateway.storage.faces import FaceRepository
from gateway.storage.subjects import SubjectRepository


class SubjectService:
    """What the subject routes, the other face services (:meth:`get_subject`) and the
    retention task call."""

    def __init__(
        self,
        subjects: SubjectRepository,
        faces: FaceRepository,
        gallery: Gallery,
        audit: Audit,
        sizes: GallerySizes,
        census: ModelCensus,
    ) -> None:
        self.subjects, self.faces, self.gallery, self.audit = subjects, faces, gallery, audit
        self.sizes, self.census = sizes, census  # told when the gallery changes

    def create_subject(
        self,
        name: str,
        meta: dict[str, Any] | None,
        expires_at: datetime | None,
        caller: Caller,
        gallery: str | None = None,
    ) -> Subject:
        """A new subject in the caller's namespace, in ``gallery`` (the key's own gallery
        when it has one; another one is refused)."""
        if caller.gallery is not None and gallery not in (None, caller.gallery):
            raise ForbiddenError(f"this key may only add subjects to gallery {caller.gallery!r}")
        chosen = check_id(gallery or caller.gallery or DEFAULT_GALLERY, "gallery")
        subject = self.subjects.create(
            clean_name(name), meta, expires_at, caller.namespace or DEFAULT_NAMESPACE, chosen
        )
        self.audit("create_subject", "ok", caller, subject=subject.id)
        return subject

    def get_subject(self, subject_id: str, caller: Caller) -> Subject:
        """A subject the caller may see; any other is 404, as if it did not exist."""
        return self.subjects.get(
            check_id(subject_id, "subject id"), caller.namespace, caller.gallery
        )

    def list_subjects(self, caller: Caller, offset: int = 0, limit: int = 50) -> SubjectPage:
        """One page of the subjects the caller may see, oldest first, and how many."""
        items, total = self.subjects.page(offset, limit, caller.namespace, caller.gallery)
        return SubjectPage(items, total)

    def faces_of(self, subject_id: str, caller: Caller) -> list[FaceInfo]:
        """The enrolled faces of a subject (those confirmed in the index), oldest first."""
        faces = self.faces.faces(self.get_subject(subject_id, caller).id)
        return [f for f in faces if f.state == "indexed"]

    def update_subject(
        self,
        subject_id: str,
        caller: Caller,
        name: str | None = None,
        meta: dict[str, Any] | None = None,
        expires_at: datetime | None = UNSET,
    ) -> Subject:
        subject = self.subjects.update(
            self.get_subject(subject_id, caller).id,
            None if name is None else clean_name(name),
            meta,
            expires_at,
        )
        self.audit("update_subject", "ok", caller, subject=subject_id)
        return subject

    def delete_subject(
        self, subject_id: str, caller: Caller, action: str = "delete_subject"
    ) -> int:
        """Delete a subject, its faces and its data key; returns the faces removed."""
        subject = self.get_subject(subject_id, caller)
        removed = self.gallery.delete_subject(subject.id)
        self.sizes.changed(-1 if removed else 0, subject.scope)
        self.census.changed()
        self.audit(action, "ok", caller, subject=subject_id)
        return removed

    def purge_expired(self, caller: Caller) -> list[str]:
        """Delete every subject whose expiry has passed (each audited as ``expire``)."""
        purged = []
        for subject_id in self.subjects.expired():
            try:
                self.delete_subject(subject_id, caller, action="expire")
                purged.append(subject_id)
            except NotFoundError:
                pass  # deleted meanwhile
        return purged
