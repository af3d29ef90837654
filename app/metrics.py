"""Prometheus metrics (process-local; the API serves its own at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

MAILBOXES = Gauge("mailsync_mailboxes", "Mailboxes by provider and status", ["provider", "status"])
WEBHOOK_NOTIFICATIONS = Counter(
    "mailsync_webhook_notifications_total",
    "Provider notifications received, by provider and outcome",
    ["provider", "outcome"],
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
