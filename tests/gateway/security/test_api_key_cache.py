"""Valid API keys remembered for ``FACEREC_API_KEY_CACHE_S`` (gateway/auth/api_keys.py):
checked without a query within it, revoked through this process at once, revoked through
another process within it; unknown, wrong and revoked keys never remembered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from gateway.auth.api_keys import KeyManager
from gateway.errors import AuthError
from gateway.storage.api_keys import ApiKeyRepository
from gateway.storage.schema import open_engine

PEPPER = b"p" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def managers(
    tmp_path: Path, cache_s: float = 1.0
) -> tuple[KeyManager, KeyManager, Clock, list[str]]:
    """Two processes' key managers over one database (the first with a clock and a count
    of its queries)."""
    engine = open_engine(f"sqlite:///{tmp_path / 'keys.sqlite3'}")
    queries: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _count(*args: Any) -> None:
        queries.append(args[2])

    clock = Clock()
    here = KeyManager(ApiKeyRepository(engine), PEPPER, cache_s, clock)
    other = KeyManager(
        ApiKeyRepository(open_engine(f"sqlite:///{tmp_path / 'keys.sqlite3'}")), PEPPER
    )
    return here, other, clock, queries


def test_a_valid_key_is_checked_without_a_query_within_the_window(tmp_path: Path) -> None:
    here, _, clock, queries = managers(tmp_path)
    issued, _ = here.create("identify")
    assert here.cached(issued.token) is None  # never read yet
    assert here.authenticate(issued.token).key_id == issued.key_id
    queries.clear()
    principal = here.cached(issued.token)
    assert principal is not None and principal.role == "identify"
    assert here.authenticate(issued.token) == principal
    assert queries == []
    clock.now += 1.0  # the window is over: read again
    assert here.cached(issued.token) is None
    here.authenticate(issued.token)
    assert queries


def test_the_secret_is_still_checked_for_a_remembered_key(tmp_path: Path) -> None:
    here, _, _, _ = managers(tmp_path)
    issued, _ = here.create("identify")
    here.authenticate(issued.token)
    forged = issued.token[:-4] + ("AAAA" if not issued.token.endswith("AAAA") else "BBBB")
    assert here.cached(forged) is None
    with pytest.raises(AuthError) as refused:
        here.authenticate(forged)
    assert refused.value.code == "invalid_api_key"


def test_a_revocation_here_is_at_once_and_elsewhere_within_the_window(tmp_path: Path) -> None:
    here, other, clock, _ = managers(tmp_path)
    a, _ = here.create("identify")
    b, _ = here.create("identify")
    here.authenticate(a.token)
    here.authenticate(b.token)
    here.revoke(a.key_id)  # through this process
    with pytest.raises(AuthError) as refused:
        here.authenticate(a.token)
    assert refused.value.code == "revoked_api_key"
    other.revoke(b.key_id)  # through another replica, or the CLI
    clock.now += 0.5
    assert here.cached(b.token) is not None  # within the window: still the read record
    clock.now += 0.5
    with pytest.raises(AuthError) as refused:
        here.authenticate(b.token)
    assert refused.value.code == "revoked_api_key"
    assert here.cached(b.token) is None


def test_zero_turns_it_off(tmp_path: Path) -> None:
    here, _, _, _ = managers(tmp_path, cache_s=0.0)
    issued, _ = here.create("identify")
    for _ in range(2):
        here.authenticate(issued.token)
    assert here.cached(issued.token) is None


def test_refused_keys_are_not_remembered(tmp_path: Path) -> None:
    here, _, _, queries = managers(tmp_path)
    revoked, _ = here.create("identify")
    here.revoke(revoked.key_id)
    for token in (revoked.token, "frk_nosuchkey_" + "a" * 20, "not a key", ""):
        for _ in range(2):
            queries.clear()
            with pytest.raises(AuthError):
                here.authenticate(token)
            assert here.cached(token) is None
        if token.startswith("frk_"):
            assert queries  # looked up each time
