"""What the public API takes for an image, and how each kind becomes RGB pixels.

A path (``str`` or :class:`os.PathLike`) or encoded bytes go through the project's decode
path (:mod:`facerec.imaging.decode`: the same size limits and the same error codes as
the command line and the gateway); a numpy array must already be RGB ``uint8[H, W, 3]``
and a Pillow image is converted as a decoded file is, both held to the same limits.
"""

from __future__ import annotations

import os
from typing import TypeAlias, TypeGuard

import numpy as np
from PIL import Image

from facerec.errors import InvalidArgumentError
from facerec.imaging.decode import check_frame, decode_image, pil_to_rgb, read_image

ImageInput: TypeAlias = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray | Image.Image
)
"""An image as the API takes it: a file path, the file's bytes, RGB ``uint8[H, W, 3]``
pixels, or a Pillow image."""


def load_image(image: ImageInput) -> np.ndarray:
    """RGB ``uint8[H, W, 3]`` pixels of ``image``.

    Raises :class:`~facerec.errors.ImageError` with the decoder's codes (``empty_file``,
    ``not_an_image``, ``truncated_image``, ``file_not_found``, ...) and
    :class:`~facerec.errors.InvalidArgumentError` for a value that is no kind of image.
    """
    if isinstance(image, str | os.PathLike):
        return read_image(os.fspath(image))
    if isinstance(image, bytes | bytearray | memoryview):
        return decode_image(bytes(image))
    if isinstance(image, np.ndarray):
        return check_frame(image)
    if isinstance(image, Image.Image):
        return pil_to_rgb(image)
    raise InvalidArgumentError(
        "an image is a path, bytes, an RGB uint8[H, W, 3] array or a PIL image, "
        f"not {type(image).__name__}"
    )


def image_label(image: ImageInput, index: int) -> str:
    """How a result names ``image``: its path, else ``#index`` (its place in the call)."""
    if isinstance(image, str | os.PathLike):
        return os.fspath(image)
    return f"#{index}"


def is_single(images: object) -> TypeGuard[ImageInput]:
    """Whether ``images`` is one image rather than a sequence of them."""
    return isinstance(
        images, str | os.PathLike | bytes | bytearray | memoryview | np.ndarray | Image.Image
    )
