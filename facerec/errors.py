"""One exception hierarchy for every failure a caller can act on.

Each error carries a machine-readable ``code``, the HTTP status a service should answer
with, and whether retrying the same request could succeed. Front ends (CLI, gateway) turn
any :class:`FaceRecError` into ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

from typing import Any


class FaceRecError(Exception):
    """Base class: a failure with a stable code.

    >>> from facerec import FaceRecError, FaceRecognizer
    >>> try:
    ...     FaceRecognizer().detect(b"not an image")
    ... except FaceRecError as exc:
    ...     print(exc.code, exc.http_status, exc.retriable)
    not_an_image 422 False
    """

    code: str = "internal_error"
    http_status: int = 500
    retriable: bool = False

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep code and details when an error crosses a process boundary (batch workers).
        return (_rebuild, (type(self), self.message, self.code, self.details))

    def to_dict(self) -> dict[str, Any]:
        """The JSON error object: ``{"code", "message", **details}``."""
        return {"code": self.code, "message": self.message, **self.details}


class ImageError(FaceRecError):
    """The bytes given are not an image this system accepts.

    Codes: ``empty_file``, ``not_an_image``, ``unsupported_format``, ``truncated_image``,
    ``file_too_large``, ``image_too_large``, ``decompression_bomb``, ``image_too_small``,
    ``corrupt_image``.
    """

    code = "not_an_image"
    http_status = 422


class NoFaceError(FaceRecError):
    """An operation that needs a face found none."""

    code = "no_face"
    http_status = 422


class ModelNotFoundError(FaceRecError):
    """Model files are missing: run ``facerec models``."""

    code = "models_missing"
    http_status = 503
    retriable = True


class InvalidArgumentError(FaceRecError):
    """A parameter is out of range or inconsistent."""

    code = "invalid_argument"
    http_status = 400


def _rebuild(
    cls: type[FaceRecError], message: str, code: str, details: dict[str, Any]
) -> FaceRecError:
    return cls(message, code=code, **details)
