"""Mail folders through `mailFolders/delta`: after the first listing, one request per slice.

Graph's folder delta returns every folder of the mailbox (nested ones too, with their
parentFolderId) and then only the folders that changed: created, renamed, moved under
another parent (a new parentFolderId), or deleted (`@removed`). A round may list a child
before its parent. The folder set and its deltaLink are kept per mailbox in a bounded
in-process cache: a worker that has seen a mailbox asks Graph for folder changes with a
single request; a worker that has not (or whose folder deltaLink died) enumerates again,
which is always correct, only slower.

A folder's label names its place in the tree, so two folders of the same name are never
one label: a well-known folder is its system label (INBOX, SENT, ...); any other folder is
its parent's label, "/", and its display name, with "/" and "\\" inside a name escaped by
"\\" ("INBOX/Clients/Acme", "Projects/2024", "Projects/a\\/b" for a folder named "a/b");
a top-level folder is its display name alone. A rename or a move changes the labels of the
folder and everything below it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.providers.base import CursorInvalidError, StreamInfo, SyncContext
from app.providers.outlook.client import GraphClient
from app.providers.outlook.mapper import FOLDER_SELECT

_FOLDER_PAGE_PREFER = "odata.maxpagesize=100"


@dataclass(slots=True)
class _KnownFolders:
    delta_link: str = ""
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    # folder id -> system label (INBOX, SENT, ...), resolved once per mailbox
    well_known: dict[str, str] = field(default_factory=dict)


class FolderTracker:
    def __init__(self, graph: GraphClient, *, capacity: int = 4096) -> None:
        self._graph = graph
        self._capacity = capacity
        self._known: OrderedDict[str, _KnownFolders] = OrderedDict()

    async def streams(
        self,
        ctx: SyncContext,
        base: str,
        resolve_well_known: Callable[[], Awaitable[dict[str, str]]],
    ) -> list[StreamInfo]:
        key = ctx.account.mailbox_id
        known = self._known.pop(key, None)
        if known is not None:
            try:
                await self._follow(ctx, known, known.delta_link, None)
            except CursorInvalidError:
                known = None
        if known is None:
            # Independent lookups: the well-known names beside the folder enumeration.
            known = _KnownFolders()
            well_known, followed = await asyncio.gather(
                resolve_well_known(),
                self._follow(ctx, known, f"{base}/mailFolders/delta", {"$select": FOLDER_SELECT}),
                return_exceptions=True,
            )
            # Both have finished here, so neither is left running unobserved.
            for outcome in (well_known, followed):
                if isinstance(outcome, BaseException):
                    raise outcome
            assert isinstance(well_known, dict)
            known.well_known = well_known
        self._known[key] = known
        while len(self._known) > self._capacity:
            self._known.popitem(last=False)
        labels = folder_labels(known.folders, known.well_known)
        return [
            StreamInfo(
                key=folder_id,
                name=str(folder.get("displayName") or ""),
                total_estimate=folder.get("totalItemCount"),
                labels=(labels[folder_id],),
            )
            for folder_id, folder in known.folders.items()
        ]

    async def _follow(
        self, ctx: SyncContext, known: _KnownFolders, link: str, params: dict[str, str] | None
    ) -> None:
        folders = dict(known.folders)
        while True:
            response = await self._graph.request(
                ctx, "GET", link, params=params, headers={"Prefer": _FOLDER_PAGE_PREFER}
            )
            body = orjson.loads(response.content)
            for folder in body.get("value", []):
                folder_id = str(folder["id"])
                if "@removed" in folder:
                    folders.pop(folder_id, None)
                else:
                    # Changed folders may carry only the properties that changed.
                    folders[folder_id] = {**folders.get(folder_id, {}), **folder}
            next_link = body.get("@odata.nextLink")
            if isinstance(next_link, str):
                link, params = next_link, None
                continue
            delta_link = body.get("@odata.deltaLink")
            if not isinstance(delta_link, str):
                raise CursorInvalidError("folder delta page had neither a nextLink nor a deltaLink")
            # Only a completed round replaces what we knew.
            known.folders, known.delta_link = folders, delta_link
            return


def _escaped(name: str) -> str:
    return name.replace("\\", "\\\\").replace("/", "\\/")


def folder_labels(folders: dict[str, dict[str, Any]], well_known: dict[str, str]) -> dict[str, str]:
    """Each folder's label: its well-known label, else its parent's label + "/" + its name."""
    labels: dict[str, str] = {}

    def label(folder_id: str, below: frozenset[str]) -> str:
        if folder_id in labels:
            return labels[folder_id]
        if folder_id in well_known:
            return well_known[folder_id]
        folder = folders[folder_id]
        name = _escaped(str(folder.get("displayName") or ""))
        parent = folder.get("parentFolderId")
        # The root is not in the folder list; a cycle (never seen) would end here too.
        if isinstance(parent, str) and parent in folders and parent not in below:
            return f"{label(parent, below | {folder_id})}/{name}"
        return name

    for folder_id in folders:
        labels[folder_id] = label(folder_id, frozenset())
    return labels
