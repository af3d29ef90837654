"""One Settings object for the whole service; unsafe values fail at start-up, not at first use."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    environment: Literal["development", "test", "production"] = Field(
        default="production", alias="MAILSYNC_ENV"
    )

    database_url: str = Field(
        default="postgresql+asyncpg://postgres@localhost:5432/mailsync", alias="DATABASE_URL"
    )
    redis_url: str = Field(default="redis://localhost:6379/0", alias="REDIS_URL")
    token_encryption_keys: str = Field(default="", alias="TOKEN_ENCRYPTION_KEYS")

    auth_jwt_secret: str = Field(default="", alias="AUTH_JWT_SECRET")
    auth_jwks_url: str = Field(default="", alias="AUTH_JWKS_URL")
    auth_jwt_audience: str = Field(default="", alias="AUTH_JWT_AUDIENCE")
    auth_jwt_issuer: str = Field(default="", alias="AUTH_JWT_ISSUER")
    # Entra ID puts app roles in `roles`; a caller holding this role is an operator.
    auth_roles_claim: str = Field(default="roles", alias="AUTH_ROLES_CLAIM")
    auth_operator_role: str = Field(default="mailsync.operator", alias="AUTH_OPERATOR_ROLE")

    public_base_url: str = Field(default="http://localhost:8000", alias="PUBLIC_BASE_URL")

    microsoft_client_id: str = Field(default="", alias="MICROSOFT_CLIENT_ID")
    microsoft_client_secret: str = Field(default="", alias="MICROSOFT_CLIENT_SECRET")
    microsoft_authority_host: str = Field(
        default="https://login.microsoftonline.com", alias="MICROSOFT_AUTHORITY_HOST"
    )
    microsoft_tenant: str = Field(default="common", alias="MICROSOFT_TENANT")
    # Tenants whose mailboxes operators may connect app-only (empty: nobody may).
    microsoft_app_only_tenants: str = Field(default="", alias="MICROSOFT_APP_ONLY_TENANTS")
    graph_base_url: str = Field(default="https://graph.microsoft.com/v1.0", alias="GRAPH_BASE_URL")

    google_client_id: str = Field(default="", alias="GOOGLE_CLIENT_ID")
    google_client_secret: str = Field(default="", alias="GOOGLE_CLIENT_SECRET")
    google_token_url: str = Field(
        default="https://oauth2.googleapis.com/token", alias="GOOGLE_TOKEN_URL"
    )
    gmail_base_url: str = Field(default="https://gmail.googleapis.com", alias="GMAIL_BASE_URL")
    gmail_pubsub_topic: str = Field(default="", alias="GMAIL_PUBSUB_TOPIC")
    google_push_audience: str = Field(default="", alias="GOOGLE_PUSH_AUDIENCE")
    google_push_certs_url: str = Field(
        default="https://www.googleapis.com/oauth2/v3/certs", alias="GOOGLE_PUSH_CERTS_URL"
    )
    google_push_service_account: str = Field(default="", alias="GOOGLE_PUSH_SERVICE_ACCOUNT")
    # Google documents 250 units per user per second as a moving average.
    gmail_quota_units_per_second: float = Field(default=250.0, alias="GMAIL_QUOTA_UNITS_PER_SECOND")
    # Graph allows four concurrent requests per mailbox, across every client of the app.
    graph_max_concurrency: int = Field(default=4, alias="GRAPH_MAX_CONCURRENCY")

    # Engine tuning: a job does a bounded slice of work, then enqueues its continuation.
    sync_interval_seconds: int = Field(default=900, alias="SYNC_INTERVAL_SECONDS")
    # A mailbox whose push notifications do not reach us is polled this often instead.
    sync_poll_without_push_seconds: int = Field(
        default=60, ge=1, alias="SYNC_POLL_WITHOUT_PUSH_SECONDS"
    )
    # The completion monitor compares each mailbox with the provider's counts this often.
    verify_interval_seconds: int = Field(default=3600, ge=1, alias="VERIFY_INTERVAL_SECONDS")
    sync_slice_seconds: float = Field(default=20.0, alias="SYNC_SLICE_SECONDS")
    sync_slice_pages: int = Field(default=50, alias="SYNC_SLICE_PAGES")
    # A first sync stores this many of the newest messages before the backfill (0: off).
    sync_recent_first: int = Field(default=100, ge=0, le=1000, alias="SYNC_RECENT_FIRST")
    # Renewed by a heartbeat while a slice runs: short, so a dead worker's mailbox is taken
    # over within about this long.
    lease_seconds: int = Field(default=15, ge=3, alias="LEASE_SECONDS")
    job_timeout_seconds: int = Field(default=120, alias="JOB_TIMEOUT_SECONDS")
    token_refresh_margin_seconds: int = Field(default=300, alias="TOKEN_REFRESH_MARGIN_SECONDS")
    max_transient_retries: int = Field(default=8, alias="MAX_TRANSIENT_RETRIES")
    scheduler_batch: int = Field(default=500, alias="SCHEDULER_BATCH")
    # Push channels created per second across the service at most: a burst of connects
    # creates its subscriptions at this pace (their first passes do not wait for them).
    subscriptions_per_second: float = Field(default=20.0, gt=0, alias="SUBSCRIPTIONS_PER_SECOND")
    worker_max_jobs: int = Field(default=10, alias="WORKER_MAX_JOBS")
    log_level: str = Field(default="INFO", alias="LOG_LEVEL")
    # Webhook audit log: refused requests recorded one by one per minute and source (the
    # rest counted), and how long rows are kept.
    webhook_log_refusals_per_minute: int = Field(
        default=20, ge=0, alias="WEBHOOK_LOG_REFUSALS_PER_MINUTE"
    )
    webhook_log_retention_hours: float = Field(
        default=168.0, gt=0, alias="WEBHOOK_LOG_RETENTION_HOURS"
    )

    # A stream's first enumeration above this many messages runs as received-time windows
    # on every worker (docs/partitions.md); 0 never partitions.
    backfill_partition_threshold: int = Field(
        default=20_000, ge=0, alias="BACKFILL_PARTITION_THRESHOLD"
    )
    # Messages per window when a partitioned enumeration is planned from the stream's count.
    backfill_partition_size: int = Field(default=20_000, ge=100, alias="BACKFILL_PARTITION_SIZE")

    # Reading the mirror (bodies and attachments come from the provider at request time).
    # Bodies are cached in PostgreSQL this long (0: no cache), if no larger than the cap.
    body_cache_seconds: int = Field(default=3600, ge=0, alias="BODY_CACHE_SECONDS")
    body_cache_max_bytes: int = Field(default=262_144, ge=0, alias="BODY_CACHE_MAX_BYTES")
    # Larger attachments are refused (413) rather than streamed.
    attachment_max_bytes: int = Field(default=64 * 1024 * 1024, gt=0, alias="ATTACHMENT_MAX_BYTES")
    # A request waits this long for a throttled provider, then answers 503 + Retry-After.
    read_max_wait_seconds: float = Field(default=10.0, ge=0, alias="READ_MAX_WAIT_SECONDS")
    # Index entries a filtered listing reads per mailbox before it answers a short page.
    read_scan_budget: int = Field(default=20_000, ge=100, alias="READ_SCAN_BUDGET")

    # Events out (docs/events.md): the outbox, published to NATS JetStream.
    nats_url: str = Field(default="nats://localhost:4222", alias="NATS_URL")
    # Off: nothing is written to the outbox (no message, lifecycle or snapshot events).
    events_enabled: bool = Field(default=True, alias="EVENTS_ENABLED")
    events_subject_prefix: str = Field(
        default="mailsync", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        alias="EVENTS_SUBJECT_PREFIX",
    )  # fmt: skip
    events_stream: str = Field(
        default="MAILSYNC_EVENTS", pattern=r"^[A-Za-z0-9_-]+$", alias="EVENTS_STREAM"
    )
    # JetStream drops a second message with the same Nats-Msg-Id within this window.
    events_duplicate_window_seconds: float = Field(
        default=120.0, gt=0, alias="EVENTS_DUPLICATE_WINDOW_SECONDS"
    )
    events_max_age_hours: float = Field(default=168.0, gt=0, alias="EVENTS_MAX_AGE_HOURS")
    outbox_retention_hours: float = Field(default=24.0, ge=0, alias="OUTBOX_RETENTION_HOURS")
    # Outstanding JetStream acks per publisher (async publish window).
    events_publish_window: int = Field(default=2048, ge=1, alias="EVENTS_PUBLISH_WINDOW")
    # The fallback poll when no NOTIFY arrives (LISTEN wakes publishers on commit).
    events_poll_seconds: float = Field(default=5.0, gt=0, alias="EVENTS_POLL_SECONDS")
    # The publisher's /healthz, /readyz and /metrics (0: off).
    events_publisher_port: int = Field(default=9102, ge=0, le=65535, alias="EVENTS_PUBLISHER_PORT")

    # Each worker serves its Prometheus metrics on this port (0: off); see app/metrics.py.
    worker_metrics_port: int = Field(default=9101, ge=0, le=65535, alias="WORKER_METRICS_PORT")
    metrics_host: str = Field(default="0.0.0.0", alias="METRICS_HOST")  # noqa: S104
    # The operator dashboard: how long a browser session lasts, how often pages refresh.
    dashboard_session_hours: float = Field(default=8.0, gt=0, alias="DASHBOARD_SESSION_HOURS")
    dashboard_refresh_seconds: float = Field(
        default=2.0, ge=0.2, le=60, alias="DASHBOARD_REFRESH_SECONDS"
    )

    @property
    def is_development(self) -> bool:
        return self.environment in ("development", "test")

    @property
    def app_only_tenants(self) -> frozenset[str]:
        return frozenset(
            t.strip().lower() for t in self.microsoft_app_only_tenants.split(",") if t.strip()
        )

    @property
    def encryption_keys(self) -> list[str]:
        return [k.strip() for k in self.token_encryption_keys.split(",") if k.strip()]

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if self.is_development:
            return self
        missing: list[str] = []
        if not self.encryption_keys:
            missing.append("TOKEN_ENCRYPTION_KEYS")
        if not self.auth_jwt_secret and not self.auth_jwks_url:
            missing.append("AUTH_JWT_SECRET or AUTH_JWKS_URL")
        if missing:
            raise ValueError(
                "refusing to start outside development without "
                + ", ".join(missing)
                + " (set MAILSYNC_ENV=development for local use)"
            )
        if self.auth_jwt_secret and len(self.auth_jwt_secret) < 32:
            raise ValueError("AUTH_JWT_SECRET must be at least 32 characters outside development")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
