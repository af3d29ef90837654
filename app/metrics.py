"""Prometheus metrics (process-local; the API serves its own at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

MAILBOXES = Gauge("mailsync_mailboxes", "Mailboxes by provider and status", ["provider", "status"])
WEBHOOK_NOTIFICATIONS = Counter(
    "mailsync_webhook_notifications_total",
    "Provider notifications received, by provider and outcome",
    ["provider", "outcome"],
)
