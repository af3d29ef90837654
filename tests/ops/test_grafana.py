"""The Grafana dashboard and Prometheus config in deploy/ only use metrics mailsync exports."""

from __future__ import annotations

import json
import re

from prometheus_client import REGISTRY

import app.events.metrics
import app.metrics  # noqa: F401 - registers every metric
from tests.ops.support import ROOT

SUFFIXES = ("", "_total", "_bucket", "_count", "_sum", "_created")


def exported() -> set[str]:
    names = set()
    for collector in list(REGISTRY._collector_to_names):
        for family in collector.collect():
            for sample in family.samples:
                names.add(sample.name)
            names.update(family.name + suffix for suffix in SUFFIXES)
    return names


def test_every_panel_queries_an_exported_metric() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/mailsync.json").read_text())
    names = exported()
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for name in re.findall(r"\bmailsync_[a-z_]+", target["expr"]):
                used.add(name)
                assert name in names, (panel["title"], name)
    # Worker, API and queue metrics are all on the board.
    for needed in (
        "mailsync_messages_written_total",
        "mailsync_pages_written_total",
        "mailsync_sync_slice_duration_seconds_bucket",
        "mailsync_provider_requests_total",
        "mailsync_token_refreshes_total",
        "mailsync_sync_errors_total",
        "mailsync_leases_lost_total",
        "mailsync_queue_depth",
        "mailsync_sync_lag_seconds_bucket",
        "mailsync_webhook_duration_seconds_bucket",
        "mailsync_outbox_oldest_unpublished_age_seconds",
    ):
        assert needed in used, needed


def test_prometheus_scrapes_the_api_and_the_worker_ports() -> None:
    config = (ROOT / "deploy/prometheus/prometheus.yml").read_text()
    assert '"api:8000"' in config and '"worker:9101"' in config and '"publisher:9102"' in config
    compose = (ROOT / "docker-compose.yml").read_text()
    assert 'WORKER_METRICS_PORT: "9101"' in compose and "profiles: [monitoring]" in compose
