"""The publisher's Prometheus metrics (served by the publisher process on /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

OUTBOX_UNPUBLISHED = Gauge(
    "mailsync_outbox_unpublished_rows",
    "Outbox rows not yet published (each a page or a transition)",
)
OUTBOX_OLDEST_AGE = Gauge(
    "mailsync_outbox_oldest_unpublished_age_seconds",
    "Age of the oldest unpublished outbox row (0 when none waits)",
)
EVENTS_PUBLISHED = Counter(
    "mailsync_events_published_total", "Events acknowledged by JetStream, by type", ["type"]
)
EVENTS_DUPLICATES = Counter(
    "mailsync_events_duplicates_total",
    "Events JetStream acknowledged as duplicates of an earlier publish (same Nats-Msg-Id)",
)
ROWS_PUBLISHED = Counter("mailsync_outbox_rows_published_total", "Outbox rows marked published")
PUBLISH_FAILURES = Counter(
    "mailsync_events_publish_failures_total",
    "Publish rounds that failed (rows wait and are retried with backoff), by reason",
    ["reason"],
)
BACKOFF = Gauge(
    "mailsync_events_publisher_backoff_seconds",
    "The publisher's current retry delay (0 while publishing normally)",
)
COMMIT_TO_ACK = Histogram(
    "mailsync_events_commit_to_ack_seconds",
    "From an outbox row's commit to JetStream's ack of its last event",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
ROWS_PRUNED = Counter("mailsync_outbox_rows_pruned_total", "Published outbox rows deleted")
ROWS_SKIPPED = Counter(
    "mailsync_outbox_rows_unreadable_total",
    "Outbox rows that could not be turned into events (logged, then marked)",
)
