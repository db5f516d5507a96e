"""Build a running gateway from its settings: keys, stores, index, models, batcher, the
services over them, jobs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from facerec.batching import MicroBatcher
from facerec.fusion import IndexSpace
from facerec.imaging.budget import DecodeBudget
from facerec.imaging.decode import DecodeLimits
from facerec.matching import IdentificationPolicy, Scoring
from facerec.models import load_model_card
from facerec.pipeline import FacePipeline, PipelineConfig
from facerec.selection import EnrolmentGates
from gateway.audit.log import AuditLog
from gateway.audit.refusals import RefusalLog
from gateway.auth.api_keys import KeyManager
from gateway.auth.throttle import FailureThrottle
from gateway.crypto.envelope import Keyring, MasterKey
from gateway.gallery import Gallery
from gateway.index.manager import IndexManager
from gateway.index.milvus import MilvusOptions
from gateway.service.admin import SYSTEM, AdminService
from gateway.service.analyzer import Analyzer
from gateway.service.detection import DetectionService
from gateway.service.enrolment import EnrolmentService
from gateway.service.health import HealthService
from gateway.service.identification import IdentificationService
from gateway.service.job_worker import JobRunner, WorkerTimes
from gateway.service.jobs import JobLimits, JobService
from gateway.service.maintenance import REPAIR_EVERY_S, Housekeeping, repair
from gateway.service.matching import IndexMatcher
from gateway.service.models import ModelCensus
from gateway.service.sources import SourcePolicy
from gateway.service.streams import StreamRunner, StreamService
from gateway.service.subjects import SubjectService
from gateway.service.verification import VerificationService
from gateway.service.video import LiveLimits, VideoService
from gateway.settings import SQLITE_FILE, Settings
from gateway.storage.database import Database
from gateway.storage.files import create_private, prepare_data_dir, touch_private
from gateway.storage.locks import session_lock
from gateway.storage.processes import process_started

log = logging.getLogger(__name__)
AUDIT_WITNESS_S = 5.0  # how often each process records and checks the audit chain's head


def load_keyring(settings: Settings) -> Keyring:
    """The master key from the settings; in development, a generated one kept in the data
    directory (never in production, where settings refuse to start without a key)."""
    if (master := settings.secret("master_key")) is not None:
        current = MasterKey.parse(master)
    elif settings.master_key_file is not None:
        current = MasterKey.parse(settings.master_key_file.read_text())
    else:
        path = settings.data_dir / "master.key"
        if not path.exists():
            create_private(path, MasterKey.generate().secret.hex())
            log.warning("development mode: generated a master key in %s", path)
        current = MasterKey.parse(path.read_text())
    older = [MasterKey.parse(k.get_secret_value()) for k in settings.previous_master_keys]
    return Keyring(current, older)


def open_database(settings: Settings) -> Database:
    """The system of record, once the data directory is private (:mod:`.storage.files`)."""
    prepare_data_dir(settings.data_dir)
    if settings.database_url is None:
        touch_private(settings.data_dir / SQLITE_FILE)
    return Database(settings.sqlite_url, load_keyring(settings))


def enrolment_gates(settings: Settings) -> EnrolmentGates:
    """The enrolment gates of the settings (``FACEREC_ENROL_*``)."""
    return EnrolmentGates(
        min_face_size=settings.enrol_min_face_size,
        min_score=settings.enrol_min_score,
        min_sharpness=settings.enrol_min_sharpness,
        max_yaw=settings.enrol_max_yaw,
        max_pitch=settings.enrol_max_pitch,
        max_roll=settings.enrol_max_roll,
        min_consistency=settings.enrol_min_consistency,
        max_outside=settings.enrol_max_outside,
    )


def milvus_options(settings: Settings) -> MilvusOptions:
    """How the index reaches Milvus: credentials, TLS, per-call timeout, consistency."""
    files = (
        settings.milvus_ca_file,
        settings.milvus_client_cert_file,
        settings.milvus_client_key_file,
    )
    ca, cert, key = (None if f is None else str(f) for f in files)
    return MilvusOptions(
        token=settings.secret("milvus_token"),
        user=settings.milvus_user,
        password=settings.secret("milvus_password"),
        ca_file=ca,
        client_cert_file=cert,
        client_key_file=key,
        server_name=settings.milvus_server_name,
        timeout=settings.milvus_timeout_s,
        consistency=settings.milvus_consistency,
    )


def open_gallery(
    settings: Settings, db: Database, space: IndexSpace | int, model_id: str | None = None
) -> Gallery:
    """The faces of ``db`` with their vectors in the configured Milvus; ``space`` is what
    the index holds of each embedding (the card's
    :attr:`~facerec.models.ModelCard.index_space`: a fused model's first part only; an
    int: a single model's embeddings that wide). The index holds those of model
    ``model_id`` (default: ``FACEREC_MODEL``'s)."""
    options = milvus_options(settings)
    if model_id is None:
        model_id = load_model_card(settings.model).identity
    index = IndexManager(
        db.secrets,
        settings.index_uri,
        space,
        settings.index_type,
        options,
        model_id=model_id,
        marks=db.index_marks,
    )
    return Gallery(db, index)


def open_analyzer(settings: Settings, pipeline: FacePipeline) -> Analyzer:
    """Decoding (the upload limits, the decode budget) and ``pipeline`` behind the
    micro-batcher, shared by every face service and video."""
    limits = DecodeLimits(
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_image_pixels,
        max_decode_bytes=settings.max_decode_bytes_in_flight,
    )
    return Analyzer(
        pipeline,
        MicroBatcher(pipeline, max_wait=settings.batch_max_wait_ms / 1000),
        limits,
        DecodeBudget(settings.max_decode_bytes_in_flight, wait=settings.busy_wait_s),
        settings.trim_after_pixels,
    )


def open_matcher(
    settings: Settings, db: Database, gallery: Gallery, pipeline: FacePipeline
) -> IndexMatcher:
    """1:N over ``gallery``'s index under ``pipeline``'s model card, at
    ``FACEREC_IDENTIFY_FPIR`` scored by ``FACEREC_IDENTIFY_SCORE`` (a bad FPIR fails here)."""
    cfg = pipeline.config
    policy = IdentificationPolicy.from_card(
        pipeline.card, cfg.alignment, cfg.flip, cfg.precision, Scoring(settings.identify_score)
    )
    return IndexMatcher(policy, gallery.index, db.faces, settings.identify_fpir)


def open_audit(settings: Settings, db: Database) -> AuditLog:
    key = db.secrets.get_or_create("audit")
    return AuditLog(db.audit, key, settings.data_dir / "audit.head")


def open_admin(settings: Settings, db: Database) -> AdminService:
    keys = KeyManager(db.api_keys, db.secrets.get_or_create("pepper"), settings.api_key_cache_s)
    response_key = db.secrets.get_or_create("idempotency")
    return AdminService(keys, db.idempotency, open_audit(settings, db), response_key)


@dataclass
class Gateway:
    """Everything a running process holds: the services, and in a worker process the job
    runner and the periodic tasks."""

    settings: Settings
    db: Database
    gallery: Gallery
    analyzer: Analyzer
    subjects: SubjectService
    enrolment: EnrolmentService
    verification: VerificationService
    identification: IdentificationService
    detection: DetectionService
    health: HealthService
    admin: AdminService
    jobs: JobService
    video: VideoService
    streams: StreamService
    housekeeping: Housekeeping
    runner: JobRunner | None = None
    stream_runner: StreamRunner | None = None
    draining: bool = False  # SIGTERM received: /readyz answers 503

    def close(self) -> None:
        """Stop the workers (their leases go back to the others), then everything else."""
        if self.runner is not None:
            self.runner.close()
        if self.stream_runner is not None:
            self.stream_runner.close()
        self.video.close()
        self.housekeeping.close()
        self.analyzer.close()
        self.gallery.close()
        self.admin.close()


def _periodic_tasks(
    settings: Settings,
    db: Database,
    gallery: Gallery,
    subjects: SubjectService,
    admin: AdminService,
) -> dict[str, tuple[float, Callable[[], None]]]:
    """What worker processes do now and then: retention, idempotency keys, the repair."""

    def purge() -> None:
        purged = subjects.purge_expired(SYSTEM)
        if purged:
            log.info("purged %d expired subjects", len(purged))
        admin.prune_requests(timedelta(hours=settings.idempotency_ttl_hours))
        db.processes.prune(24 * 3600)

    def repair_index() -> None:
        repair(db, gallery, admin.audit_log)

    return {
        "retention": (settings.purge_interval_s, purge),
        "repair": (REPAIR_EVERY_S, repair_index),
    }


def audit_witness(audit: AuditLog) -> Callable[[], None]:
    """Every process: record the chain's head seen in the database, and cry out when the
    database no longer holds the head recorded before (events cut from its end)."""
    reported: list[str] = []

    def witness() -> None:
        report = audit.witness()
        if report is not None and report.reason not in reported:
            reported.append(str(report.reason))
            log.critical(
                "AUDIT LOG TAMPERED: event %s %s (facerec audit verify)",
                report.first_bad_seq,
                report.reason,
            )

    return witness


def open_gateway(
    settings: Settings, pipeline: FacePipeline | None = None, api: bool = True
) -> Gateway:
    """Open everything, bootstrap the admin key, repair the index (both audited; once when
    several processes start together). With ``FACEREC_WORKERS`` this process also runs
    jobs and streams; ``api=False`` is a worker without HTTP (``facerec worker``). The
    embedding model is ``pipeline``'s, else ``FACEREC_MODEL``'s."""
    started = process_started()
    if pipeline is None:
        load_model_card(settings.model)  # an unknown model is refused before anything starts
    db = open_database(settings)
    admin = open_admin(settings, db)
    with session_lock(db.engine, "bootstrap"):  # replicas starting together take turns
        if (token := settings.secret("admin_key")) is not None:
            admin.bootstrap_admin_key(token)  # refuses an unusable key before anything starts
        elif settings.env == "development" and not admin.list_keys():
            admin_file = settings.data_dir / "admin.key"
            new = admin.create_key("admin", "development bootstrap", SYSTEM)
            if admin_file.exists():
                admin_file.unlink()
            create_private(admin_file, new.token + "\n")
            log.warning("development mode: created an admin API key, saved in %s", admin_file)
    admin.throttle = FailureThrottle(settings.auth_failures_per_minute)
    admin.refusals = RefusalLog(
        admin.audit_log.append,
        settings.refusal_audit_window_s,
        settings.refusal_audit_max_clients,
    )
    admin.refusals.start()
    pipe = pipeline or FacePipeline.open(
        PipelineConfig(model=settings.model),
        backend=settings.backend,
        url=settings.triton_url,
        protocol=settings.triton_protocol,
    )
    gallery = open_gallery(settings, db, pipe.card.index_space, pipe.model_id)
    workers = settings.workers or not api
    roles = ",".join(r for r, on in (("api", api), ("worker", workers)) if on)
    repair(db, gallery, admin.audit_log, unless_since=started)
    analyzer = open_analyzer(settings, pipe)
    matcher = open_matcher(settings, db, gallery, pipe)
    census = ModelCensus(db.model_migration, gallery.model_id)
    audit, sizes = admin.audit, matcher.sizes
    subjects = SubjectService(db.subjects, db.faces, gallery, audit, sizes, census)
    enrolment = EnrolmentService(
        subjects,
        db.faces,
        gallery,
        analyzer,
        audit,
        sizes,
        census,
        enrolment_gates(settings),
        settings.store_images,
    )
    verification = VerificationService(
        subjects, db.faces, db.model_migration, analyzer, audit, gallery.model_id
    )
    identification = IdentificationService(matcher, analyzer, audit)
    limits = JobLimits(
        settings.max_job_images,
        settings.max_upload_bytes,
        settings.max_job_inflated_bytes,
        settings.max_jobs_queued_per_key,
        settings.max_jobs_queued,
        settings.max_spool_bytes,
        settings.max_job_pixels,
        settings.max_job_pixels_per_key,
    )
    jobs = JobService(db.jobs, identification, audit, limits)
    runner = None
    if workers:
        times = WorkerTimes(settings.job_lease_s, settings.job_slice_s, settings.job_poll_s)
        runner = JobRunner(db.jobs, identification, times, settings.job_workers)
        jobs.on_submit = runner.wake
    tasks = _periodic_tasks(settings, db, gallery, subjects, admin) if workers else {}
    tasks["audit witness"] = (AUDIT_WITNESS_S, audit_witness(admin.audit_log))
    housekeeping = Housekeeping(db, roles, tasks, settings.alive_file)
    live_limits = LiveLimits.from_settings(settings)
    video = VideoService(analyzer, identification, db.subjects, audit, live_limits)
    source_key = db.secrets.get_or_create("streams")
    streams = StreamService(
        db.streams,
        audit,
        SourcePolicy.from_settings(settings),
        settings.max_streams,
        source_key,
        settings.stream_lease_s,
    )
    stream_runner = None
    if workers:
        stream_runner = StreamRunner(
            db.streams,
            video,
            source_key,
            settings.max_streams,
            settings.stream_lease_s,
            sources=streams.sources,
        )
        streams.on_start = stream_runner.wake
    return Gateway(
        settings,
        db,
        gallery,
        analyzer,
        subjects,
        enrolment,
        verification,
        identification,
        DetectionService(analyzer, audit),
        HealthService(db, gallery.index, pipe, census),
        admin,
        jobs,
        video,
        streams,
        housekeeping,
        runner,
        stream_runner,
    )
