"""Tenant scope: the namespace (tenant) and gallery a subject belongs to and a caller acts
in, their defaults, and the check every id passes before it reaches a query or a Milvus
filter expression.

Where scope is applied: SQL queries (``gateway.storage.subjects``), Milvus filters
(``gateway.index.milvus.scope_filter``), a caller's view (``Caller.sees``) and the 1:N
decision (``gateway.service.matching``); all take their names and defaults from here.
"""

from __future__ import annotations

import re

from facerec.errors import InvalidArgumentError

DEFAULT_NAMESPACE = "default"
DEFAULT_GALLERY = "default"
Scope = tuple[str, str]  # (namespace, gallery)
DEFAULT_SCOPE: Scope = (DEFAULT_NAMESPACE, DEFAULT_GALLERY)  # also of data from before scopes

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_id(value: str, what: str = "id") -> str:
    """An id (of a subject, a face, a namespace, a gallery) as given, when it holds only
    letters, digits, '_' and '-' (1-64 of them); else ``invalid_id``. Ids reach SQL and
    Milvus filter expressions."""
    if not _ID.fullmatch(value):
        raise InvalidArgumentError(f"invalid {what} {value!r}", code="invalid_id")
    return value


__all__ = ["DEFAULT_GALLERY", "DEFAULT_NAMESPACE", "DEFAULT_SCOPE", "Scope", "check_id"]
