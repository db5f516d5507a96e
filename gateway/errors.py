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


class AuthError(FaceRecError):
    """No key, an unknown or revoked key, or a malformed one."""

    code = "unauthorized"
    http_status = 401


class ForbiddenError(FaceRecError):
    """A valid key whose role does not allow the action."""

    code = "forbidden"
    http_status = 403


class NotFoundError(FaceRecError):
    """An unknown subject, face or other record."""

    code = "not_found"
    http_status = 404


class InvalidRequestError(FaceRecError):
    """A well-formed request whose values are refused (a name with control characters,
    ...): the same code as the request schema's own refusals."""

    code = "invalid_request"
    http_status = 422


class ConflictError(FaceRecError):
    """The request clashes with what is stored (a duplicate, a concurrent change)."""

    code = "conflict"
    http_status = 409


class PayloadTooLargeError(FaceRecError):
    """An upload or a whole request over the configured limits."""

    code = "payload_too_large"
    http_status = 413


class UnsupportedMediaTypeError(FaceRecError):
    """A request body of the wrong content type (JSON where files were expected, ...)."""

    code = "unsupported_media_type"
    http_status = 415
