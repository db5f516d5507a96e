"""Build a running gateway from its settings: keys, stores, index, models, batcher, jobs."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta

from facerec.batching import MicroBatcher
from facerec.imaging.budget import PixelBudget
from facerec.imaging.decode import DecodeLimits
from facerec.matching import Scoring
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
from gateway.service.faces import FaceService
from gateway.service.jobs import JobLimits, JobService
from gateway.service.sources import SourcePolicy
from gateway.service.streams import StreamService
from gateway.service.types import Caller
from gateway.service.video import LiveLimits, VideoService
from gateway.settings import SQLITE_FILE, Settings
from gateway.storage.database import Database
from gateway.storage.files import create_private, prepare_data_dir, touch_private

log = logging.getLogger(__name__)


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
    settings: Settings, db: Database, dim: int, model_id: str | None = None
) -> Gallery:
    """The faces of ``db`` with their vectors in the configured Milvus (``dim`` wide);
    the index holds those of model ``model_id`` (default: ``FACEREC_MODEL``'s)."""
    options = milvus_options(settings)
    if model_id is None:
        model_id = load_model_card(settings.model).identity
    index = IndexManager(
        db.secrets, settings.index_uri, dim, settings.index_type, options, model_id=model_id
    )
    return Gallery(db.subjects, index)


def open_audit(settings: Settings, db: Database) -> AuditLog:
    key = db.secrets.get_or_create("audit")
    return AuditLog(db.audit, key, settings.data_dir / "audit.head")


def open_admin(settings: Settings, db: Database) -> AdminService:
    keys = KeyManager(db.api_keys, db.secrets.get_or_create("pepper"))
    response_key = db.secrets.get_or_create("idempotency")
    return AdminService(keys, db.idempotency, open_audit(settings, db), response_key)


@dataclass
class Gateway:
    """Everything a running service holds."""

    settings: Settings
    service: FaceService
    admin: AdminService
    jobs: JobService
    video: VideoService
    streams: StreamService

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._purger = threading.Thread(target=self._purge_loop, name="purge", daemon=True)
        self._purger.start()

    def _purge_loop(self) -> None:
        """Retention: delete subjects past their expiry, now and then (audited)."""
        while not self._stop.wait(self.settings.purge_interval_s):
            try:
                purged = self.service.purge_expired(Caller(role="system"))
                if purged:
                    log.info("purged %d expired subjects", len(purged))
                self.admin.prune_requests(timedelta(hours=self.settings.idempotency_ttl_hours))
            except Exception:  # the loop must survive a failed round
                log.exception("purging expired subjects failed")

    def close(self) -> None:
        self._stop.set()
        self._purger.join(timeout=30)
        self.jobs.close()
        self.streams.close()
        self.video.close()
        self.service.close()
        self.admin.close()


def open_gateway(settings: Settings, pipeline: FacePipeline | None = None) -> Gateway:
    """Open everything, bootstrap the admin key, repair the index (both audited). The
    embedding model is ``pipeline``'s, else ``FACEREC_MODEL``'s."""
    if pipeline is None:
        load_model_card(settings.model)  # an unknown model is refused before anything starts
    db = open_database(settings)
    admin = open_admin(settings, db)
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
    gallery = open_gallery(settings, db, pipe.card.embedding_size, pipe.model_id)
    repaired = gallery.reconcile()
    if repaired.changed:
        admin.audit("repair", "ok", SYSTEM, detail=repaired.describe())
    batcher = MicroBatcher(pipe, max_wait=settings.batch_max_wait_ms / 1000)
    service = FaceService(
        db,
        gallery,
        pipe,
        batcher,
        admin.audit_log,
        DecodeLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels),
        store_images=settings.store_images,
        gates=enrolment_gates(settings),
        fpir=settings.identify_fpir,
        scoring=Scoring(settings.identify_score),
        budget=PixelBudget(settings.max_pixels_in_flight, wait=settings.busy_wait_s),
        trim_after_pixels=settings.trim_after_pixels,
    )
    limits = JobLimits(
        settings.max_job_images,
        settings.max_upload_bytes,
        settings.max_job_inflated_bytes,
        settings.max_jobs_queued_per_key,
        settings.max_jobs_queued,
        settings.max_spool_bytes,
    )
    jobs = JobService(db.jobs, service, limits, settings.data_dir / "spool")
    video = VideoService(service, LiveLimits.from_settings(settings))
    streams = StreamService(video, SourcePolicy.from_settings(settings), settings.max_streams)
    return Gateway(settings, service, admin, jobs, video, streams)
