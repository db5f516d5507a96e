"""The gateway's settings: one typed class read from ``FACEREC_*`` environment variables
(or a ``.env`` file), built on first use by a cached getter, never at import time."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from facerec.errors import InvalidArgumentError
from facerec.matching import DEFAULT_SCORING, ScoreMethod
from facerec.models import BASE_MODEL, check_model_name, facerec_home
from facerec.openset import DEFAULT_FPIR
from facerec.pipeline import DEFAULT_TRITON_URL
from facerec.selection import DEFAULT_GATES
from gateway.auth.api_keys import TOKEN_FORMAT, TOKEN_FORMAT_HELP

PLACEHOLDER = "change-me"
SQLITE_FILE = "facerec.sqlite3"  # in data_dir, unless database_url names a database


def _gate(name: str) -> float:
    """The core's default threshold of one enrolment gate (:data:`DEFAULT_GATES`)."""
    value = getattr(DEFAULT_GATES, name)
    assert value is not None, name
    return float(value)


class Settings(BaseSettings):
    """Every knob of the service. See ``.env.example`` for each variable."""

    model_config = SettingsConfigDict(
        env_prefix="FACEREC_", env_file=".env", extra="ignore", env_ignore_empty=True
    )

    env: Literal["development", "production"] = "production"
    data_dir: Path = Field(default_factory=lambda: facerec_home() / "data")
    database_url: str | None = None  # default: SQLite file in data_dir
    milvus_uri: str | None = None  # default: Milvus Lite file in data_dir
    milvus_token: SecretStr | None = None  # "user:password" or an API key
    milvus_user: str | None = None  # a Milvus server with authentication on
    milvus_password: SecretStr | None = None
    milvus_ca_file: Path | None = None  # TLS (https:// URI): the CA to trust
    milvus_client_cert_file: Path | None = None  # mutual TLS
    milvus_client_key_file: Path | None = None
    milvus_server_name: str | None = None  # TLS: name in the server's certificate
    milvus_timeout_s: float = Field(default=10.0, gt=0.0)  # per Milvus call
    # read consistency of searches (deploy/README.md); Session sees this process's writes
    milvus_consistency: Literal["Strong", "Session", "Bounded", "Eventually"] = "Session"
    index_type: Literal["FLAT", "HNSW"] = "HNSW"
    master_key: SecretStr | None = None  # 64 hex digits or base64 of 32 bytes
    master_key_file: Path | None = None
    previous_master_keys: list[SecretStr] = []  # still unwrap during a rotation
    admin_key: SecretStr | None = None  # the bootstrap admin API key (a new value rotates it)
    store_images: bool = False
    # -- limits (README "Limits"): request bodies, counted as they arrive ------------------
    max_json_bytes: int = Field(default=64 * 1024, ge=1024)  # routes without files
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)  # per image
    max_request_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)  # several images
    max_archive_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)  # POST /v1/jobs
    max_body_bytes_in_flight: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024)
    max_batch_images: int = Field(default=32, ge=1)  # POST /v1/batch/identify
    # -- images: pixels of one, and decoding's memory across requests ---------------------
    max_image_pixels: int = Field(default=40_000_000, ge=10_000)
    # what decoding may allocate, for all images at once (and so for one): 640 MiB
    max_decode_bytes_in_flight: int = Field(default=640 * 1024 * 1024, ge=1024 * 1024)
    busy_wait_s: float = Field(default=10.0, ge=0.0)  # queue this long for pixels, then 503
    trim_after_pixels: int = Field(default=4_000_000, ge=0)  # malloc_trim after; 0: never
    # -- asynchronous jobs ----------------------------------------------------------------
    max_job_images: int = Field(default=2000, ge=1)  # POST /v1/jobs
    max_job_inflated_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)  # unzipped
    max_jobs_queued_per_key: int = Field(default=4, ge=1)
    max_jobs_queued: int = Field(default=32, ge=1)
    max_spool_bytes: int = Field(default=4 * 1024 * 1024 * 1024, ge=1024 * 1024)  # stored
    # work, as pixels (from each image's header): one job, and one key's active jobs
    max_job_pixels: int = Field(default=8_000_000_000, ge=1_000_000)
    max_job_pixels_per_key: int = Field(default=16_000_000_000, ge=1_000_000)
    # -- workers (README "Scaling out"): jobs and server-side streams ----------------------
    workers: bool = True  # run job and stream workers in this process (serve --no-workers)
    job_workers: int = Field(default=1, ge=1, le=64)  # job threads per worker process
    job_lease_s: float = Field(default=30.0, ge=1.0)  # a dead worker's job is taken after
    job_slice_s: float = Field(default=10.0, gt=0.0)  # a worker keeps one job this long
    job_poll_s: float = Field(default=1.0, gt=0.0)  # an idle worker looks for work
    drain_s: float = Field(default=5.0, ge=0.0)  # SIGTERM: not ready this long, then stop
    alive_file: Path | None = None  # touched with every heartbeat (a worker's health check)
    # -- subject metadata -------------------------------------------------------------------
    max_metadata_depth: int = Field(default=16, ge=1, le=64)
    max_metadata_bytes: int = Field(default=16 * 1024, ge=64)
    # -- connections (the HTTP server) -----------------------------------------------------
    header_timeout_s: float = Field(default=10.0, gt=0.0)  # whole request head
    body_timeout_s: float = Field(default=30.0, gt=0.0)  # body: this, plus 1 s per ...
    body_min_rate: int = Field(default=16 * 1024, ge=1)  # ... this many bytes received
    keepalive_timeout_s: int = Field(default=5, ge=1)
    keepalive_max_requests: int = Field(default=1000, ge=1)
    max_connections: int = Field(default=512, ge=1)
    max_connections_per_client: int = Field(default=64, ge=1)  # one address's share
    # -- refused requests ------------------------------------------------------------------
    auth_failures_per_minute: int = Field(default=20, ge=1)  # per client, then 429
    # a valid key is checked again after this long; a key revoked elsewhere (another
    # replica, the CLI) is refused here within it (0: every request reads the key)
    api_key_cache_s: float = Field(default=1.0, ge=0.0, le=60.0)
    refusal_audit_window_s: float = Field(default=60.0, gt=0.0)  # aggregation window
    refusal_audit_max_clients: int = Field(default=100, ge=1)  # detailed rows per window
    trusted_proxies: str = ""  # comma-separated addresses whose X-Forwarded-For is used
    # -- enrolment gates (facerec.selection; the core's defaults; 0 / a large value: off) -
    enrol_min_face_size: float = Field(default=_gate("min_face_size"), ge=0.0)  # px
    enrol_min_score: float = Field(default=_gate("min_score"), ge=0.0, le=1.0)
    enrol_max_outside: float = Field(default=_gate("max_outside"), ge=0.0, le=1.0)
    enrol_min_sharpness: float = Field(default=_gate("min_sharpness"), ge=0.0)
    enrol_max_yaw: float = Field(default=_gate("max_yaw"), gt=0.0)
    enrol_max_pitch: float = Field(default=_gate("max_pitch"), gt=0.0)
    enrol_max_roll: float = Field(default=_gate("max_roll"), gt=0.0)  # degrees
    enrol_min_consistency: float = Field(default=_gate("min_consistency"), ge=-1.0, le=1.0)
    # -- identification (facerec.matching, facerec.openset) ------------------------------
    identify_fpir: float = Field(default=DEFAULT_FPIR, gt=0.0, lt=1.0)  # target FPIR
    identify_score: ScoreMethod = DEFAULT_SCORING.method  # subject score over its templates
    # -- video (README "Video"): WebSocket frames and server-side streams ------------------
    stream_max_connections: int = Field(default=16, ge=1)  # WebSockets open at once
    stream_max_connections_per_key: int = Field(default=8, ge=1)  # one API key's share
    stream_frames_per_key: int = Field(default=2, ge=1)  # one key's frames analysed at once
    stream_max_frame_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)  # one message
    stream_max_frame_pixels: int = Field(default=3840 * 2160, ge=10_000)  # one frame
    stream_max_fps: float = Field(default=30.0, gt=0.0)  # messages a connection may send
    stream_auth_timeout_s: float = Field(default=10.0, gt=0.0)  # key in the first message
    stream_idle_timeout_s: float = Field(default=60.0, gt=0.0)  # no message for this long
    stream_send_timeout_s: float = Field(default=10.0, gt=0.0)  # a client not reading
    stream_ping_s: float = Field(default=20.0, gt=0.0)  # ping interval, and pong timeout
    max_streams: int = Field(default=8, ge=1)  # server-side streams (all workers together)
    stream_lease_s: float = Field(default=5.0, ge=1.0)  # a dead worker's stream is taken after
    stream_allowed_schemes: str = "rtsp,rtsps,http,https"  # comma-separated
    stream_allowed_hosts: str = ""  # host names, *.domain, addresses or networks (CIDR)
    stream_file_dir: Path | None = None  # file: sources allowed only under this folder
    stream_ca_file: Path | None = None  # PEM: authorities rtsps/https sources may show
    batch_max_wait_ms: float = Field(default=4.0, ge=0.0)  # micro-batching window
    purge_interval_s: float = Field(default=60.0, gt=0.0)  # how often expired subjects go
    idempotency_ttl_hours: float = Field(default=24.0, gt=0.0)  # how long replays answer
    backend: Literal["local", "triton"] = "local"  # where the networks run
    # the embedding model by name (`facerec models --list`); templates of another model are
    # never compared (README "Models and templates")
    model: str = BASE_MODEL
    triton_url: str = DEFAULT_TRITON_URL  # host:port of Triton's gRPC (or HTTP) endpoint
    triton_protocol: Literal["grpc", "http"] = "grpc"
    host: str = "127.0.0.1"
    port: int = 8000

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        token = self.secret("admin_key")
        if token is not None and not TOKEN_FORMAT.fullmatch(token.strip()):
            raise ValueError(f"FACEREC_ADMIN_KEY {TOKEN_FORMAT_HELP}")
        if self.env == "development":
            return self
        for name in ("master_key", "admin_key"):
            value = getattr(self, name)
            if value is not None and value.get_secret_value().strip() == PLACEHOLDER:
                raise ValueError(f"FACEREC_{name.upper()} is still the placeholder {PLACEHOLDER!r}")
        if self.master_key is None and self.master_key_file is None:
            raise ValueError(
                "set FACEREC_MASTER_KEY or FACEREC_MASTER_KEY_FILE (or FACEREC_ENV=development "
                "for a throwaway key)"
            )
        return self

    @model_validator(mode="after")
    def _check_model_name(self) -> Settings:
        try:
            check_model_name(self.model)
        except InvalidArgumentError as exc:
            raise ValueError(f"FACEREC_MODEL: {exc.message}") from None
        return self

    @model_validator(mode="after")
    def _check_milvus_access(self) -> Settings:
        if self.milvus_token is not None and self.milvus_user:
            raise ValueError("set FACEREC_MILVUS_TOKEN or FACEREC_MILVUS_USER, not both")
        if self.milvus_user and self.milvus_password is None:
            raise ValueError("FACEREC_MILVUS_USER needs FACEREC_MILVUS_PASSWORD")
        if (self.milvus_client_cert_file is None) != (self.milvus_client_key_file is None):
            raise ValueError("mutual TLS needs FACEREC_MILVUS_CLIENT_CERT_FILE and _KEY_FILE")
        return self

    def secret(self, name: str) -> str | None:
        """The value of secret setting ``name``, or None when unset or left at the
        placeholder (which only development mode lets through)."""
        value = getattr(self, name)
        if value is None or value.get_secret_value().strip() == PLACEHOLDER:
            return None
        text: str = value.get_secret_value()
        return text

    @property
    def sqlite_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / SQLITE_FILE}"

    @property
    def index_uri(self) -> str:
        return self.milvus_uri or str(self.data_dir / "index.db")


@cache
def get_settings() -> Settings:
    return Settings()
