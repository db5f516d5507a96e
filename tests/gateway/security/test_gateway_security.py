"""Template protection and the audit chain: what they must guarantee."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from facerec.errors import InvalidArgumentError
from gateway.audit.chain import AuditEvent, chain_event, verify_chain
from gateway.crypto.envelope import Keyring, MasterKey, new_data_key, open_template, seal_template
from gateway.crypto.vector_protection import VectorProtector
from gateway.errors import IntegrityError, KeyMaterialError


def unit(rng: np.random.Generator, n: int, d: int = 128) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_master_key_parsing() -> None:
    key = MasterKey.generate()
    assert MasterKey.parse(key.secret.hex()) == key
    assert key.secret.hex() not in repr(key)
    for bad in ("", "abcd", "zz" * 32, "a" * 63):
        with pytest.raises(KeyMaterialError):
            MasterKey.parse(bad)


def test_templates_round_trip_and_are_bound_to_their_record() -> None:
    rng = np.random.default_rng(0)
    emb = unit(rng, 1)[0]
    dek = new_data_key()
    blob = seal_template(dek, emb, "subject-1", "face-1")
    assert emb.tobytes() not in blob  # not stored in the clear
    np.testing.assert_array_equal(open_template(dek, blob, "subject-1", "face-1"), emb)
    with pytest.raises(IntegrityError):
        open_template(dek, blob, "subject-2", "face-1")  # moved to another subject
    with pytest.raises(IntegrityError):
        open_template(new_data_key(), blob, "subject-1", "face-1")  # wrong key
    tampered = bytearray(blob)
    tampered[20] ^= 1
    with pytest.raises(IntegrityError):
        open_template(dek, bytes(tampered), "subject-1", "face-1")


def test_data_keys_rotate_to_a_new_master_key() -> None:
    old, new = MasterKey.generate(), MasterKey.generate()
    dek = new_data_key()
    wrapped = Keyring(old).wrap(dek, "s1")
    assert wrapped.key_id == old.key_id and dek not in wrapped.blob
    rotating = Keyring(new, older=[old])
    rewrapped = rotating.rewrap(wrapped, "s1")
    assert rewrapped.key_id == new.key_id
    assert Keyring(new).unwrap(rewrapped, "s1") == dek
    with pytest.raises(KeyMaterialError):
        Keyring(new).unwrap(wrapped, "s1")  # the old master key is gone
    with pytest.raises(IntegrityError):
        rotating.unwrap(rewrapped, "s2")  # bound to its subject


def test_protected_vectors_keep_cosine_and_hide_embeddings() -> None:
    rng = np.random.default_rng(1)
    gallery, probes = unit(rng, 200), unit(rng, 20)
    p = VectorProtector(MasterKey.generate(), 128)
    pg, pp = p.protect(gallery), p.protect(probes)
    np.testing.assert_allclose(pp @ pg.T, probes @ gallery.T, atol=1e-5)
    assert (
        np.argsort(-(pp @ pg.T), axis=1)[:, :5] == np.argsort(-(probes @ gallery.T), 1)[:, :5]
    ).all()
    # A protected vector says nothing about its embedding without the key ...
    assert np.abs((pg * gallery).sum(axis=1)).max() < 0.5
    # ... nor links to the same embedding protected by another deployment.
    other = VectorProtector(MasterKey.generate(), 128).protect(gallery)
    assert np.abs((other * pg).sum(axis=1)).max() < 0.5
    np.testing.assert_allclose(p.matrix @ p.matrix.T, np.eye(128), atol=1e-5)  # orthogonal
    assert VectorProtector(MasterKey.parse(MasterKey.generate().secret.hex()), 128).key_id


def make_log(key: bytes, n: int = 5) -> list[AuditEvent]:
    events: list[AuditEvent] = []
    for i in range(n):
        last = events[-1] if events else None
        events.append(
            chain_event(
                key,
                last,
                time=f"2026-11-28T06:00:0{i}Z",
                action="verify",
                outcome="match",
                key_id="k1",
                role="verify",
                subject=f"s{i}",
                score=0.5 + i / 100,
                request_id=f"r{i}",
            )
        )
    return events


def test_audit_chain_detects_edits_deletions_and_reordering() -> None:
    key = MasterKey.generate().derive("audit")
    log = make_log(key)
    assert verify_chain(key, log).ok
    edited = list(log)
    edited[2] = dataclasses.replace(edited[2], outcome="no_match")
    assert verify_chain(key, edited).first_bad_seq == 3
    assert not verify_chain(key, log[:2] + log[3:]).ok  # deleted
    assert not verify_chain(key, [log[0], log[2], log[1], *log[3:]]).ok  # reordered
    assert not verify_chain(MasterKey.generate().derive("audit"), log).ok  # forged key
    head = (log[-1].seq, log[-1].mac)
    assert verify_chain(key, log, head).ok
    assert not verify_chain(key, log[:-1], head).ok  # cut from the end


def test_audit_events_refuse_fields_outside_the_schema() -> None:
    key = MasterKey.generate().derive("audit")
    with pytest.raises(InvalidArgumentError, match="not audit fields"):
        chain_event(key, None, time="t", action="enrol", outcome="ok", embedding=[0.1] * 128)
    with pytest.raises(InvalidArgumentError, match="outcome"):
        chain_event(key, None, time="t", action="enrol", outcome="maybe")
