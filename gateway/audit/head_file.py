"""The audit chain's head as one process keeps it: a small file, written in place.

Every audit append writes the head (:class:`gateway.audit.log.AuditLog`), so the write
must cost little: replacing a file through a temporary one and a rename took 190 us of
CPU (two journal operations) and more under load. The file therefore holds two fixed-size
slots, and a write overwrites, with one ``pwrite`` on a descriptor kept open, the slot
that does not hold the current head. Each slot carries a CRC of its text, so a write torn
by a crash, or read half-done by ``facerec audit verify`` in another process, only ever
costs the newer slot: the reader takes the valid slot with the highest ``seq``, which is
at worst the head before that write. A file in the older format (one JSON object) is
read as it is, and replaced once, atomically, by the two-slot form at the first write.

Writers sharing a data directory take turns under an ``flock`` on ``<name>.lock`` (also
kept open). A descriptor whose file was replaced (an older version's process sharing the
directory during an upgrade) is opened again before it is used.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import weakref
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from gateway.storage.files import replace_private

SLOT = 128  # bytes per slot: the text, spaces, a newline
Head = tuple[int, str]  # (seq, chain value)


def _slot(head: Head) -> bytes:
    body = json.dumps({"seq": head[0], "mac": head[1]})
    text = f"{body} {zlib.crc32(body.encode()):08x}"
    if len(text) >= SLOT:
        raise ValueError(f"an audit head of {len(text)} characters does not fit a slot")
    return text.ljust(SLOT - 1).encode() + b"\n"


def _parse_slot(raw: bytes) -> Head | None:
    """The head in one slot, or None when it is empty or torn (its CRC differs)."""
    try:
        body, crc = raw.decode().rstrip().rsplit(" ", 1)
        if int(crc, 16) != zlib.crc32(body.encode()):
            return None
        data = json.loads(body)
        return int(data["seq"]), str(data["mac"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None


def parse(raw: bytes) -> tuple[Head | None, int | None]:
    """(the head, the slot holding it) of a head file's content: the valid slot with the
    highest ``seq``, or the older format's one JSON object (no slot; anything else there
    is an error, as it was)."""
    if len(raw) != 2 * SLOT:
        data = json.loads(raw)
        return (int(data["seq"]), str(data["mac"])), None
    slots = [_parse_slot(raw[i * SLOT : (i + 1) * SLOT]) for i in range(2)]
    found = [(h, i) for i, h in enumerate(slots) if h is not None]
    if not found:
        return None, None
    head, index = max(found, key=lambda hi: hi[0][0])
    return head, index


class HeadFile:
    """``path``: read and written under one lock shared with the processes of its
    directory (:meth:`locked`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fds: dict[str, int] = {}  # "head", "lock": kept open while this lives
        weakref.finalize(self, _close_all, self._fds)
        self._mutex = threading.Lock()  # this process's threads

    def read(self) -> Head | None:
        """The head recorded, read afresh (no lock needed: a torn slot is skipped)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return parse(raw)[0]

    @contextmanager
    def locked(self) -> Iterator[_Locked]:
        """The file for reading and writing, held against every other writer."""
        with self._mutex:
            if "lock" not in self._fds:
                lock = self.path.with_name(f"{self.path.name}.lock")
                self._fds["lock"] = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._fds["lock"], fcntl.LOCK_EX)
            try:
                yield _Locked(self)
            finally:
                fcntl.flock(self._fds["lock"], fcntl.LOCK_UN)

    # -- under the lock -------------------------------------------------------------------
    def _open(self) -> int | None:
        """The descriptor of the file now at ``path`` (None when there is none)."""
        try:
            at_path = os.stat(self.path).st_ino
        except FileNotFoundError:
            return None
        fd = self._fds.get("head")
        if fd is not None and os.fstat(fd).st_ino != at_path:
            os.close(self._fds.pop("head"))  # replaced (by a rename): follow the path
            fd = None
        if fd is None:
            fd = self._fds["head"] = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        return fd


class _Locked:
    """The file while :meth:`HeadFile.locked` holds it: no writer can replace it
    meanwhile, so what :meth:`read` found stands for :meth:`write`."""

    def __init__(self, file: HeadFile) -> None:
        self.file = file
        self._fd: int | None = None
        self._head: Head | None = None
        self._slot: int | None = None  # None: missing, older format, or no valid slot

    def read(self) -> Head | None:
        self._fd = self.file._open()
        if self._fd is None:
            self._head, self._slot = None, None
        else:
            self._head, self._slot = parse(os.pread(self._fd, 2 * SLOT + 1, 0))
        return self._head

    def write(self, head: Head) -> None:
        """Record ``head`` in the slot not holding the current one (call :meth:`read`
        first); a missing file, or one in the older format, is replaced whole, keeping
        the head it held in the other slot."""
        if self._fd is None or self._slot is None:
            kept = _slot(self._head) if self._head else b" " * (SLOT - 1) + b"\n"
            replace_private(self.file.path, (_slot(head) + kept).decode())
            self._fd, self._head, self._slot = None, head, None  # a new file: read it anew
            return
        other = 1 - self._slot
        os.pwrite(self._fd, _slot(head), other * SLOT)
        self._head, self._slot = head, other


def _close_all(fds: dict[str, int]) -> None:
    for fd in fds.values():
        with suppress(OSError):
            os.close(fd)
    fds.clear()
