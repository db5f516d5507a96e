"""A job's input images on disk, sealed, instead of in memory.

Each job gets a random 256-bit key that lives only in this process's memory; every image
is sealed with it (AES-256-GCM, bound to the job and the image's position) before it is
written, so no raw image reaches the disk. The file is deleted when the job is done; a
spool left by a crash cannot be opened by anyone (its key is gone) and is removed at the
next start (:func:`clear_spools`).

File format: records of ``u32 name length | name (UTF-8) | u32 sealed length | sealed``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.service.types import Upload

_LEN = struct.Struct("<I")
_NONCE = 12
SUFFIX = ".spool"


def clear_spools(directory: Path) -> int:
    """Delete spools a previous process left (unreadable without its keys)."""
    removed = 0
    if directory.is_dir():
        for path in directory.glob(f"*{SUFFIX}"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


class JobSpool:
    """Append sealed images, then read them back in order (once the writing is over)."""

    def __init__(self, directory: Path, job_id: str) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = directory / f"{job_id}{SUFFIX}"
        self.job_id = job_id
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._out = os.fdopen(fd, "wb")
        self.count = 0
        self.bytes = 0  # image bytes spooled (before sealing)

    def _aad(self, index: int) -> bytes:
        return f"facerec/job-spool/v1/{self.job_id}/{index}".encode()

    def add(self, name: str, data: bytes) -> None:
        nonce = os.urandom(_NONCE)
        sealed = nonce + self._aead.encrypt(nonce, data, self._aad(self.count))
        raw = name.encode()
        self._out.write(_LEN.pack(len(raw)) + raw + _LEN.pack(len(sealed)))
        self._out.write(sealed)
        self.count += 1
        self.bytes += len(data)

    def finish(self) -> None:
        """Done writing; the spool can be read from now on."""
        self._out.close()

    def __iter__(self) -> Iterator[Upload]:
        with self.path.open("rb") as f:
            for index in range(self.count):
                (n,) = _LEN.unpack(f.read(_LEN.size))
                name = f.read(n).decode()
                (n,) = _LEN.unpack(f.read(_LEN.size))
                sealed = f.read(n)
                data = self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], self._aad(index))
                yield Upload(name, data)

    def discard(self) -> None:
        """Delete the file (and forget the key)."""
        if not self._out.closed:
            self._out.close()
        self.path.unlink(missing_ok=True)
