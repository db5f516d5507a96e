"""Decode untrusted image bytes into RGB ``uint8[H, W, 3]``.

Limits are checked from the header before any pixel is decoded, so a tiny file that
claims 30000 x 30000 pixels is refused without allocating its frame. :func:`probe_image`
runs those checks alone, so a caller can reserve memory for the frame (see
:mod:`facerec.imaging.budget`) before :func:`decode_image` allocates it.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facerec.errors import ImageError

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
"""File name endings taken for images when a folder is listed."""

# Signatures of formats people upload that this system does not read.
_KNOWN_UNSUPPORTED = (
    (b"%PDF", "PDF"),
    (b"<svg", "SVG"),
    (b"<?xml", "SVG/XML"),
    (b"8BPS", "PSD"),
)
_FTYP_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF"}

# JPEG start-of-frame markers (SOF0-SOF15 but DHT, JPG and DAC); the arithmetic-coded ones.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_ARITHMETIC_SOF = frozenset({0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on what :func:`decode_image` accepts.

    ``bomb_ratio``: a frame with more than this many pixels per byte of file, and over
    ``max_pixels``, is reported as a decompression bomb rather than merely too large.
    ``max_decode_bytes``: the most memory decoding one image may take at its peak, as
    :func:`decode_cost` counts it from the header (channels and depth included).
    """

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 12
    bomb_ratio: int = 1000
    max_decode_bytes: int | None = None  # what decoding may allocate (decode_cost)


DEFAULT_LIMITS = DecodeLimits()


