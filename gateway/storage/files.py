"""Files of the data directory: private to the service's user, written atomically.

Everything the gateway keeps on local disk (the SQLite file and its journal, the Milvus
Lite files, the development master key and admin key, the audit chain's head) lives in the
data directory. Directories are ``0700`` and files ``0600``, also when the directory was
made by someone else or by an older version: :func:`prepare_data_dir` fixes the modes at
every start. The service's commands run with ``umask 077`` (:mod:`gateway.cli`), so files
the databases create later are private too. A file replaced while the service runs goes
through ``<name>.<pid>.tmp`` and a rename; a crash can leave that temporary file behind,
and the next start removes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
_TEMP = re.compile(r"^.+\.(\d+)\.tmp$")


def prepare_data_dir(path: Path) -> None:
    """Create ``path`` (0700) if needed, make everything under it private (directories
    0700, files 0600; links are left alone) and remove temporary files of dead processes."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    _chmod(path, 0o700)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            _chmod(Path(root, name), 0o700)
        for name in files:
            _chmod(Path(root, name), 0o600)
    remove_stale_temps(path)


def _chmod(path: Path, mode: int) -> None:
    try:
        st = path.lstat()
        if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
            path.chmod(mode)
    except FileNotFoundError:
        pass  # removed meanwhile (a database's own temporary file)
    except PermissionError:
        log.warning("cannot make %s private (mode %o): not its owner", path, mode)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process has written nothing yet: a namesake from before a restart
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove ``<name>.<pid>.tmp`` files in ``directory`` left by processes that died
    between writing and renaming; returns those removed."""
    removed = []
    for entry in directory.iterdir():
        match = _TEMP.match(entry.name)
        if match and entry.is_file() and not _alive(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    if removed:
        log.warning("removed %d temporary files left by a crash: %s", len(removed), removed)
    return removed


def create_private(path: Path, text: str) -> None:
    """Write a new file readable by its owner only (refuses to overwrite one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def replace_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text`` (mode 0600), through ``<name>.<pid>.tmp``;
    the temporary file never outlives a failed write."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)  # a leftover of the same name may have other modes
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def touch_private(path: Path) -> None:
    """Create an empty file 0600 unless it exists (SQLite then gives its journal files
    the same mode)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
