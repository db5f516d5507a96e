"""The roles an API key holds, and what each may do: an ``admin`` key anything, any other
key what its own role names (``enrol``, ``verify``, ``identify``). The API's schemas, the
command line and the key checks all read them here."""

from __future__ import annotations

ROLES = ("admin", "enrol", "verify", "identify")


def allowed(role: str, needed: str) -> bool:
    """Whether ``role`` may do what ``needed`` is required for."""
    return role == "admin" or role == needed


__all__ = ["ROLES", "allowed"]
