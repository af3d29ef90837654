"""User label names per mailbox, cached for the provider's lifetime.

Messages carry label ids; the normalized copy stores system ids (INBOX, UNREAD...) as
they are and user labels (`Label_N`) by name. labels.list is fetched once per mailbox and
again when a page mentions a user label id the cache has not seen (a label created since).
"""

from __future__ import annotations

from collections.abc import Iterable

from app.providers.base import SyncContext
from app.providers.gmail.client import GmailClient


def is_user_label(label_id: str) -> bool:
    return label_id.startswith("Label_")


class LabelCache:
    def __init__(self, client: GmailClient) -> None:
        self._client = client
        self._names: dict[str, dict[str, str]] = {}

    async def names(self, ctx: SyncContext, label_ids: Iterable[str]) -> dict[str, str]:
        """User label id -> name, complete for `label_ids` as far as Gmail knows them."""
        key = ctx.account.mailbox_id
        known = self._names.get(key)
        wanted = {label for label in label_ids if is_user_label(label)}
        if known is None or not wanted <= known.keys():
            listing = await self._client.list_labels(ctx)
            known = {
                label["id"]: label.get("name") or label["id"]
                for label in listing.get("labels") or ()
                if isinstance(label, dict) and is_user_label(str(label.get("id", "")))
            }
            self._names[key] = known
        return known
