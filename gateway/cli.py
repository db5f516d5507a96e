"""The gateway's commands, reached through ``facerec serve|worker|keys|reindex|reembed|audit``.

The core CLI imports this module only when one of these commands runs, so ``facerec``
itself needs no web framework.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import threading

from pydantic import ValidationError

from facerec.cli.output import fail
from facerec.errors import FaceRecError
from facerec.models import load_model_card
from gateway.bootstrap import open_admin, open_audit, open_database, open_gallery, open_gateway
from gateway.cli_common import CLI, _print
from gateway.crypto.envelope import MasterKey
from gateway.service.admin import AdminService
from gateway.settings import Settings, get_settings
from gateway.storage.database import Database
from gateway.storage.files import PRIVATE_UMASK

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.api.app import create_app
    from gateway.api.server import DrainingServer, server_config

    settings = get_settings()
    if args.no_workers:
        settings = settings.model_copy(update={"workers": False})
    host = args.host or settings.host
    port = args.port or settings.port
    # Opened before the server starts, so a refusal (an unusable FACEREC_ADMIN_KEY, a
    # wrong master key) is one line on stderr and exit status 1, not a lifespan traceback.
    gateway = open_gateway(settings)
    try:
        config = server_config(
            create_app(settings, gateway=gateway),
            settings,
            host,
            port,
            log_level="info" if args.verbose else "warning",
            access_log=args.verbose,
        )
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C or SIGINT, as uvicorn.run does
            DrainingServer(config, gateway, settings.drain_s).run()
    finally:
        gateway.close()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Jobs and streams without HTTP, until SIGTERM or SIGINT (then the leases held go
    back to the queue)."""
    settings = get_settings()
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in STOP_SIGNALS}
    try:
        gateway = open_gateway(settings, api=False)
        try:
            log.warning("worker %s: running jobs and streams", gateway.housekeeping.name)
            while not stop.wait(1.0):
                pass
        finally:
            gateway.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    settings = get_settings()
    db = open_database(settings)
    admin = open_admin(settings, db)
    if args.keys_command == "create":
        new = admin.create_key(args.role, args.label, CLI, args.namespace, args.gallery)
        record = new.record
        _print(
            args,
            {
                "id": record.id,
                "role": record.role,
                "namespace": record.namespace,
                "gallery": record.gallery,
                "token": new.token,
            },
            new.token,
        )
    elif args.keys_command == "list":
        rows = [
            {
                "id": k.id,
                "role": k.role,
                "label": k.label,
                "namespace": k.namespace,
                "gallery": k.gallery,
                "created_at": k.created_at,
                "revoked_at": k.revoked_at,
            }
            for k in admin.list_keys()
        ]
        _print(
            args,
            {"keys": rows},
            "\n".join(
                f"{r['id']}  {r['role']:<8}  "
                f"{'revoked' if r['revoked_at'] else 'active '}  "
                f"{r['namespace']}{'/' + str(r['gallery']) if r['gallery'] else ''}  {r['label']}"
                for r in rows
            ),
        )
    elif args.keys_command == "revoke":
        admin.revoke_key(args.key_id, CLI)
        _print(args, {"revoked": args.key_id}, f"revoked {args.key_id}")
    elif args.keys_command == "rotate":
        return _rotate(args, settings, db, admin)
    return 0


def _rotate(args: argparse.Namespace, settings: Settings, db: Database, admin: AdminService) -> int:
    """Re-wrap every data key under the current master key, then move the index to a new
    protection key (reads continue on the old index until the new one is complete)."""
    card = load_model_card(settings.model)
    gallery = open_gallery(settings, db, card.index_space, card.identity)
    rewrapped = db.rotate_master_key()
    moved = gallery.rotate_index(MasterKey.generate().secret) if not args.keep_index else 0
    admin.audit("key_rotate", "ok", CLI)
    _print(
        args,
        {"rewrapped": rewrapped, "vectors_moved": moved},
        f"re-wrapped {rewrapped} keys; moved {moved} vectors to a new index key",
    )
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    """Rebuild the search index from the system of record (after a loss or a migration)."""
    settings = get_settings()
    db = open_database(settings)
    card = load_model_card(settings.model)
    gallery = open_gallery(settings, db, card.index_space, card.identity)
    if args.check:
        repaired = gallery.reconcile()
        if repaired.changed:
            open_audit(settings, db).append(
                action="repair", outcome="ok", detail=repaired.describe(), **CLI.audit_fields()
            )
        data = repaired.__dict__
        _print(args, data, ", ".join(f"{k}: {v}" for k, v in data.items()))
        return 0
    moved = gallery.reindex()
    open_audit(settings, db).append(action="reindex", outcome="ok", **CLI.audit_fields())
    _print(args, {"vectors": moved}, f"re-indexed {moved} faces")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    settings = get_settings()
    db = open_database(settings)
    audit = open_audit(settings, db)
    if args.audit_command == "verify":
        report = audit.verify()
        _print(
            args,
            report.__dict__,
            f"audit log intact: {report.events} events"
            if report.ok
            else f"audit log BROKEN at event {report.first_bad_seq}: {report.reason}",
        )
        return 0 if report.ok else 1
    return 0


def _reembed(args: argparse.Namespace) -> int:
    from gateway.cli_reembed import cmd_reembed

    return cmd_reembed(args)


def run(args: argparse.Namespace) -> int:
    os.umask(PRIVATE_UMASK)  # what the service and its tools create is theirs alone
    try:
        handler = {
            "serve": cmd_serve,
            "worker": cmd_worker,
            "keys": cmd_keys,
            "reindex": cmd_reindex,
            "audit": cmd_audit,
            "reembed": _reembed,
        }[args.command]
        return handler(args)
    except FaceRecError as exc:
        return fail(exc, args.json)
    except ValidationError as exc:  # settings refused: one line per setting, no traceback
        return fail(FaceRecError(settings_error(exc), code="invalid_settings"), args.json)
    except ValueError as exc:
        return fail(FaceRecError(str(exc), code="invalid_settings"), args.json)


def settings_error(exc: ValidationError) -> str:
    """A refused setting as one line: ``FACEREC_NAME: why`` (several joined by ``; ``)."""
    parts = []
    for error in exc.errors():
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        loc = [str(p) for p in error.get("loc", ())]
        parts.append(f"FACEREC_{loc[0].upper()}: {message}" if loc else message)
    return "; ".join(parts).replace("\n", " ")
