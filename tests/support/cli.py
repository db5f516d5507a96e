"""The ``facerec`` command line run as a user runs it: in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FACEREC = [sys.executable, "-m", "facerec.cli.main"]


def run_cli(
    *args: str | Path,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
    ok: bool = False,
    timeout: float = 600,
) -> tuple[int, Any]:
    """``facerec ARGS`` to its end: its exit status and its output, parsed when ``--json``
    is one of ``args`` (else the text). ``env`` is its whole environment (default this
    process's); ``home``, its ``FACEREC_HOME`` (the models it finds). Its stderr never
    holds a traceback; with ``ok``, it exits 0."""
    environ = dict(os.environ if env is None else env)
    if home is not None:
        environ["FACEREC_HOME"] = str(home)
    done = subprocess.run(
        [*FACEREC, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=environ if env is not None or home is not None else None,
    )
    assert "Traceback" not in done.stderr, done.stderr
    if ok:
        assert done.returncode == 0, done.stderr
    return done.returncode, json.loads(done.stdout) if "--json" in args else done.stdout
