"""Prometheus metrics. Each process serves its own registry: one port per process.

The API serves them at `GET /metrics` on its HTTP port; a worker (and, later, the event
publisher) starts a small HTTP server of its own on `WORKER_METRICS_PORT`
(`serve_process_metrics`). Not prometheus_client's multiprocess mode: that mode exists for
pre-fork servers whose children share one port, needs a shared directory cleaned of dead
processes' files, cannot serve gauges computed at scrape time, and adds a file write to
every increment. Our processes are independent (one per container or unit), run on several
hosts, and are scraped one by one, which is what Prometheus' service discovery expects.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# -- the API ------------------------------------------------------------------------------

MAILBOXES = Gauge("mailsync_mailboxes", "Mailboxes by provider and status", ["provider", "status"])
WEBHOOK_NOTIFICATIONS = Counter(
    "mailsync_webhook_notifications_total",
    "Provider notifications received, by provider and outcome",
    ["provider", "outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "mailsync_webhook_duration_seconds",
    "Time to verify, record and enqueue one webhook request",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

# -- workers ------------------------------------------------------------------------------

PAGES_WRITTEN = Counter(
    "mailsync_pages_written_total", "Pages committed by the sync engine", ["provider"]
)
MESSAGES_WRITTEN = Counter(
    "mailsync_messages_written_total",
    "Messages written by committed pages (upserted: inserted or changed)",
    ["provider", "change"],
)
SLICE_SECONDS = Histogram(
    "mailsync_sync_slice_duration_seconds",
    "Duration of one sync slice (one job), by outcome",
    ["provider", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0),
)
PROVIDER_REQUESTS = Counter(
    "mailsync_provider_requests_total",
    "Provider API requests by HTTP status (`error`: no response)",
    ["provider", "status"],
)
THROTTLED = Counter(
    "mailsync_provider_throttled_total",
    "Throttled provider answers (429/503 and quota)",
    ["provider"],
)
RETRY_AFTER_SECONDS = Histogram(
    "mailsync_retry_after_seconds",
    "Waits a provider asked for (Retry-After), honoured by every worker of the mailbox",
    ["provider"],
    buckets=(0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)
TOKEN_REFRESHES = Counter(
    "mailsync_token_refreshes_total",
    "Access-token refreshes by outcome (ok, auth_expired, failed)",
    ["provider", "outcome"],
)
SYNC_ERRORS = Counter(
    "mailsync_sync_errors_total", "Failed sync slices by error class", ["provider", "error"]
)
LEASES_LOST = Counter(
    "mailsync_leases_lost_total", "Slices that stopped because their lease was lost", ["provider"]
)
QUEUE_DEPTH = Gauge(
    "mailsync_queue_depth", "Jobs in the ARQ queue (ready: due now; deferred: later)", ["state"]
)
SYNC_LAG = Histogram(
    "mailsync_sync_lag_seconds",
    "From a mailbox's latest change notice (webhook, connect, schedule) to caught up",
    ["provider"],
    buckets=(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0),
)

# The completion monitor (app/sync/monitor.py), in the worker process that ran it.
MONITOR_CHECKS = Counter(
    "mailsync_monitor_checks_total",
    "Completion checks of a mailbox against the provider's counts, by outcome",
    ["provider", "outcome"],
)
MONITOR_REPAIRS = Counter(
    "mailsync_monitor_repairs_total",
    "Repairs the completion monitor started, by scope kind (stream, label) and method",
    ["provider", "scope_kind", "method"],
)
MONITOR_DIFFERENCE = Counter(
    "mailsync_monitor_difference_messages_total",
    "Messages by which a repaired scope's stored count differed from the provider's",
    ["provider", "scope_kind"],
)
MONITOR_REPAIRED_MESSAGES = Counter(
    "mailsync_monitor_repaired_messages_total",
    "Messages a listing repair fetched, removed or relabelled",
    ["provider", "change"],
)
MONITOR_REENQUEUED = Counter(
    "mailsync_monitor_reenqueued_total",
    "Mailboxes whose sync was overdue (no progress for several lease periods) re-enqueued",
)


def serve_process_metrics(port: int, host: str, role: str) -> int | None:
    """Serve this process's metrics on their own port; returns the port, None when off.

    0 turns it off. A port another process holds is logged, not fatal: a second worker on
    one host needs a port of its own, and syncing matters more than its metrics.
    """
    if port <= 0:
        return None
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.error("%s metrics not served: port %s: %s", role, port, exc)
        return None
    log.info("%s metrics on http://%s:%d/metrics", role, host, port)
    return port
