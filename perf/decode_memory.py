"""What decoding an image really allocates, by pixel layout: the figures behind
``facerec.imaging.decode.DECODE_BYTES_PER_PIXEL``.

    python -m perf.decode_memory --out perf/results

For each layout (RGB and greyscale JPEG, CMYK JPEG, RGB/RGBA/palette/greyscale+alpha PNG,
16-bit PNG, float TIFF...) it writes a 3000x3000 image, then decodes it in a fresh
process with :func:`facerec.imaging.decode.decode_image` and reads that process's peak
resident memory above where it stood before the call (``VmHWM`` after resetting it
through ``/proc/self/clear_refs``). The figure per pixel is what the pixel budget must
count for that layout; the one the code counts stands beside it. Writes
``decode_memory.json``; asserts nothing (``tests/core/test_decode.py`` checks that the
counted figure is never below the measured one).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from perf.common import record, write_json
from perf.proc import reset_peak, status

SIDE = 3000
MB = 1024 * 1024


def sample(kind: str, side: int = SIDE) -> bytes:
    """An image of ``kind`` (``FORMAT:MODE``), ``side`` pixels square, with content."""
    fmt, mode = kind.split(":")
    mode = mode.removesuffix("-rotated")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (side // 10, side // 10, 3), dtype=np.uint8)
    img = Image.fromarray(rgb).resize((side, side))
    if mode in ("I;16", "F", "I"):
        grey = np.asarray(img.convert("L"), dtype=np.float32) * 200.0
        img = Image.fromarray(grey.astype(np.uint16 if mode == "I;16" else np.float32))
        if mode == "I":
            img = img.convert("I")
    else:
        img = img.convert("P" if mode == "PT" else mode)
    options: dict[str, Any] = {"quality": 90} if fmt == "JPEG" else {}
    if mode == "PT":  # a palette with a transparent colour: composited like RGBA
        options["transparency"] = 0
    if kind == "JPEG:RGB-rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # stored sideways: turned upright while decoding
        options["exif"] = exif.tobytes()
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


KINDS = [
    "JPEG:RGB",
    "JPEG:RGB-rotated",
    "JPEG:L",
    "JPEG:CMYK",
    "PNG:RGB",
    "PNG:RGBA",
    "PNG:P",
    "PNG:PT",
    "GIF:P",
    "PNG:1",
    "PNG:L",
    "PNG:LA",
    "PNG:I;16",
    "TIFF:F",
    "TIFF:I",
]


def _child(path: str) -> None:
    """In a fresh process: decode ``path`` and print the peak above the start, in bytes."""
    from facerec.imaging.decode import DecodeLimits, decode_cost, decode_image, probe_image

    data = Path(path).read_bytes()
    limits = DecodeLimits(max_bytes=len(data) + 1, max_pixels=SIDE * SIDE + 1)
    info = probe_image(data, limits)
    pid = os.getpid()
    before = status(pid, "VmRSS")
    reset_peak(pid)
    image = decode_image(data, limits)
    peak = status(pid, "VmHWM") - before
    print(json.dumps({"peak": peak, "mode": info.mode, "counted": decode_cost(info)}))
    del image


def measure(kind: str, folder: Path) -> dict[str, Any]:
    path = folder / f"{kind.replace(':', '-').replace(';', '')}.img"
    path.write_bytes(sample(kind))
    out = subprocess.run(
        [sys.executable, "-m", "perf.decode_memory", "--child", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    pixels = SIDE * SIDE
    return {
        "kind": kind,
        "mode": got["mode"],
        "file_kb": round(path.stat().st_size / 1024, 1),
        "peak_mb": round(got["peak"] / MB, 1),
        "measured_bytes_per_pixel": round(got["peak"] / pixels, 2),
        "counted_bytes_per_pixel": round(got["counted"] / pixels, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("perf/results"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for kind in KINDS:
            row = measure(kind, Path(tmp))
            rows.append(row)
            print(
                f"{kind:<10} {row['mode']:<5} {row['file_kb']:>9} KB  peak {row['peak_mb']:>7} MB"
                f"  {row['measured_bytes_per_pixel']:>6} B/px measured,"
                f" {row['counted_bytes_per_pixel']:>6} counted"
            )
    result = record(command=f"python -m perf.decode_memory --out {args.out}", side=SIDE, rows=rows)
    write_json(args.out / "decode_memory.json", result)
    print(f"wrote {args.out / 'decode_memory.json'}")


if __name__ == "__main__":
    main()
