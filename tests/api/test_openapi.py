"""openapi.json is generated from the app and committed; drift fails the build."""

from __future__ import annotations

import json
from pathlib import Path

from app.cli import openapi_document

ROOT = Path(__file__).resolve().parents[2]


def test_committed_openapi_matches_the_app() -> None:
    committed = (ROOT / "openapi.json").read_text()
    assert committed == openapi_document(), "openapi.json is stale: run `mailsync openapi`"


def test_interface_paths_are_present() -> None:
    paths = json.loads((ROOT / "openapi.json").read_text())["paths"]
    for path in (
        "/mail/connect",
        "/mail/disconnect",
        "/mail/status",
        "/mail/messages",
        "/webhooks/microsoft",
        "/webhooks/google",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    item = json.loads((ROOT / "openapi.json").read_text())["components"]["schemas"]["MessageItem"][
        "properties"
    ]
    assert {
        "id",
        "mailbox_id",
        "provider_message_id",
        "thread_id",
        "internet_message_id",
        "subject",
        "from",
        "to",
        "cc",
        "bcc",
        "snippet",
        "received_at",
        "labels",
        "is_read",
        "has_attachments",
    } <= set(item)
