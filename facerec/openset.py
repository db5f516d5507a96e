"""Open-set operating points: the identification threshold for a target FPIR and gallery size.

A stranger's best score rises with the number of enrolled subjects it is compared with,
so one fixed threshold lets more strangers through as a gallery grows. The thresholds here
are measured instead: for each scoring method, non-mated searches (people not enrolled)
against galleries of several sizes give the score a stranger's best candidate reaches,
and the threshold for a false positive identification rate (FPIR: the fraction of
non-mated searches that return a match) is read off that distribution. The model card
stores the measured grid (:class:`ThresholdTable`); between measured gallery sizes and
FPIRs the threshold is interpolated linearly in log(gallery size) and log(FPIR); past
the largest measured gallery it is extrapolated along the last segment (the threshold
keeps rising), and the operating point says so.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from facerec.errors import InvalidArgumentError

FPIR_ENV = "FACEREC_IDENTIFY_FPIR"
DEFAULT_FPIR = 1e-3

ThresholdSource = Literal["calibrated", "extrapolated", "explicit"]


class FpirOutOfRangeError(InvalidArgumentError):
    """An FPIR outside the range the thresholds were measured for."""

    code = "fpir_out_of_range"


@dataclass(frozen=True)
class ThresholdTable:
    """Identification thresholds measured for one scoring method.

    ``thresholds[i][j]`` is the cosine score a stranger's best candidate exceeds with
    probability ``fpirs[j]`` in a gallery of ``gallery_sizes[i]`` subjects.
    ``gallery_sizes`` ascending (>= 1), ``fpirs`` descending (in (0, 1)).
    """

    method: str
    gallery_sizes: tuple[int, ...]
    fpirs: tuple[float, ...]
    thresholds: tuple[tuple[float, ...], ...]
    templates: str = ""  # how subjects were enrolled when measured, e.g. "up to 3 images"
    source: str = ""  # what the impostor distribution was measured on

    def __post_init__(self) -> None:
        g, f = self.gallery_sizes, self.fpirs
        if not g or not f or len(self.thresholds) != len(g):
            raise InvalidArgumentError("threshold table: one row of thresholds per gallery size")
        if any(len(row) != len(f) for row in self.thresholds):
            raise InvalidArgumentError("threshold table: one threshold per FPIR in every row")
        if list(g) != sorted(set(g)) or g[0] < 1:
            raise InvalidArgumentError("threshold table: gallery sizes must ascend from >= 1")
        if list(f) != sorted(set(f), reverse=True) or not 0 < f[-1] <= f[0] < 1:
            raise InvalidArgumentError("threshold table: FPIRs must descend within (0, 1)")

    @property
    def fpir_range(self) -> tuple[float, float]:
        """(lowest, highest) FPIR measured."""
        return self.fpirs[-1], self.fpirs[0]

    def threshold(self, fpir: float, gallery_size: int) -> tuple[float, bool]:
        """(threshold, extrapolated) for a target ``fpir`` and ``gallery_size`` subjects.

        Raises :class:`FpirOutOfRangeError` for an FPIR outside the measured range.
        ``extrapolated`` is true when ``gallery_size`` is beyond the largest measured one.
        """
        lo, hi = self.fpir_range
        if not (lo * (1 - 1e-9) <= fpir <= hi * (1 + 1e-9)):
            raise FpirOutOfRangeError(
                f"fpir {fpir:g} is outside the calibrated range [{lo:g}, {hi:g}]",
                fpir=fpir,
                calibrated_range=[lo, hi],
            )
        g = max(1, int(gallery_size))
        per_size = [_interpolate(self.fpirs, row, fpir, descending=True) for row in self.thresholds]
        sizes = self.gallery_sizes
        if len(sizes) == 1:
            return per_size[0], g > sizes[0]
        x = math.log(g)
        xs = [math.log(s) for s in sizes]
        if g <= sizes[0]:
            return per_size[0], False
        i = next((k for k in range(1, len(sizes)) if x <= xs[k]), len(sizes) - 1)
        t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
        value = per_size[i - 1] + t * (per_size[i] - per_size[i - 1])
        return float(value), g > sizes[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "gallery_sizes": list(self.gallery_sizes),
            "fpirs": list(self.fpirs),
            "thresholds": [[round(v, 6) for v in row] for row in self.thresholds],
            "templates": self.templates,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, method: str, raw: Mapping[str, Any]) -> ThresholdTable:
        return cls(
            method=method,
            gallery_sizes=tuple(int(g) for g in raw["gallery_sizes"]),
            fpirs=tuple(float(f) for f in raw["fpirs"]),
            thresholds=tuple(tuple(float(v) for v in row) for row in raw["thresholds"]),
            templates=str(raw.get("templates", "")),
            source=str(raw.get("source", "")),
        )


def _interpolate(
    fpirs: Sequence[float], values: Sequence[float], fpir: float, descending: bool
) -> float:
    """``values`` at ``fpir``, linear in log(FPIR) between the measured ``fpirs``."""
    pts = sorted(zip(fpirs, values, strict=True))
    xs = [math.log(p) for p, _ in pts]
    ys = [v for _, v in pts]
    x = math.log(min(max(fpir, pts[0][0]), pts[-1][0]))
    for k in range(1, len(xs)):
        if x <= xs[k]:
            t = (x - xs[k - 1]) / (xs[k] - xs[k - 1])
            return ys[k - 1] + t * (ys[k] - ys[k - 1])
    return ys[-1]


@dataclass(frozen=True)
class OperatingPoint:
    """The threshold an identification used and where it came from.

    ``fpir`` is the target false positive identification rate (None for an explicit
    threshold); ``gallery_size`` the number of enrolled subjects; ``method`` the subject
    scoring method; ``source`` ``calibrated`` (interpolated in the measured table),
    ``extrapolated`` (gallery larger than any measured) or ``explicit`` (given by the caller).
    """

    threshold: float
    fpir: float | None
    gallery_size: int
    method: str
    source: ThresholdSource

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": round(self.threshold, 6),
            "fpir": self.fpir,
            "gallery_size": self.gallery_size,
            "method": self.method,
            "threshold_source": self.source,
        }


def operating_point(
    table: ThresholdTable,
    gallery_size: int,
    fpir: float | None = None,
    threshold: float | None = None,
) -> OperatingPoint:
    """The threshold for ``gallery_size`` subjects at ``fpir`` (default: :func:`fpir_from_env`),
    unless an explicit ``threshold`` (a cosine in [-1, 1]) overrides it."""
    if gallery_size < 0:
        raise InvalidArgumentError("gallery_size must be >= 0")
    if threshold is not None:
        if not -1.0 <= threshold <= 1.0:
            raise InvalidArgumentError("threshold must be a cosine similarity in [-1, 1]")
        return OperatingPoint(float(threshold), None, gallery_size, table.method, "explicit")
    target = fpir_from_env() if fpir is None else check_fpir(fpir)
    value, extrapolated = table.threshold(target, gallery_size)
    source: ThresholdSource = "extrapolated" if extrapolated else "calibrated"
    return OperatingPoint(value, target, gallery_size, table.method, source)


def check_fpir(fpir: float) -> float:
    """``fpir`` if it is a rate in (0, 1), else :class:`InvalidArgumentError`."""
    if not (isinstance(fpir, int | float) and math.isfinite(fpir) and 0.0 < fpir < 1.0):
        raise InvalidArgumentError(f"fpir must be a rate in (0, 1), not {fpir!r}")
    return float(fpir)


def fpir_from_env(default: float = DEFAULT_FPIR) -> float:
    """``$FACEREC_IDENTIFY_FPIR`` if set, else ``default`` (1e-3)."""
    raw = os.environ.get(FPIR_ENV, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgumentError(f"{FPIR_ENV}={raw!r} is not a number") from None
    return check_fpir(value)
