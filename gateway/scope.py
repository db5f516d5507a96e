"""Tenant scope: the namespace (tenant) and gallery a subject belongs to and a caller acts
in, their defaults, the one rule that applies a scope, and the check every id passes before
it reaches a query or a Milvus filter expression.

A subject has a :data:`Scope` (both parts set); a caller acts in an :data:`Area`, where a
part left None means any (the service itself searches :data:`EVERYWHERE`). The one rule
for whether a subject is within an area is :func:`conditions`: SQL queries apply it as
``WHERE`` terms (``gateway.storage.subjects.in_scope``), Milvus searches as a filter
expression (``gateway.index.milvus.scope_filter``), and :func:`within` on values, for a
caller's view (``Caller.sees``), the candidate templates opened for a search
(``gateway.storage.faces``) and the 1:N gallery sizes (``gateway.service.matching``).
"""

from __future__ import annotations

import re

from facerec.errors import InvalidArgumentError

DEFAULT_NAMESPACE = "default"
DEFAULT_GALLERY = "default"
Scope = tuple[str, str]  # (namespace, gallery)
DEFAULT_SCOPE: Scope = (DEFAULT_NAMESPACE, DEFAULT_GALLERY)  # also of data from before scopes
Area = tuple[str | None, str | None]  # (namespace, gallery) acted in; None: any
EVERYWHERE: Area = (None, None)
SCOPE_FIELDS = ("namespace", "gallery")  # the names of a scope's parts, in order

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def conditions(area: Area) -> list[tuple[str, str]]:
    """What a subject must hold to be within ``area``: (field, value) for each part of it
    that is given (a part left None is any); none for :data:`EVERYWHERE`."""
    pairs = zip(SCOPE_FIELDS, area, strict=True)
    return [(field, value) for field, value in pairs if value is not None]


def within(area: Area, scope: Scope) -> bool:
    """Whether a subject of ``scope`` is within ``area`` (:func:`conditions`)."""
    held = dict(zip(SCOPE_FIELDS, scope, strict=True))
    return all(held[field] == value for field, value in conditions(area))


def check_id(value: str, what: str = "id") -> str:
    """An id (of a subject, a face, a namespace, a gallery) as given, when it holds only
    letters, digits, '_' and '-' (1-64 of them); else ``invalid_id``. Ids reach SQL and
    Milvus filter expressions."""
    if not _ID.fullmatch(value):
        raise InvalidArgumentError(f"invalid {what} {value!r}", code="invalid_id")
    return value


__all__ = [
    "DEFAULT_GALLERY",
    "DEFAULT_NAMESPACE",
    "DEFAULT_SCOPE",
    "EVERYWHERE",
    "SCOPE_FIELDS",
    "Area",
    "Scope",
    "check_id",
    "conditions",
    "within",
]
