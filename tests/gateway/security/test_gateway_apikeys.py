"""API keys: stored only as keyed hashes, checked in constant time, one role each."""

from __future__ import annotations

import pytest

from facerec.errors import FaceRecError
from gateway.auth.api_keys import check_secret, issue_key, parse_token
from gateway.crypto.envelope import MasterKey
from gateway.errors import AuthError
from gateway.roles import allowed


def test_issued_key_verifies_and_is_not_stored_in_the_clear() -> None:
    pepper = MasterKey.generate().derive("api-keys")
    key = issue_key(pepper, "verify")
    key_id, secret = parse_token(key.token)
    assert key_id == key.key_id
    assert secret not in key.digest and key.token not in key.digest
    assert check_secret(pepper, secret, key.digest)
    assert not check_secret(pepper, secret + "x", key.digest)
    # A copy of the stored digest is useless with another deployment's pepper.
    assert not check_secret(MasterKey.generate().derive("api-keys"), secret, key.digest)


def test_malformed_tokens_and_roles() -> None:
    for bad in ("", "abc", "frk__x", "xyz_1_2", "frk_1_"):
        with pytest.raises(AuthError):
            parse_token(bad)
    with pytest.raises(FaceRecError):
        issue_key(b"p" * 32, "root")
    assert allowed("admin", "enrol") and allowed("enrol", "enrol")
    assert not allowed("verify", "identify")
