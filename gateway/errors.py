"""Gateway errors, in the core package's hierarchy (machine-readable code, HTTP status)."""

from __future__ import annotations

from facerec.errors import FaceRecError


class KeyMaterialError(FaceRecError):
    """A master key is missing, malformed, or not the one that wrapped a record."""

    code = "invalid_key_material"
    http_status = 500


class IntegrityError(FaceRecError):
    """Stored data failed authentication: it was altered, or belongs to another record."""

    code = "integrity_error"
    http_status = 500
