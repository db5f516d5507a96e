"""facerec: face detection, alignment, FaceNet embeddings and matching on ONNX Runtime.

The public API (:mod:`facerec.api`, and :class:`~facerec.errors.FaceRecError`, the base of
every error it raises) is exported here; the API's modules are imported when a name is
first used, so that ``import facerec`` stays light: ONNX Runtime loads when a
:class:`FaceRecognizer` is built.

>>> import facerec
>>> recognizer = facerec.FaceRecognizer()
>>> [face.score > 0.9 for face in recognizer.detect("tests/data/lfw/Dean_Barker_0001.jpg")]
[True]
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from facerec.errors import FaceRecError

if TYPE_CHECKING:
    from facerec.api import (
        Enrolment,
        FaceRecognizer,
        Gallery,
        Identification,
        RefusedPhoto,
        Verification,
        Watch,
    )

__version__ = "0.1.0"

__all__ = [
    "Enrolment",
    "FaceRecError",
    "FaceRecognizer",
    "Gallery",
    "Identification",
    "RefusedPhoto",
    "Verification",
    "Watch",
]
_API = frozenset(__all__) - {"FaceRecError"}


def __getattr__(name: str) -> Any:
    """The API's names, imported from :mod:`facerec.api` on first use."""
    if name not in _API:
        raise AttributeError(f"module 'facerec' has no attribute {name!r}")
    value = getattr(import_module("facerec.api"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
