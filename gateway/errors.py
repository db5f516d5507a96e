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


class IndexUnavailableError(FaceRecError):
    """The Milvus index did not answer or refused the request (down, unreachable, wrong
    credentials or certificate, timed out). Nothing was half-written: retry later."""

    code = "index_unavailable"
    http_status = 503
    retriable = True


class DatabaseUnavailableError(FaceRecError):
    """The database did not answer (restarting, unreachable, out of connections). Nothing
    was half-written: each change is one transaction. Retry later."""

    code = "database_unavailable"
    http_status = 503
    retriable = True


def database_error(exc: BaseException) -> FaceRecError:
    """What a SQLAlchemy error means for the caller: a connection-level failure is
    :class:`DatabaseUnavailableError` (503, retry), anything else an internal error."""
    from sqlalchemy import exc as sql

    unavailable = (
        sql.OperationalError,
        sql.InterfaceError,
        sql.DisconnectionError,
        sql.TimeoutError,
    )
    if isinstance(exc, unavailable) or getattr(exc, "connection_invalidated", False):
        return DatabaseUnavailableError(
            "the database did not answer; retry in a moment", retry_after=1
        )
    return FaceRecError("an unexpected database error occurred")  # internal_error, 500
