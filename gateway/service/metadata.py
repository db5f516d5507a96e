"""Limits on a subject's free-form metadata: how deeply it nests and how large it is.

Checked before anything is stored (422 ``invalid_request``), so every stored subject can be
answered. A row stored before these limits existed (or edited in the database) is shown
with its metadata withheld rather than breaking every listing that includes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from facerec.errors import FaceRecError

WITHHELD = "_withheld"  # the one key of the metadata shown in place of an unreadable one


@dataclass(frozen=True)
class MetadataLimits:
    max_depth: int = 16
    max_bytes: int = 16 * 1024


class InvalidMetadataError(FaceRecError):
    """Metadata over the limits, reported like a request-validation error."""

    code = "invalid_request"
    http_status = 422


def depth(value: Any, limit: int) -> int:
    """How deeply ``value`` nests (a scalar is 0, ``{}`` is 1), counted iteratively and
    only up to ``limit + 1``, so no input can exhaust the stack."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            level += 1
            deepest = max(deepest, level)
            if level > limit:
                return level
            stack.extend((child, level) for child in _children(node))
    return deepest


def _children(node: dict[str, Any] | list[Any]) -> list[Any]:
    return list(node.values()) if isinstance(node, dict) else list(node)


def problem(meta: Any, limits: MetadataLimits) -> str | None:
    """Why ``meta`` is over the limits, or None."""
    if depth(meta, limits.max_depth) > limits.max_depth:
        return f"metadata nests deeper than {limits.max_depth} levels"
    try:
        size = len(json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode())
    except UnicodeEncodeError:
        return "metadata holds a lone surrogate (\\ud800-\\udfff): not Unicode"
    if size > limits.max_bytes:
        return f"metadata is {size} bytes as JSON; the limit is {limits.max_bytes}"
    return None


def check_metadata(meta: dict[str, Any] | None, limits: MetadataLimits) -> None:
    """Raise :class:`InvalidMetadataError` when ``meta`` is over the limits."""
    if meta is None:
        return
    why = problem(meta, limits)
    if why is not None:
        raise InvalidMetadataError(
            why,
            errors=[{"loc": ["body", "metadata"], "msg": why, "type": "metadata_limit"}],
        )


def readable(meta: dict[str, Any], limits: MetadataLimits) -> dict[str, Any]:
    """``meta`` as stored, or a note in its place when it is over the limits."""
    why = problem(meta, limits)
    if why is None:
        return meta
    return {WITHHELD: f"{why}; replace it with PATCH"}
