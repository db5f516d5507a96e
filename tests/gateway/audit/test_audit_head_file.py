"""The audit head file (gateway/audit/head_file.py): two slots written in place, so that a
torn write costs at most the newest head, the older one-object format still read and
converted, and a file replaced by another process followed."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from gateway.audit.head_file import SLOT, HeadFile

MAC = "ab" * 32


def write(file: HeadFile, seq: int) -> None:
    with file.locked() as f:
        f.read()
        f.write((seq, f"{seq:064x}"))


def test_heads_alternate_between_two_slots_in_place(tmp_path: Path) -> None:
    path = tmp_path / "audit.head"
    file = HeadFile(path)
    assert file.read() is None
    write(file, 1)
    inode = os.stat(path).st_ino
    for seq in range(2, 6):
        write(file, seq)
        assert file.read() == (seq, f"{seq:064x}")
    raw = path.read_bytes()
    assert len(raw) == 2 * SLOT and os.stat(path).st_ino == inode  # written in place
    assert {
        json.loads(raw[i * SLOT : (i + 1) * SLOT].split(b"} ")[0] + b"}")["seq"] for i in (0, 1)
    } == {4, 5}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_torn_slot_costs_only_the_newest_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.head"
    file = HeadFile(path)
    for seq in (1, 2, 3):
        write(file, seq)
    raw = bytearray(path.read_bytes())
    newest = next(i for i in (0, 1) if b'"seq": 3' in raw[i * SLOT : (i + 1) * SLOT])
    raw[newest * SLOT + 20 : newest * SLOT + 40] = b"\0" * 20  # a write cut short
    path.write_bytes(bytes(raw))
    assert file.read() == (2, f"{2:064x}")
    write(file, 4)  # over the torn slot, not the valid one
    assert file.read() == (4, f"{4:064x}")
    raw = bytearray(path.read_bytes())
    assert any(b'"seq": 2' in raw[i * SLOT : (i + 1) * SLOT] for i in (0, 1))


def test_the_older_format_is_read_and_converted_at_the_first_write(tmp_path: Path) -> None:
    path = tmp_path / "audit.head"
    path.write_text(json.dumps({"seq": 7, "mac": MAC}))
    file = HeadFile(path)
    assert file.read() == (7, MAC)
    with file.locked() as f:
        assert f.read() == (7, MAC)
        f.write((8, MAC))
    assert file.read() == (8, MAC) and len(path.read_bytes()) == 2 * SLOT
    raw = path.read_bytes()
    assert b'"seq": 7' in raw  # the previous head kept in the other slot
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    write(file, 9)  # then in place
    assert file.read() == (9, f"{9:064x}")


def test_a_file_replaced_by_another_process_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "audit.head"
    mine, other = HeadFile(path), HeadFile(path)
    write(mine, 1)
    write(other, 2)  # sharing the file: each reads it afresh under the lock
    assert mine.read() == (2, f"{2:064x}")
    replacement = tmp_path / "new"  # an older version replaces the file by a rename
    replacement.write_text(json.dumps({"seq": 3, "mac": MAC}))
    os.replace(replacement, path)
    with mine.locked() as f:
        assert f.read() == (3, MAC)  # not the replaced inode it had open
        f.write((4, MAC))
    assert other.read() == (4, MAC)


def test_garbage_is_an_error_as_before(tmp_path: Path) -> None:
    path = tmp_path / "audit.head"
    path.write_text("not a head")
    with pytest.raises(ValueError):
        HeadFile(path).read()
