"""``facerec reembed``: move stored templates of other models to the running model
(``FACEREC_MODEL``) from the enrolment images kept with ``FACEREC_STORE_IMAGES``
(:mod:`gateway.service.reembed`)."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from facerec.errors import FaceRecError
from facerec.imaging.decode import DecodeLimits
from facerec.pipeline import FacePipeline, PipelineConfig
from gateway.bootstrap import open_audit, open_database, open_gallery
from gateway.cli_common import CLI, _print
from gateway.service.reembed import ReembedReport, reembed
from gateway.settings import get_settings


def _text(report: ReembedReport) -> str:
    verb = "would re-embed" if report.dry_run else "re-embedded"
    lines = [
        f"{verb} {report.reembedded} of {report.considered} faces of other models with "
        f"{report.model_id}; {len(report.needs_reenrolment)} need re-enrolment, "
        f"{report.gone} were deleted meanwhile, {report.moved_meanwhile} moved by another "
        f"run, {len(report.errors)} errors"
    ]
    for entry in report.needs_reenrolment + report.errors:
        lines.append(
            f"  subject {entry['subject_id']} face {entry['face_id']} "
            f"({entry['model_id']}): {entry.get('code', entry['reason'])}"
        )
    return "\n".join(lines)


def cmd_reembed(args: argparse.Namespace) -> int:
    """Re-embed; exit status 1 when a face failed (an image that would not open or
    decode), else 0: faces needing re-enrolment are reported, not failures."""
    settings = get_settings()
    pipeline = FacePipeline.open(  # an unknown model is refused before the data is opened
        PipelineConfig(model=settings.model),
        backend=settings.backend,
        url=settings.triton_url,
        protocol=settings.triton_protocol,
    )
    db = open_database(settings)
    gallery = open_gallery(settings, db, pipeline.card.index_space, pipeline.model_id)
    limits = DecodeLimits(
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_image_pixels,
        max_decode_bytes=settings.max_decode_bytes_in_flight,
    )
    audit = open_audit(settings, db)
    show = sys.stderr.isatty() and not args.json
    bar = tqdm(unit="face", disable=not show, leave=False, desc="reembed")
    try:
        report = reembed(
            gallery,
            pipeline,
            limits,
            dry_run=args.dry_run,
            started=lambda n: bar.reset(total=n),
            advance=lambda _face, _outcome: bar.update(),
        )
    except FaceRecError as exc:  # the index or the database failed: a rerun continues
        if not args.dry_run:
            detail = f"stopped: {exc.code}"
            audit.append(action="reembed", outcome="error", detail=detail, **CLI.audit_fields())
        raise
    finally:
        bar.close()
        gallery.close()
    if not args.dry_run:
        outcome = "error" if report.errors else "ok"
        detail = report.describe()
        audit.append(action="reembed", outcome=outcome, detail=detail, **CLI.audit_fields())
    _print(args, report.to_dict(), _text(report))
    return 1 if report.errors else 0
