"""The one way the benchmarks (``facerec bench`` and ``perf/``) draw a PNG: :func:`figure`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def figure(
    path: Path, nrows: int = 1, ncols: int = 1, **subplots: Any
) -> Iterator[tuple[Any, Any]]:
    """``(fig, ax)`` (or ``(fig, axes)``: ``plt.subplots``'s, keywords passed on, such as
    ``figsize`` and ``dpi``), off-screen (Agg); when the block ends the figure is laid
    out, saved to ``path`` (folders made) and closed, and closed also on an error.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "line.png"
    >>> with figure(out, figsize=(3, 2)) as (fig, ax):
    ...     _ = ax.plot([0, 1], [0, 1])
    >>> out.stat().st_size > 0
    True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, **subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
