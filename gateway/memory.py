"""Giving memory back to the system after large allocations.

glibc keeps freed heap memory in its arenas; after decoding a large image the process can
stay tens of MB (with several threads, hundreds) above what it uses. ``malloc_trim(0)``
returns the free pages at the top of every arena. Measured in ``perf/gateway_dos.py``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache
from typing import Any

log = logging.getLogger(__name__)


@cache
def _libc() -> Any | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.malloc_trim  # noqa: B018  (glibc only)
    except (OSError, AttributeError):
        log.info("malloc_trim is not available (not glibc): memory is not trimmed")
        return None
    return libc


def release_memory() -> bool:
    """Return freed heap pages to the system (glibc); False where that is not possible."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