def _sniff_unsupported(data: bytes) -> str | None:
    head = data[:64].lstrip()
    for magic, name in _KNOWN_UNSUPPORTED:
        if head.startswith(magic):
            return name
    if data[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(data[8:12], "ISO-BMFF")
    return None


def _check_size(width: int, height: int, nbytes: int, limits: DecodeLimits) -> None:
    pixels = width * height
    if pixels > limits.max_pixels:
        code = "decompression_bomb" if pixels > limits.bomb_ratio * nbytes else "image_too_large"
        raise ImageError(
            f"image is {width}x{height} ({pixels} pixels); the limit is {limits.max_pixels}",
            code=code,
            width=width,
            height=height,
        )
    if min(width, height) < limits.min_side:
        raise ImageError(
            f"image is {width}x{height}; each side must be at least {limits.min_side} px",
            code="image_too_small",
            width=width,
            height=height,
        )


def _jpeg_frame_marker(data: bytes) -> int | None:
    """The SOFn marker of a JPEG stream (walking the segments from SOI), or None."""
    pos = 2
    for _ in range(256):  # real files reach the frame header within a few segments
        while pos < len(data) and data[pos] == 0xFF:
            pos += 1  # a marker, possibly after fill bytes
        if pos + 3 > len(data) or data[pos - 1] != 0xFF:
            return None
        marker = data[pos]
        if marker in _SOF_MARKERS:
            return marker
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 1  # standalone markers carry no length
            continue
        pos += 1 + int.from_bytes(data[pos + 1 : pos + 3], "big")
    return None


def _check_jpeg_data(data: bytes, width: int, height: int) -> None:
    """Refuse, from the header, JPEG data that cannot hold its frame.

    Huffman coding spends at least one bit on every 8x8 block of the first component (its
    DC coefficient), so a frame of ``ceil(W/8) * ceil(H/8)`` blocks needs at least that many
    bits. A shorter file was cut short; libjpeg would otherwise decode it into a full-size
    grey frame once it meets an end marker. Arithmetic-coded JPEG, which has no such floor,
    is not accepted (browsers do not display it either).
    """
    marker = _jpeg_frame_marker(data)
    if marker in _ARITHMETIC_SOF:
        raise ImageError(
            "arithmetic-coded JPEG is not supported; send a baseline or progressive JPEG",
            code="unsupported_format",
            format="JPEG (arithmetic)",
        )
    blocks = -(-width // 8) * -(-height // 8)
    if len(data) * 8 < blocks:
        raise ImageError(
            f"the JPEG holds {len(data)} bytes, fewer than the {-(-blocks // 8)} its "
            f"{width}x{height} frame needs at the very least: its data ends early",
            code="truncated_image",
            width=width,
            height=height,
        )


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> contiguous ``uint8[H, W, 3]``; 16-bit and float are rescaled.

    Written for memory, not brevity: no copy of a frame that is already RGB, arithmetic in
    place, and alpha composited into one RGB frame (what each layout costs at its peak is
    :data:`DECODE_BYTES_PER_PIXEL`, measured by ``perf/decode_memory.py``)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        if not arr.flags.writeable:
            arr = arr.copy()
        top = 65535.0 if img.mode.startswith("I;16") or float(arr.max(initial=0)) > 255 else 255.0
        np.multiply(arr, 255.0 / top, out=arr)
        arr += 0.5
        np.clip(arr, 0, 255, out=arr)
        gray = arr.astype(np.uint8)
        del arr
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white, the way a viewer shows it, instead of exposing hidden pixels.
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)  # in place
        del rgba
        img = background.convert("RGB")
        del background
    elif img.mode == "L":  # grey to RGB without Pillow's 4-byte frame
        gray = np.asarray(img, dtype=np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an accepted image says: format and frame size."""

    format: str
    width: int
    height: int
    mode: str = "RGB"  # Pillow's, from the header: channels and depth
    transparent: bool = False  # a palette image with a transparent colour (composited)

    @property
    def pixels(self) -> int:
        return self.width * self.height


DECODE_BYTES_PER_PIXEL = {
    # Peak bytes per pixel that decode_image allocates for a frame held in this Pillow
    # mode, above what it held before: Pillow's own frame (RGB and CMYK take 4 bytes a
    # pixel in it), the conversion to RGB, and the copy numpy's array interface makes.
    # Measured by perf/decode_memory.py (3000x3000 images), rounded up with a byte of
    # margin; the result, uint8 RGB (3 bytes a pixel), is included.
    "1": 12,
    "L": 7,
    "P": 12,
    "RGB": 11,
    "YCbCr": 15,
    "CMYK": 15,
    "RGBA": 15,
    "LA": 17,
    "PA": 17,
    "I;16": 9,
    "I;16B": 9,
    "I;16L": 9,
    "I;16N": 9,
    "I": 13,
    "F": 13,
}
_WORST_BYTES_PER_PIXEL = max(DECODE_BYTES_PER_PIXEL.values())


def decode_cost(info: ImageInfo) -> int:
    """The memory :func:`decode_image` takes at its peak for this image, in bytes, from
    its header: pixels times :data:`DECODE_BYTES_PER_PIXEL` of its mode (an unlisted mode
    counts as the most expensive one). A transparent palette image is composited like
    RGBA."""
    per_pixel = DECODE_BYTES_PER_PIXEL.get(info.mode, _WORST_BYTES_PER_PIXEL)
    if info.transparent:
        per_pixel = max(per_pixel, DECODE_BYTES_PER_PIXEL["RGBA"])
    return info.pixels * per_pixel


def _open(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Open ``data`` (header only) and run every check that needs no pixel decoded."""
    if not data:
        raise ImageError("the file is empty", code="empty_file")
    if len(data) > limits.max_bytes:
        raise ImageError(
            f"the file is {len(data)} bytes; the limit is {limits.max_bytes}",
            code="file_too_large",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(str(exc), code="decompression_bomb") from None
    except UnidentifiedImageError:
        unsupported = _sniff_unsupported(data)
        if unsupported is not None:
            raise ImageError(
                f"{unsupported} files are not supported; send JPEG, PNG, WebP, BMP, TIFF or GIF",
                code="unsupported_format",
                format=unsupported,
            ) from None
        raise ImageError("the file is not a recognised image", code="not_an_image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"the image header is unreadable: {exc}", code="corrupt_image") from None
    try:
        if img.format not in SUPPORTED_FORMATS:
            raise ImageError(
                f"{img.format} images are not supported; send JPEG, PNG, WebP, BMP, TIFF or GIF",
                code="unsupported_format",
                format=img.format,
            )
        _check_size(img.width, img.height, len(data), limits)
        if img.format in ("JPEG", "MPO"):
            _check_jpeg_data(data, img.width, img.height)
        _check_cost(_info(img), limits)
    except BaseException:
        img.close()
        raise
    return img


def _info(img: Image.Image) -> ImageInfo:
    transparent = img.mode == "P" and "transparency" in img.info
    return ImageInfo(str(img.format), img.width, img.height, img.mode, transparent)


def _check_cost(info: ImageInfo, limits: DecodeLimits) -> None:
    cost = decode_cost(info)
    if limits.max_decode_bytes is not None and cost > limits.max_decode_bytes:
        mib = 1024 * 1024
        raise ImageError(
            f"decoding this {info.width}x{info.height} {info.mode} image takes about "
            f"{cost // mib} MiB; the limit is {limits.max_decode_bytes // mib} MiB",
            code="image_too_large",
            width=info.width,
            height=info.height,
            mode=info.mode,
        )


def probe_image(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> ImageInfo:
    """The header checks of :func:`decode_image`, with no pixel decoded.

    Raises the same :class:`ImageError` codes for everything that can be known from the
    header; returns the format and frame size, so a caller can reserve memory for the
    frame before decoding it.
    """
    with _open(data, limits) as img:
        return _info(img)


def decode_image(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode ``data`` into RGB ``uint8[H, W, 3]`` with EXIF orientation applied.

    Raises :class:`ImageError` with a code saying what is wrong: ``empty_file``,
    ``file_too_large``, ``unsupported_format``, ``not_an_image``, ``decompression_bomb``,
    ``image_too_large``, ``image_too_small``, ``truncated_image`` or ``corrupt_image``.
    Animated formats give their first frame.
    """
    with _open(data, limits) as img:
        return _pixels(img, own=True)


def pil_to_rgb(img: Image.Image, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """A Pillow image the caller already holds, held to :func:`decode_image`'s size limits
    and converted as it converts a file (its current frame): EXIF orientation applied,
    any mode to RGB ``uint8[H, W, 3]``. ``img`` is left as it was. Raises
    :class:`ImageError` (``image_too_large``, ``image_too_small``, ``truncated_image``,
    ``corrupt_image``)."""
    _check_size(img.width, img.height, img.width * img.height * len(img.getbands()), limits)
    return _pixels(img, own=False)


def check_frame(image: np.ndarray, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """An image already decoded, held to what :func:`decode_image` gives and accepts: RGB
    ``uint8[H, W, 3]`` (else ``not_an_image``) within the size limits (``image_too_large``,
    ``image_too_small``). Returns it C-contiguous."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageError(
            f"an image array must be RGB uint8[H, W, 3], not {image.dtype}{list(image.shape)}",
            code="not_an_image",
        )
    _check_size(image.shape[1], image.shape[0], image.nbytes, limits)
    return np.ascontiguousarray(image)


def _pixels(img: Image.Image, own: bool) -> np.ndarray:
    """RGB ``uint8[H, W, 3]`` of ``img`` upright. ``own``: an image nobody else holds
    (:func:`decode_image`'s): its first frame, oriented in place (no copy when upright);
    else the current frame of a copy. Damaged data raises :class:`ImageError`."""
    try:
        if own:
            img.seek(0)
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
        else:
            img.load()
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except OSError as exc:
        text = str(exc).lower()
        code = "truncated_image" if "truncat" in text or "broken" in text else "corrupt_image"
        raise ImageError(f"the image data is damaged: {exc}", code=code) from None
    except (ValueError, SyntaxError, EOFError, IndexError) as exc:
        raise ImageError(f"the image data is damaged: {exc}", code="corrupt_image") from None


def read_image(path: str | Path, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Read and decode a file; the size limit is checked before reading it whole."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > limits.max_bytes:
            raise ImageError(
                f"the file is {size} bytes; the limit is {limits.max_bytes}", code="file_too_large"
            )
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"no such file: {p}", code="file_not_found") from None
    except IsADirectoryError:
        raise ImageError(f"{p} is a directory", code="not_a_file") from None
    except PermissionError:
        raise ImageError(f"{p} is not readable", code="permission_denied") from None
    return decode_image(data, limits)
