"""The gateway's commands, reached through ``facerec serve|keys|reindex|audit``.

The core CLI imports this module only when one of these commands runs, so ``facerec``
itself needs no web framework.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from facerec.cli.output import emit, fail
from facerec.errors import FaceRecError
from facerec.models import load_model_card
from gateway.bootstrap import open_admin, open_audit, open_database, open_gallery
from gateway.crypto.envelope import MasterKey
from gateway.service.admin import AdminService
from gateway.service.types import Caller
from gateway.settings import Settings, get_settings
from gateway.storage.database import Database

log = logging.getLogger(__name__)
CLI = Caller(key_id=None, role="cli", request_id=None)


def _print(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    emit(json.loads(json.dumps(data, default=str)), args.json, text)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.api.app import create_app

    settings = get_settings()
    host = args.host or settings.host
    port = args.port or settings.port
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info" if args.verbose else "warning",
        access_log=args.verbose,
    )
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    settings = get_settings()
    db = open_database(settings)
    admin = open_admin(settings, db)
    if args.keys_command == "create":
        new = admin.create_key(args.role, args.label, CLI)
        _print(args, {"id": new.record.id, "role": new.record.role, "token": new.token}, new.token)
    elif args.keys_command == "list":
        rows = [
            {
                "id": k.id,
                "role": k.role,
                "label": k.label,
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
                f"{'revoked' if r['revoked_at'] else 'active '}  {r['label']}"
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
    card = load_model_card()
    gallery = open_gallery(settings, db, card.embedding_size)
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
    gallery = open_gallery(settings, db, load_model_card().embedding_size)
    if args.check:
        repaired = gallery.reconcile()
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


def run(args: argparse.Namespace) -> int:
    try:
        handler = {
            "serve": cmd_serve,
            "keys": cmd_keys,
            "reindex": cmd_reindex,
            "audit": cmd_audit,
        }[args.command]
        return handler(args)
    except FaceRecError as exc:
        return fail(exc, args.json)
    except ValueError as exc:  # settings refused (pydantic) and the like
        return fail(FaceRecError(str(exc), code="invalid_settings"), args.json)
