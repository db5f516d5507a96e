"""Envelope encryption of face templates.

Each subject has its own random 256-bit data key; templates are sealed with AES-256-GCM
under it, bound (as associated data) to the subject and face they belong to, so a sealed
template moved to another record fails to open. Data keys are stored wrapped by a master
key (AES-256-GCM again, bound to the subject), and every wrapped key names the master key
id, so master keys can rotate: :meth:`Keyring.rewrap` moves a data key to the current
master key without touching the templates. Deleting a subject's wrapped data key makes its
templates unreadable for good (crypto-shredding).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.errors import IntegrityError, KeyMaterialError

KEY_BYTES = 32
NONCE_BYTES = 12
_DEK_CONTEXT = b"facerec/data-key/v1/"
_TEMPLATE_CONTEXT = b"facerec/template/v1/"


@dataclass(frozen=True)
class MasterKey:
    """A 256-bit master key and its public id (a fingerprint that reveals nothing useful)."""

    key_id: str
    secret: bytes

    @staticmethod
    def parse(text: str) -> MasterKey:
        """Read a key given as 64 hex digits or base64 of 32 bytes."""
        raw = text.strip()
        secret: bytes | None = None
        try:
            secret = bytes.fromhex(raw)
        except ValueError:
            try:
                secret = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                secret = None
        if secret is None or len(secret) != KEY_BYTES:
            raise KeyMaterialError(
                "a master key must be 32 bytes, written as 64 hex digits or base64",
                code="invalid_master_key",
            )
        return MasterKey.from_bytes(secret)

    @staticmethod
    def from_bytes(secret: bytes) -> MasterKey:
        if len(secret) != KEY_BYTES:
            raise KeyMaterialError("a master key must be 32 bytes", code="invalid_master_key")
        fingerprint = hashlib.sha256(b"facerec/key-id/v1/" + secret).hexdigest()[:16]
        return MasterKey(f"mk-{fingerprint}", secret)

    @staticmethod
    def generate() -> MasterKey:
        return MasterKey.from_bytes(os.urandom(KEY_BYTES))

    def derive(self, purpose: str, length: int = KEY_BYTES) -> bytes:
        """A sub-key for one purpose (index protection, audit chain), by HKDF-SHA256."""
        hkdf = HKDF(hashes.SHA256(), length, salt=None, info=f"facerec/{purpose}/v1".encode())
        return hkdf.derive(self.secret)

    def __repr__(self) -> str:  # never print the secret
        return f"MasterKey({self.key_id})"


@dataclass(frozen=True)
class WrappedKey:
    """A data key sealed under the master key ``key_id``: nonce + ciphertext + tag."""

    key_id: str
    blob: bytes


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, blob: bytes, aad: bytes, what: str) -> bytes:
    if len(blob) < NONCE_BYTES + 16:
        raise IntegrityError(f"{what} is too short to be sealed data")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise IntegrityError(f"{what} failed authentication (altered or misplaced)") from None


class Keyring:
    """The current master key, plus older ones still able to unwrap during a rotation."""

    def __init__(self, current: MasterKey, older: Iterable[MasterKey] = ()) -> None:
        self.current = current
        self._keys = {k.key_id: k for k in (*older, current)}

    def wrap(self, data_key: bytes, subject_id: str) -> WrappedKey:
        aad = _DEK_CONTEXT + subject_id.encode()
        return WrappedKey(self.current.key_id, _seal(self.current.secret, data_key, aad))

    def unwrap(self, wrapped: WrappedKey, subject_id: str) -> bytes:
        master = self._keys.get(wrapped.key_id)
        if master is None:
            raise KeyMaterialError(
                f"data key was wrapped by master key {wrapped.key_id}, which is not configured",
                code="unknown_master_key",
            )
        return _open(master.secret, wrapped.blob, _DEK_CONTEXT + subject_id.encode(), "data key")

    def rewrap(self, wrapped: WrappedKey, subject_id: str) -> WrappedKey:
        """The same data key under the current master key (templates stay as they are)."""
        if wrapped.key_id == self.current.key_id:
            return wrapped
        return self.wrap(self.unwrap(wrapped, subject_id), subject_id)


def new_data_key() -> bytes:
    return os.urandom(KEY_BYTES)


def _template_aad(subject_id: str, face_id: str) -> bytes:
    return _TEMPLATE_CONTEXT + subject_id.encode() + b"/" + face_id.encode()


def seal_template(data_key: bytes, embedding: np.ndarray, subject_id: str, face_id: str) -> bytes:
    """Encrypt one embedding float32[D] for (subject, face)."""
    raw = np.ascontiguousarray(embedding, dtype="<f4").tobytes()
    return _seal(data_key, raw, _template_aad(subject_id, face_id))


def _image_aad(subject_id: str, face_id: str) -> bytes:
    return b"facerec/image/v1/" + subject_id.encode() + b"/" + face_id.encode()


def seal_image(data_key: bytes, data: bytes, subject_id: str, face_id: str) -> bytes:
    """Encrypt an uploaded image kept for (subject, face) (only when a setting asks)."""
    return _seal(data_key, data, _image_aad(subject_id, face_id))


def open_image(data_key: bytes, blob: bytes, subject_id: str, face_id: str) -> bytes:
    """Decrypt an image sealed by :func:`seal_image` for the same (subject, face)."""
    return _open(data_key, blob, _image_aad(subject_id, face_id), "image")


def seal_record(key: bytes, data: bytes, context: str) -> bytes:
    """Encrypt ``data`` under ``key``, bound to ``context`` (e.g. the row it is kept in)."""
    return _seal(key, data, b"facerec/record/v1/" + context.encode())


def open_record(key: bytes, blob: bytes, context: str) -> bytes:
    """Decrypt what :func:`seal_record` sealed for the same ``context``."""
    return _open(key, blob, b"facerec/record/v1/" + context.encode(), "record")


def open_template(data_key: bytes, blob: bytes, subject_id: str, face_id: str) -> np.ndarray:
    """Decrypt a template sealed by :func:`seal_template` -> float32[D]."""
    raw = _open(data_key, blob, _template_aad(subject_id, face_id), "template")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)
