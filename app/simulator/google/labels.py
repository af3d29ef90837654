"""Gmail's label catalogue and how a seeded message gets its labels.

System labels have fixed upper-case ids; user labels are `Label_N` with a display name.
A seeded message's labels are a pure function of the corpus (its `bucket`, read state and
category) plus a cheap hash of its index, packed into one int so a million-message mailbox
can keep them in an array.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from app.simulator.corpus import CATEGORIES, GeneratedMessage

SYSTEM_LABELS: tuple[str, ...] = (
    "INBOX",
    "SENT",
    "DRAFT",
    "SPAM",
    "TRASH",
    "UNREAD",
    "STARRED",
    "IMPORTANT",
    "CATEGORY_PERSONAL",
    "CATEGORY_SOCIAL",
    "CATEGORY_PROMOTIONS",
    "CATEGORY_UPDATES",
    "CATEGORY_FORUMS",
    "CHAT",
)
# Labels Gmail hides from the label list UI but still reports on messages.
_HIDDEN = {"UNREAD", "CHAT", "SPAM", "TRASH", "DRAFT", "SENT"}

# The corpus' categories become the seeded user labels Label_1..Label_5, in this order.
SEEDED_USER_LABELS: dict[str, str] = {
    f"Label_{n}": name for n, name in enumerate(CATEGORIES, start=1)
}
_CATEGORY_LABEL = {name: label_id for label_id, name in SEEDED_USER_LABELS.items()}

_BIT_ORDER: tuple[str, ...] = (*SYSTEM_LABELS, *SEEDED_USER_LABELS)
_BIT = {label: 1 << n for n, label in enumerate(_BIT_ORDER)}
SENT_BIT = _BIT["SENT"]
# Set on every derived value, so 0 in a cache array means "not derived yet".
DERIVED = 1 << 31

RECEIVED_CATEGORIES = (
    (55, "CATEGORY_PERSONAL"),
    (75, "CATEGORY_UPDATES"),
    (88, "CATEGORY_PROMOTIONS"),
    (96, "CATEGORY_SOCIAL"),
    (100, "CATEGORY_FORUMS"),
)


def _mix(seed: int, index: int) -> int:
    # A 32-bit multiplicative hash: independent-looking bits for star/importance/category.
    return ((index + 1) * 0x9E3779B1 ^ (seed * 0x85EBCA77)) & 0xFFFFFFFF


def derive_bits(message: GeneratedMessage, seed: int) -> int:
    """The labels a seeded message starts with, as a bit set."""
    bucket = message.bucket
    if bucket < 70:
        folder: str | None = "INBOX"
    elif bucket < 82:
        folder = "SENT"
    elif bucket < 90:
        folder = None  # archived: in All Mail only
    elif bucket < 93:
        folder = "SPAM"
    elif bucket < 97:
        folder = "TRASH"
    else:
        folder = "DRAFT"
    bits = DERIVED
    if folder is not None:
        bits |= _BIT[folder]
    mix = _mix(seed, message.position)
    received = folder not in ("SENT", "DRAFT")
    if received:
        if not message.is_read:
            bits |= _BIT["UNREAD"]
        slot = mix % 100
        for upper, category in RECEIVED_CATEGORIES:
            if slot < upper:
                bits |= _BIT[category]
                break
        if (mix >> 16) % 100 < 20:
            bits |= _BIT["IMPORTANT"]
    if (mix >> 8) % 100 < 3:
        bits |= _BIT["STARRED"]
    if message.category is not None:
        bits |= _BIT[_CATEGORY_LABEL[message.category]]
    return bits


@lru_cache(maxsize=4096)
def labels_of(bits: int) -> frozenset[str]:
    return frozenset(label for label in _BIT_ORDER if bits & _BIT[label])


def system_label_resource(label_id: str) -> dict[str, Any]:
    resource: dict[str, Any] = {"id": label_id, "name": label_id, "type": "system"}
    if label_id not in _HIDDEN:
        resource["messageListVisibility"] = "hide" if label_id.startswith("CATEGORY_") else "show"
        resource["labelListVisibility"] = (
            "labelHide" if label_id.startswith("CATEGORY_") else "labelShow"
        )
    return resource


def user_label_resource(label_id: str, name: str) -> dict[str, Any]:
    return {
        "id": label_id,
        "name": name,
        "type": "user",
        "messageListVisibility": "show",
        "labelListVisibility": "labelShow",
    }
