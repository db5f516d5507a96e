"""The gateway's commands (``facerec serve|worker|keys|reindex|reembed|audit``), registered
with the core CLI through the ``facerec.commands`` entry point.

This module only declares the options; :mod:`gateway.cli` (the web framework, the database,
Milvus) is imported when one of the commands runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from gateway.roles import ROLES

SETTINGS_HELP = "settings come from FACEREC_* variables or .env (see .env.example)"


def _run(args: argparse.Namespace) -> int:
    from gateway.cli import run

    return run(args)


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser(
        "serve",
        help="run the REST gateway (embedded SQLite + Milvus Lite by default)",
        epilog=SETTINGS_HELP,
    )
    p.add_argument("--host", default=None, help="bind address (FACEREC_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (FACEREC_PORT, 8000)")
    p.add_argument(
        "--no-workers",
        action="store_true",
        help="serve the API only: jobs and streams run in `facerec worker` processes "
        "(FACEREC_WORKERS=false)",
    )
    common(p)
    p.set_defaults(run=_run)

    p = sub.add_parser(
        "worker",
        help="run jobs and server-side streams from the shared database, without HTTP",
        description="A worker claims jobs and streams from the database under leases "
        "(README 'Scaling out'): start as many as the work needs, on any machine that "
        "reaches the database, the index and the models. SIGTERM or Ctrl-C: the jobs and "
        "streams held go back to the others, then it exits.",
        epilog=SETTINGS_HELP,
    )
    common(p)
    p.set_defaults(run=_run)

    p = sub.add_parser("keys", help="API keys and master-key rotation", epilog=SETTINGS_HELP)
    p.set_defaults(run=_run)
    keys = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = keys.add_parser("create", help="print a new API key (shown once)")
    k.add_argument("--role", required=True, choices=ROLES)
    k.add_argument("--label", default="", help="a note on who holds the key")
    k.add_argument(
        "--namespace", default=None, help="the tenant the key acts for (default: 'default')"
    )
    k.add_argument("--gallery", default=None, help="limit the key to this gallery of its namespace")
    common(k)
    k = keys.add_parser("list", help="API keys (ids and roles, never secrets)")
    common(k)
    k = keys.add_parser("revoke", help="revoke an API key by id")
    k.add_argument("key_id")
    common(k)
    k = keys.add_parser(
        "rotate",
        help="re-wrap data keys under FACEREC_MASTER_KEY (old keys in "
        "FACEREC_PREVIOUS_MASTER_KEYS) and re-protect the index; reads go on meanwhile",
    )
    k.add_argument("--keep-index", action="store_true", help="re-wrap keys only")
    common(k)

    p = sub.add_parser(
        "reindex",
        help="rebuild the vector index from the encrypted system of record",
        epilog=SETTINGS_HELP,
    )
    p.add_argument("--check", action="store_true", help="only repair differences (as at start-up)")
    common(p)
    p.set_defaults(run=_run)

    p = sub.add_parser(
        "reembed",
        help="re-compute templates of other models with FACEREC_MODEL from the enrolment "
        "images kept with FACEREC_STORE_IMAGES; lists the faces that need re-enrolment",
        description="Each face of another model whose enrolment image was kept is detected "
        "again in it (the face at its stored box) and embedded by the running model, one "
        "face at a time: a run stopped anywhere loses nothing, and running it again "
        "finishes. Exit status 1 only when a face failed (an image that would not open).",
        epilog=SETTINGS_HELP,
    )
    p.add_argument(
        "--dry-run", action="store_true", help="only count and list: change nothing, open no image"
    )
    common(p)
    p.set_defaults(run=_run)

    p = sub.add_parser("audit", help="the tamper-evident audit log", epilog=SETTINGS_HELP)
    p.set_defaults(run=_run)
    audit = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    a = audit.add_parser("verify", help="check the hash chain: exit 1 if any event was altered")
    common(a)
