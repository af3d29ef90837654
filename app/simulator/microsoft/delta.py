"""messages/delta for one folder: opaque state tokens over the folder's change log.

A round starts from an empty token (full enumeration at snapshot `since`) or from a
deltaToken (changes in (since, until]). A skipToken pins the round: (kind, since, until,
position). Replaying any token recomputes the same slice, so a client that retries a page
sees the same messages (with their current properties, as Exchange does).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from bisect import bisect_right
from dataclasses import dataclass

from app.simulator.corpus import generate_fields
from app.simulator.microsoft.mailbox import Folder, Mailbox
from app.simulator.microsoft.resources import message_json, removed_json, seeded_renderer

DEFAULT_PAGE_SIZE = 10
# Outlook caps message pages at 1000 whatever odata.maxpagesize asks for.
MAX_PAGE_SIZE = 1000

# Yield to the event loop this often while building a page: a cold 1000-message page is
# tens of milliseconds of CPU, and other requests must be admitted (and counted) on time.
YIELD_EVERY = 50

ENUMERATE = "i"
CHANGES = "c"


class TokenError(ValueError):
    """A token that is not one of ours (400)."""


class TokenExpired(Exception):
    """A token older than the folder's sync state (410)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, slots=True)
class DeltaToken:
    kind: str
    folder: int
    since: int
    until: int
    position: int
    select: str

    def encode(self, tag: bytes) -> str:
        raw = json.dumps(
            [
                1,
                tag.hex(),
                self.kind,
                self.folder,
                self.since,
                self.until,
                self.position,
                self.select,
            ],
            separators=(",", ":"),
        ).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str, tag: bytes) -> DeltaToken:
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            version, tag_hex, kind, folder, since, until, position, select = json.loads(raw)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise TokenError("The state token is malformed.") from exc
        if version != 1 or tag_hex != tag.hex() or kind not in (ENUMERATE, CHANGES):
            raise TokenError("The state token does not belong to this collection.")
        return cls(kind, int(folder), int(since), int(until), int(position), str(select))


@dataclass(slots=True)
class DeltaPage:
    # Serialized message resources, joined into the page as they are.
    items: list[str]
    next_token: DeltaToken | None = None
    delta_token: DeltaToken | None = None


def start_token(mailbox: Mailbox, folder: Folder, select: str) -> DeltaToken:
    return DeltaToken(ENUMERATE, folder.index, mailbox.seq, mailbox.seq, 0, select)


async def page(
    mailbox: Mailbox,
    folder: Folder,
    token: DeltaToken,
    *,
    page_size: int,
    immutable: bool,
    select: tuple[str, ...] | None,
) -> DeltaPage:
    if token.since < folder.valid_from:
        raise TokenExpired(folder.invalid_code)
    if token.kind == ENUMERATE:
        return await _enumeration_page(mailbox, folder, token, page_size, immutable, select)
    return await _changes_page(mailbox, folder, token, page_size, immutable, select)


async def _enumeration_page(
    mailbox: Mailbox,
    folder: Folder,
    token: DeltaToken,
    page_size: int,
    immutable: bool,
    select: tuple[str, ...] | None,
) -> DeltaPage:
    # Positions walk arrivals up to the snapshot (newest first), then the seeded members
    # (newest first). Both sequences are append-only, so a position means the same thing
    # on every replay. Messages that arrive after the snapshot belong to the next round.
    arrivals = bisect_right(folder.arrival_seq, token.since)
    seeded = len(folder.seed)
    end = arrivals + seeded
    position = token.position
    items: list[str] = []
    overlay = mailbox.overlay
    index = folder.index
    while position < arrivals and len(items) < page_size:
        slot = arrivals - 1 - position
        key = folder.arrival_key[slot]
        position += 1
        state = overlay.get(key)
        if (
            state is None
            or state.deleted
            or state.folder != index
            or state.folder_since != folder.arrival_seq[slot]
        ):
            continue
        items.append(message_json(mailbox, key, state, immutable=immutable, select=select))
        if len(items) % YIELD_EVERY == 0:
            await asyncio.sleep(0)
    if position < end and len(items) < page_size:
        # Seeded members: almost all are never mutated, and those are looked up when the
        # mailbox was pre-rendered for this $select, else rendered by a renderer compiled
        # for it straight from the corpus fields.
        stored = mailbox.prerendered.get((index, immutable, select))
        render = seeded_renderer(mailbox, folder, immutable=immutable, select=select)
        seed_keys = folder.seed
        seed, total, owner = mailbox.seed, mailbox.seeded_count, mailbox.email
        append = items.append
        overlay_get = overlay.get
        rendered = 0
        while position < end and len(items) < page_size:
            slot = seeded - 1 - (position - arrivals)
            key = seed_keys[slot]
            position += 1
            state = overlay_get(key)
            if state is None:
                if stored is not None:
                    # A lookup costs too little to be worth a trip through the event loop.
                    append(stored[slot])
                    continue
                append(render(key, generate_fields(seed, key, total, owner)))
            elif state.deleted or state.folder != index or state.folder_since != 0:
                continue
            else:
                append(message_json(mailbox, key, state, immutable=immutable, select=select))
            rendered += 1
            if rendered % YIELD_EVERY == 0:
                await asyncio.sleep(0)
    if position < end:
        return DeltaPage(items, next_token=_advance(token, position))
    return DeltaPage(items, delta_token=_round_done(token, token.since))


