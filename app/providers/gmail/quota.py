"""Quota units per Gmail method (developers.google.com/gmail/api/reference/quota).

A batch costs the sum of its parts: Google splits it into separate requests first.
"""

from __future__ import annotations

QUOTA_UNITS: dict[str, int] = {
    "users.getProfile": 1,
    "users.labels.list": 1,
    "users.labels.get": 1,
    "users.messages.list": 5,
    "users.messages.get": 5,
    "users.messages.attachments.get": 5,
    "users.history.list": 2,
    "users.watch": 100,
    "users.stop": 50,
}
