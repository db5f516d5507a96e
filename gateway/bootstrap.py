"""Build a running gateway from its settings: keys, stores, index, models, batcher, jobs."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from facerec.imaging.decode import DecodeLimits
from facerec.pipeline import FacePipeline
from gateway.auditlog import AuditLog
from gateway.auth import KeyManager
from gateway.batching import MicroBatcher
from gateway.index import MilvusOptions
from gateway.jobs import JobRunner
from gateway.keys import Keyring, MasterKey
from gateway.service import Caller, FaceService
from gateway.settings import Settings
from gateway.store import Store
from gateway.vectors import IndexManager, Reconciled

log = logging.getLogger(__name__)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


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
            _write_private(path, MasterKey.generate().secret.hex())
            log.warning("development mode: generated a master key in %s", path)
        current = MasterKey.parse(path.read_text())
    older = [MasterKey.parse(k.get_secret_value()) for k in settings.previous_master_keys]
    return Keyring(current, older)


def open_store(settings: Settings) -> Store:
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Store(settings.sqlite_url, load_keyring(settings))


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


def open_index(settings: Settings, store: Store, dim: int) -> IndexManager:
    options = milvus_options(settings)
    return IndexManager(store, settings.index_uri, dim, settings.index_type, options)


def open_audit(settings: Settings, store: Store) -> AuditLog:
    return AuditLog(store, store.system_secret("audit"), settings.data_dir / "audit.head")


@dataclass
class Gateway:
    """Everything a running service holds."""

    settings: Settings
    service: FaceService
    keys: KeyManager
    jobs: JobRunner
    repaired: Reconciled
    admin_key_file: Path | None = None

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
            except Exception:  # the loop must survive a failed round
                log.exception("purging expired subjects failed")

    def close(self) -> None:
        self._stop.set()
        self._purger.join(timeout=30)
        self.jobs.close()
        self.service.close()


def open_gateway(settings: Settings, pipeline: FacePipeline | None = None) -> Gateway:
    store = open_store(settings)
    pipe = pipeline or FacePipeline.open(
        backend=settings.backend, url=settings.triton_url, protocol=settings.triton_protocol
    )
    index = open_index(settings, store, pipe.card.embedding_size)
    repaired = index.reconcile()
    audit = open_audit(settings, store)
    batcher = MicroBatcher(pipe, max_wait=settings.batch_max_wait_ms / 1000)
    service = FaceService(
        store,
        index,
        pipe,
        batcher,
        audit,
        DecodeLimits(max_bytes=settings.max_upload_bytes),
        store_images=settings.store_images,
        min_quality=settings.enrol_min_quality,
    )
    keys = KeyManager(store, store.system_secret("pepper"))
    admin_file = None
    if (admin := settings.secret("admin_key")) is not None:
        keys.bootstrap_admin(admin)
    elif settings.env == "development" and not keys.list():
        admin_file = settings.data_dir / "admin.key"
        issued = keys.create("admin", "development bootstrap")
        if admin_file.exists():
            admin_file.unlink()
        _write_private(admin_file, issued.token + "\n")
        log.warning("development mode: created an admin API key, saved in %s", admin_file)

    jobs = JobRunner(store, service.run_job)
    return Gateway(settings, service, keys, jobs, repaired, admin_file)
