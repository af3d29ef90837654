"""Mail folders through `mailFolders/delta`: after the first listing, one request per slice.

Graph's folder delta returns every folder of the mailbox (nested ones too, with their
parentFolderId) and then only the folders that changed: created, renamed, moved under
another parent (a new parentFolderId), or deleted (`@removed`). A round may list a child
before its parent. The folder set, its deltaLink and the well-known folder ids are state
the engine keeps in PostgreSQL (`StreamListing.state`, `list_streams_after`): any worker
asks Graph for folder changes with a single request, and only a mailbox seen for the first
time (or whose folder deltaLink died) is enumerated again. `streams` keeps the same state
in a bounded in-process cache, for callers without a store (tests, the monitor's counts).

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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.providers.base import CursorInvalidError, StreamInfo, StreamListing, SyncContext
from app.providers.outlook.client import GraphClient
from app.providers.outlook.mapper import FOLDER_SELECT

_FOLDER_PAGE_PREFER = "odata.maxpagesize=100"


@dataclass(slots=True)
class _KnownFolders:
    delta_link: str = ""
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    # folder id -> system label (INBOX, SENT, ...), resolved once per mailbox
    well_known: dict[str, str] = field(default_factory=dict)

    def dump(self) -> dict[str, Any]:
        # Only what labels and progress need: the state is stored for every mailbox.
        kept = ("displayName", "parentFolderId", "totalItemCount")
        return {
            "delta_link": self.delta_link,
            "folders": {fid: {k: f[k] for k in kept if k in f} for fid, f in self.folders.items()},
            "well_known": self.well_known,
        }

    @classmethod
    def load(cls, state: Mapping[str, Any] | None) -> _KnownFolders | None:
        if not state or not isinstance(state.get("delta_link"), str):
            return None
        folders = state.get("folders")
        well_known = state.get("well_known")
        if not isinstance(folders, dict) or not isinstance(well_known, dict):
            return None
        return cls(str(state["delta_link"]), dict(folders), dict(well_known))


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
        known = await self._refreshed(ctx, base, self._known.pop(key, None), resolve_well_known)
        self._known[key] = known
        while len(self._known) > self._capacity:
            self._known.popitem(last=False)
        return _streams_of(known)

    async def listing(
        self,
        ctx: SyncContext,
        base: str,
        state: Mapping[str, Any] | None,
        resolve_well_known: Callable[[], Awaitable[dict[str, str]]],
    ) -> StreamListing:
        """The streams from the stored `state` (one folder-delta request when it is
        usable), and the state to store."""
        known = await self._refreshed(ctx, base, _KnownFolders.load(state), resolve_well_known)
        return StreamListing(_streams_of(known), known.dump())

    async def _refreshed(
        self,
        ctx: SyncContext,
        base: str,
        known: _KnownFolders | None,
        resolve_well_known: Callable[[], Awaitable[dict[str, str]]],
    ) -> _KnownFolders:
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
        return known

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


def _streams_of(known: _KnownFolders) -> list[StreamInfo]:
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
