"""The gateway's settings: one typed class read from ``FACEREC_*`` environment variables
(or a ``.env`` file), built on first use by a cached getter, never at import time."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from facerec.models import facerec_home
from facerec.pipeline import DEFAULT_TRITON_URL
from gateway.auth.api_keys import TOKEN_FORMAT, TOKEN_FORMAT_HELP

PLACEHOLDER = "change-me"
SQLITE_FILE = "facerec.sqlite3"  # in data_dir, unless database_url names a database


class Settings(BaseSettings):
    """Every knob of the service. See ``.env.example`` for each variable."""

    model_config = SettingsConfigDict(
        env_prefix="FACEREC_", env_file=".env", extra="ignore", env_ignore_empty=True
    )

    env: Literal["development", "production"] = "production"
    data_dir: Path = Field(default_factory=lambda: facerec_home() / "data")
    database_url: str | None = None  # default: SQLite file in data_dir
    milvus_uri: str | None = None  # default: Milvus Lite file in data_dir
    milvus_token: SecretStr | None = None
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
    # -- pixels: per image, and decoded at once across requests ---------------------------
    max_image_pixels: int = Field(default=40_000_000, ge=10_000)
    max_pixels_in_flight: int = Field(default=60_000_000, ge=10_000)
    busy_wait_s: float = Field(default=10.0, ge=0.0)  # queue this long for pixels, then 503
    trim_after_pixels: int = Field(default=4_000_000, ge=0)  # malloc_trim after; 0: never
    # -- asynchronous jobs ----------------------------------------------------------------
    max_job_images: int = Field(default=2000, ge=1)  # POST /v1/jobs
    max_job_inflated_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)  # unzipped
    max_jobs_queued_per_key: int = Field(default=4, ge=1)
    max_jobs_queued: int = Field(default=32, ge=1)
    max_spool_bytes: int = Field(default=4 * 1024 * 1024 * 1024, ge=1024 * 1024)  # on disk
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
    # -- refused requests ------------------------------------------------------------------
    auth_failures_per_minute: int = Field(default=20, ge=1)  # per client, then 429
    refusal_audit_window_s: float = Field(default=60.0, gt=0.0)  # aggregation window
    refusal_audit_max_clients: int = Field(default=100, ge=1)  # detailed rows per window
    trusted_proxies: str = ""  # comma-separated addresses whose X-Forwarded-For is used
    enrol_min_quality: float = Field(default=0.5, ge=0.0, le=1.0)
    batch_max_wait_ms: float = Field(default=4.0, ge=0.0)  # micro-batching window
    purge_interval_s: float = Field(default=60.0, gt=0.0)  # how often expired subjects go
    idempotency_ttl_hours: float = Field(default=24.0, gt=0.0)  # how long replays answer
    backend: Literal["local", "triton"] = "local"  # where the networks run
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
