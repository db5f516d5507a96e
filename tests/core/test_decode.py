"""Decoding: every accepted format and mode, EXIF orientation, and every refusal code."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from facerec.errors import ImageError
from facerec.imaging.decode import (
    DECODE_BYTES_PER_PIXEL,
    DecodeLimits,
    ImageInfo,
    decode_cost,
    decode_image,
    probe_image,
    read_image,
)
from tests.support.data import lfw_path


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def face() -> Image.Image:
    return Image.open(lfw_path("Amber_Tamblyn_0001")).convert("RGB")


def code_of(data: bytes, limits: DecodeLimits | None = None) -> str:
    with pytest.raises(ImageError) as info:
        decode_image(data, limits or DecodeLimits())
    return info.value.code


@pytest.mark.parametrize(
    ("fmt", "kw"),
    [
        ("JPEG", {"quality": 95}),
        ("PNG", {}),
        ("WEBP", {"lossless": True}),
        ("BMP", {}),
        ("TIFF", {}),
        ("GIF", {}),
    ],
)
def test_formats_decode_to_rgb(fmt: str, kw: dict[str, object]) -> None:
    src = face()
    out = decode_image(encode(src, fmt, **kw))
    assert out.shape == (150, 150, 3) and out.dtype == np.uint8
    tolerance = 60 if fmt == "GIF" else 8  # GIF is palette-quantised
    assert np.abs(out.astype(int) - np.asarray(src, int)).mean() < tolerance


def test_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (40, 40), c) for c in [(255, 0, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    out = decode_image(data)
    assert out[20, 20, 0] > 200 and out[20, 20, 2] < 50


def test_exif_orientation_is_applied() -> None:
    src = face()
    rotated = src.transpose(Image.Transpose.ROTATE_90)  # stored sideways ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... and tagged "rotate 90 CW to display"
    out = decode_image(encode(rotated, "JPEG", quality=95, exif=exif.tobytes()))
    assert out.shape == (150, 150, 3)
    upright = np.asarray(src, int)
    assert np.abs(out.astype(int) - upright).mean() < 8
    sideways = np.asarray(rotated, int)
    assert np.abs(out.astype(int) - sideways).mean() > 20


def test_modes_are_converted_to_rgb() -> None:
    gray = decode_image(encode(face().convert("L"), "PNG"))
    assert gray.shape == (150, 150, 3) and (gray[..., 0] == gray[..., 2]).all()

    rgba = Image.new("RGBA", (30, 30), (255, 0, 0, 0))
    rgba.putpixel((5, 5), (0, 255, 0, 255))
    out = decode_image(encode(rgba, "PNG"))
    assert tuple(out[0, 0]) == (255, 255, 255)  # transparent -> white, not hidden red
    assert tuple(out[5, 5]) == (0, 255, 0)

    cmyk = decode_image(encode(face().convert("CMYK"), "JPEG", quality=95))
    assert np.abs(cmyk.astype(int) - np.asarray(face(), int)).mean() < 12

    sixteen = Image.new("I;16", (30, 30), 0)
    sixteen.putpixel((3, 3), 65535)
    sixteen.putpixel((4, 4), 32896)
    out = decode_image(encode(sixteen, "PNG"))
    assert out[3, 3, 0] == 255 and out[4, 4, 0] == 128 and out[0, 0, 0] == 0


def test_refusals_have_their_own_codes() -> None:
    data = lfw_path("Amber_Tamblyn_0001").read_bytes()
    assert code_of(b"") == "empty_file"
    assert code_of(b"just some text, renamed to .jpg\n" * 20) == "not_an_image"
    assert code_of(data[: len(data) // 2]) == "truncated_image"
    assert code_of(encode(Image.new("RGB", (1, 1)), "PNG")) == "image_too_small"
    assert code_of(b"%PDF-1.7\n%binary\n") == "unsupported_format"
    assert code_of(encode(Image.new("RGB", (32, 32)), "ICO")) == "unsupported_format"
    assert code_of(data, DecodeLimits(max_bytes=1000)) == "file_too_large"
    assert code_of(encode(face(), "PNG"), DecodeLimits(max_pixels=100 * 100)) == "image_too_large"


def _png_bomb(side: int) -> bytes:
    """A valid 1-bit PNG of side x side black pixels, a few KB on disk."""
    raw = zlib.compress(b"\x00" * (1 + side // 8) * side, 9)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding() -> None:
    data = _png_bomb(30000)
    assert len(data) < 200_000
    assert code_of(data) == "decompression_bomb"
    # Below Pillow's own bomb limit, our pixel limit still refuses it as a bomb.
    assert code_of(_png_bomb(12000)) == "decompression_bomb"


def test_read_image_reports_missing_files(tmp_path: object) -> None:
    with pytest.raises(ImageError) as info:
        read_image("/nonexistent/face.jpg")
    assert info.value.code == "file_not_found"


def _claiming(width: int, height: int, sof: int = 0xC0) -> bytes:
    """A real small JPEG whose frame header is rewritten to claim ``width`` x ``height``."""
    data = bytearray(encode(face().resize((64, 64)), "JPEG", quality=90))
    at = data.index(b"\xff\xc0")
    data[at + 1] = sof
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_small_jpeg_claiming_a_huge_frame_is_truncated_from_the_header() -> None:
    """The hostile tester's 3.6 KB JPEG claiming 6000x6000: libjpeg fills the missing data
    with grey once it meets the end marker, so Pillow alone decodes a 108 MB frame."""
    data = _claiming(6000, 6000)
    assert len(data) < 4000
    with Image.open(io.BytesIO(data)) as img:
        img.load()  # Pillow alone accepts it: the hole the frame-size floor closes
        assert img.size == (6000, 6000)
    with pytest.raises(ImageError) as info:
        probe_image(data)
    assert info.value.code == "truncated_image"
    assert code_of(data) == "truncated_image"
    # A frame the data can hold is accepted and described without decoding.
    good = encode(face(), "JPEG", quality=90)
    assert probe_image(good) == ImageInfo("JPEG", 150, 150)


def test_arithmetic_coded_jpeg_is_unsupported() -> None:
    assert code_of(_claiming(64, 64, sof=0xC9)) == "unsupported_format"


def test_decoding_is_counted_in_bytes_by_channels_and_depth() -> None:
    """What the decode budget reserves comes from the header: pixels times the bytes
    the layout takes through decoding (perf/decode_memory.py measures them)."""
    side = 64
    grey = probe_image(encode(Image.new("L", (side, side)), "PNG"))
    rgb = probe_image(encode(Image.new("RGB", (side, side)), "JPEG"))
    rgba = probe_image(encode(Image.new("RGBA", (side, side)), "PNG"))
    palette = Image.new("P", (side, side))
    keyed = probe_image(encode(palette, "PNG", transparency=0))
    assert (grey.mode, rgb.mode, rgba.mode, keyed.mode) == ("L", "RGB", "RGBA", "P")
    assert keyed.transparent and not probe_image(encode(palette, "PNG")).transparent
    costs = [decode_cost(i) for i in (grey, rgb, rgba)]
    assert costs == sorted(costs) and costs[0] < costs[2]
    assert decode_cost(keyed) == decode_cost(rgba)  # composited like RGBA
    # a mode the table does not know counts as the most expensive one
    assert decode_cost(ImageInfo("X", side, side, "BGR;24")) == side * side * max(
        DECODE_BYTES_PER_PIXEL.values()
    )
    # every layout decode_image turns into RGB is priced
    for mode in ("1", "L", "P", "RGB", "CMYK", "RGBA", "LA", "I;16", "I", "F", "YCbCr"):
        assert mode in DECODE_BYTES_PER_PIXEL
    # the per-image limit refuses from the header, naming the layout
    limits = DecodeLimits(max_decode_bytes=decode_cost(rgb))
    assert decode_image(encode(Image.new("RGB", (side, side)), "JPEG"), limits).shape[2] == 3
    with pytest.raises(ImageError) as info:
        decode_image(encode(Image.new("RGBA", (side, side)), "PNG"), limits)
    assert info.value.code == "image_too_large" and "RGBA" in info.value.message