async def prerender(
    mailbox: Mailbox, *, immutable: bool, select: tuple[str, ...] | None
) -> tuple[int, int]:
    """Render every seeded message once as enumeration pages would, and keep the JSON.

    Real Exchange serves messages from storage; this lets a benchmark move the corpus
    generation and rendering it would otherwise charge to the machine under test out of
    the measured run. Returns (messages, UTF-8 bytes).
    """
    seed, total, owner = mailbox.seed, mailbox.seeded_count, mailbox.email
    messages = size = 0
    for folder in mailbox.folders:
        render = seeded_renderer(mailbox, folder, immutable=immutable, select=select)
        rendered: list[str] = []
        append = rendered.append
        # A million messages take seconds: other requests must keep being served meanwhile.
        for done, key in enumerate(folder.seed, 1):
            append(render(key, generate_fields(seed, key, total, owner)))
            if done % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        # Published whole, so a page served meanwhile renders as before. Messages mutated
        # by now are rendered too: pages never read an entry whose message has an overlay.
        mailbox.prerendered[(folder.index, immutable, select)] = rendered
        messages += len(rendered)
        size += sum(len(text) if text.isascii() else len(text.encode()) for text in rendered)
    return messages, size


async def _changes_page(
    mailbox: Mailbox,
    folder: Folder,
    token: DeltaToken,
    page_size: int,
    immutable: bool,
    select: tuple[str, ...] | None,
) -> DeltaPage:
    # A deltaToken is open-ended; the first page of its round pins `until` to now.
    until = token.until if token.until >= token.since else mailbox.seq
    changed = mailbox.changed_keys(folder, token.since, until)
    start = token.position
    stop = min(len(changed), start + page_size)
    items: list[str] = []
    for done, (key, generations) in enumerate(changed[start:stop], 1):
        if done % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        state = mailbox.overlay.get(key) or mailbox.state(key)
        present = not state.deleted and state.folder == folder.index
        if immutable:
            if present:
                items.append(message_json(mailbox, key, state, immutable=True, select=select))
            else:
                items.append(removed_json(mailbox.message_id(key, immutable=True)))
            continue
        for generation in generations:
            if not present or generation != state.generation:
                items.append(
                    removed_json(mailbox.message_id(key, immutable=False, generation=generation))
                )
        if present:
            items.append(message_json(mailbox, key, state, immutable=False, select=select))
    pinned = DeltaToken(CHANGES, token.folder, token.since, until, token.position, token.select)
    if stop < len(changed):
        return DeltaPage(items, next_token=_advance(pinned, stop))
    return DeltaPage(items, delta_token=_round_done(pinned, until))


def _advance(token: DeltaToken, position: int) -> DeltaToken:
    return DeltaToken(token.kind, token.folder, token.since, token.until, position, token.select)


def _round_done(token: DeltaToken, since: int) -> DeltaToken:
    # until < since marks "open-ended": the next round decides its own upper bound.
    return DeltaToken(CHANGES, token.folder, since, -1, 0, token.select)
