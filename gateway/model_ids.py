"""Which model computed a template, and keeping templates of different models apart.

Every stored template records the identity of the model that computed it
(:attr:`facerec.models.ModelCard.identity`, ``name:sha``). Embeddings of two models live in
different spaces: comparing them gives meaningless scores. So the gateway compares
templates only within the running model's identity: the search index holds only its
vectors (one Milvus collection per model, :func:`collection_prefix`), 1:1 and the enrolment
consistency gate open only its templates, and a subject enrolled only under another model
is refused with :class:`TemplateModelMismatchError`. ``facerec reembed`` moves stored
templates to the running model from the sealed enrolment images.
"""

from __future__ import annotations

import hashlib
from functools import cache

from facerec.models import BASE_MODEL, load_model_card
from gateway.errors import ConflictError

PREFIX = "faces"  # the collections of the published model keep their original names


@cache
def published_model_id() -> str:
    """The identity of the published model (its packaged card): the model of every
    template stored before templates recorded theirs (the gateway could run no other)."""
    return load_model_card(BASE_MODEL).identity


def collection_prefix(model_id: str) -> str:
    """The Milvus collection prefix of ``model_id``'s vectors: ``faces`` for the published
    model (so existing indexes stay as they are), else ``faces_m`` and 12 hex digits of the
    identity's SHA-256 (collection names allow only letters, digits and '_')."""
    if model_id == published_model_id():
        return PREFIX
    return f"{PREFIX}_m{hashlib.sha256(model_id.encode()).hexdigest()[:12]}"


class TemplateModelMismatchError(ConflictError):
    """The subject's templates were all computed by another model than the running one."""

    code = "template_model_mismatch"


def mismatch(subject_id: str, running: str, stored: list[str]) -> TemplateModelMismatchError:
    """The error for a subject whose templates are only of the ``stored`` models."""
    models = ", ".join(sorted(set(stored)))
    return TemplateModelMismatchError(
        f"subject {subject_id} has templates only of model {models}, not of the running "
        f"model {running}: re-enrol the subject, or run `facerec reembed` (needs the images "
        "kept with FACEREC_STORE_IMAGES)",
        subject_id=subject_id,
        running_model=running,
        stored_models=sorted(set(stored)),
    )
