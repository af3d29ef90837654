"""One simulated Exchange mailbox: folders, lazily generated messages, mutations, change logs.

A seeded message costs nothing until it is read: its content comes from `corpus.generate`
and its folder from a cheap hash of (seed, key). Only mutated messages get an overlay
entry. Every mutation takes the next mailbox sequence number and is appended to the change
log of each folder it touches; delta tokens are positions in those logs.
"""

from __future__ import annotations

import heapq
import struct
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app.simulator.contacts import PlantedContact, Planting
from app.simulator.content import ContentSpec, seeded_content
from app.simulator.corpus import GeneratedMessage, generate
from app.simulator.microsoft import ids


@dataclass(frozen=True, slots=True)
class FolderSpec:
    display_name: str
    well_known_name: str | None
    parent: int | None
    # Share of seeded messages, in buckets of 1%.
    buckets: range = range(0)


# Index 0 is the root ("msgfolderroot"); Exchange lists its children as the top-level folders.
FOLDER_LAYOUT: tuple[FolderSpec, ...] = (
    FolderSpec("Top of Information Store", "msgfolderroot", None),
    FolderSpec("Inbox", "inbox", 0, range(0, 64)),
    FolderSpec("Team", None, 1, range(64, 68)),
    FolderSpec("Leads", None, 2, range(68, 70)),
    FolderSpec("Sent Items", "sentitems", 0, range(70, 82)),
    FolderSpec("Archive", "archive", 0, range(82, 90)),
    FolderSpec("Projects", None, 0, range(90, 94)),
    FolderSpec("Receipts", None, 0, range(94, 96)),
    FolderSpec("Junk Email", "junkemail", 0, range(96, 97)),
    FolderSpec("Drafts", "drafts", 0, range(97, 98)),
    FolderSpec("Deleted Items", "deleteditems", 0, range(98, 100)),
    FolderSpec("Outbox", "outbox", 0),
    FolderSpec("Conversation History", "conversationhistory", 0),
)
INBOX = 1
SENT_ITEMS = 4
DRAFTS = 9
# Exchange shows sent mail and drafts as read.
ALWAYS_READ = frozenset({SENT_ITEMS, DRAFTS})
_MASK64 = (1 << 64) - 1
# (folder index, immutable ids, parsed $select): one kind of seeded enumeration output.
PrerenderKey = tuple[int, bool, tuple[str, ...] | None]
# Where seeded messages go, per mailbox: bucket (0..99, `initial_bucket`) -> folder index.
# "default" spreads them over the folders by FOLDER_LAYOUT's shares; "inbox_only" puts every
# one in the Inbox (the other folders exist, empty): a mailbox whose backfill is one folder.
LAYOUTS: dict[str, bytes] = {
    "default": bytes(
        next(i for i, spec in enumerate(FOLDER_LAYOUT) if b in spec.buckets) for b in range(100)
    ),
    "inbox_only": bytes([INBOX]) * 100,
}


def initial_bucket(seed: int, key: int) -> int:
    """0..99 from a splitmix64 round: cheap enough to place a million messages in a second.

    `corpus.generate` costs ~30 µs a message; placing folders from its `bucket` would mean
    generating the whole mailbox before the first folder count could be answered.
    """
    x = (seed * 0x9E3779B97F4A7C15 + (key + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) % 100


@dataclass(slots=True)
class MessageState:
    """What a mutation changed about a message; unmutated messages have no entry."""

    folder: int
    is_read: bool
    categories: tuple[str, ...]
    deleted: bool = False
    # REST ids embed it: a move mints a new REST id, the ImmutableId stays.
    generation: int = 0
    # Sequence number of the arrival in `folder`; 0 for the seeded placement.
    folder_since: int = 0
    modified_at: datetime | None = None
    # Bumped by every mutation; etags and changeKeys are derived from it.
    version: int = 0


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One mutation, for change notifications: created/updated/deleted in which folders."""

    change_type: str
    key: int
    folder: int
    previous_folder: int | None = None


@dataclass
class Folder:
    index: int
    id: str
    spec: FolderSpec
    # Renames and moves change these; the spec keeps how the folder was seeded.
    display_name: str = ""
    parent: int | None = None
    # Deleted folders keep their slot (ids are indexes) and answer as gone.
    deleted: bool = False
    children: list[int] = field(default_factory=list)
    seed: array = field(default_factory=lambda: array("I"))
    arrival_seq: array = field(default_factory=lambda: array("Q"))
    arrival_key: array = field(default_factory=lambda: array("I"))
    log_seq: array = field(default_factory=lambda: array("Q"))
    log_key: array = field(default_factory=lambda: array("I"))
    log_generation: array = field(default_factory=lambda: array("I"))
    total: int = 0
    unread: int = 0
    # Delta tokens minted before this sequence number are dead (410).
    valid_from: int = 0
    invalid_code: str = "syncStateNotFound"
    changed_seq: int = 0

    def __post_init__(self) -> None:
        if not self.display_name:
            self.display_name = self.spec.display_name
        if self.parent is None:
            self.parent = self.spec.parent

    @property
    def well_known_name(self) -> str | None:
        return self.spec.well_known_name


class Mailbox:
    def __init__(
        self,
        *,
        email: str,
        seed: int,
        message_count: int,
        tenant_id: str,
        user_id: str | None = None,
        display_name: str | None = None,
        token_lifetime: int = 3600,
        app_only_granted: bool = True,
        layout: str = "default",
    ) -> None:
        self.email = email.lower()
        self.user_id = user_id or ids.user_guid(self.email)
        self.display_name = display_name or self.email.split("@")[0].replace(".", " ").title()
        self.tenant_id = tenant_id
        self.seed = seed
        self.seeded_count = message_count
        self.layout = layout
        self.bucket_folder = LAYOUTS[layout]
        self.token_lifetime = token_lifetime
        self.app_only_granted = app_only_granted
        self.counter_key = f"microsoft:{self.email}"
        self.tag = ids.mailbox_tag(self.user_id)
        self.folders = [
            Folder(index=i, id=ids.folder_id(self.tag, i), spec=spec)
            for i, spec in enumerate(FOLDER_LAYOUT)
        ]
        for folder in self.folders:
            if folder.parent is not None:
                self.folders[folder.parent].children.append(folder.index)
        self._folder_lookup = {f.id: f.index for f in self.folders}
        self._folder_lookup.update(
            {f.well_known_name: f.index for f in self.folders if f.well_known_name}
        )
        self.seq = 0
        self.next_key = message_count
        self.overlay: dict[int, MessageState] = {}
        self.added: dict[int, GeneratedMessage] = {}
        # Seeded messages a planted correspondent takes part in (app/simulator/contacts.py).
        self.planting = Planting(self.email)
        self.planted: dict[int, GeneratedMessage] = {}
        self.added_origin: dict[int, int] = {}
        self._last_key = -1
        self._last_content = generate(seed, 0, 1, self.email)
        self._last_added_at = datetime.now(UTC).replace(microsecond=0)
        # A folder listing's window, order, read filter and $skip -> (seq, the key its next
        # page starts at): offset paging resumes where the previous page stopped while
        # nothing changed (app/simulator/microsoft/graph.py, _list_messages).
        self.list_positions: OrderedDict[tuple[Any, ...], tuple[int, int]] = OrderedDict()
        # (folder, since, until) -> changed keys: a long round is paged without rescanning.
        self.change_cache: OrderedDict[tuple[int, int, int], list[tuple[int, tuple[int, ...]]]] = (
            OrderedDict()
        )
        # (folder, immutable ids, $select) -> each seeded member's JSON as never mutated, by
        # its position in `folder.seed`; filled only on request (control API "prerender").
        # Nothing a seeded render reads changes after construction (ids, folder ids, the
        # owner's name and address, seed, count); only a message's overlay entry does, and
        # readers check that first, so no mutation makes an entry stale. Whatever becomes
        # changeable later (a PATCHable display name, say) must clear this.
        self.prerendered: dict[PrerenderKey, list[str]] = {}
        # Bodies and attachments given through the control API, by key (others are seeded).
        self.custom_content: dict[int, ContentSpec] = {}
        # Properties a message renders oddly (absent, null, a wrong type), by key: how
        # drafts, API-created items and Graph's occasional odd values look.
        self.quirks: dict[int, dict[str, object]] = {}

    def content_spec(self, key: int) -> ContentSpec:
        custom = self.custom_content.get(key)
        if custom is not None:
            return custom
        return seeded_content(self.seed, key, self.content(key))

    # -- seeding ------------------------------------------------------------------------

    def build_index(self) -> None:
        """Place every seeded message and count folders; O(messages), no generation."""
        seed, total = self.seed, self.seeded_count
        arrays = [f.seed for f in self.folders]
        placement = self.bucket_folder
        for key in range(total):
            arrays[placement[initial_bucket(seed, key)]].append(key)
        for folder in self.folders:
            folder.total = len(folder.seed)
        # Only the newest 3% can be unread (corpus rule), so only those are generated here.
        first_maybe_unread = max(0, int(total - total * 0.03) - 1)
        for key in range(first_maybe_unread, total):
            folder_index = placement[initial_bucket(seed, key)]
            if not self._base_is_read(key, folder_index):
                self.folders[folder_index].unread += 1

    def plant(self, contacts: list[PlantedContact]) -> None:
        """Place correspondents into seeded messages. Each such message gets an overlay
        entry (its state as seeded), so pages render it from `content`, never from the
        corpus' untouched fields or a pre-rendered copy."""
        self.planting = Planting.plan(self.seed, self.seeded_count, self.email, contacts)
        for key in self.planting.roles:
            folder = self.base_folder(key)
            generated = generate(self.seed, key, self.seeded_count, self.email)
            self.planted[key] = self.planting.apply(
                key, generated, owner_sent=folder in ALWAYS_READ
            )
            self.overlay[key] = seeded_state(self.planted[key], folder)

    # -- reading ------------------------------------------------------------------------

    def folder(self, ref: str, *, deleted: bool = False) -> Folder | None:
        """The folder an id or well-known name means; a deleted one only if asked for."""
        index = self._folder_lookup.get(ref)
        if index is None:
            index = self._folder_lookup.get(ref.lower())
        if index is None:
            index = ids.parse_folder_id(self.tag, ref)
            if index is not None and index >= len(self.folders):
                index = None
        if index is None:
            return None
        folder = self.folders[index]
        return folder if deleted or not folder.deleted else None

    def live_folders(self) -> list[Folder]:
        """Every folder below the root that still exists."""
        return [f for f in self.folders[1:] if not f.deleted]

    def subtree(self, folder: Folder) -> list[Folder]:
        found = [folder]
        for child in folder.children:
            found += self.subtree(self.folders[child])
        return found

    def content(self, key: int) -> GeneratedMessage:
        added = self.added.get(key) or self.planted.get(key)
        if added is not None:
            return added
        # Only the last message is remembered (callers often ask for state, then JSON).
        # An LRU of generated messages made cold pages ~15% slower: evicting thousands of
        # long-dead tuples a page defeats the CPU cache, and a backfill never reads twice.
        if key == self._last_key:
            return self._last_content
        generated = generate(self.seed, key, self.seeded_count, self.email)
        self._last_key, self._last_content = key, generated
        return generated

    def base_folder(self, key: int) -> int:
        return self.bucket_folder[initial_bucket(self.seed, key)]

    def origin_folder(self, key: int) -> int:
        """Where the message was first placed; a draft moved elsewhere is still a draft."""
        origin = self.added_origin.get(key)
        return origin if origin is not None else self.base_folder(key)

    def origin_of(self, key: int, state: MessageState) -> int:
        """origin_folder, given the message's state: saves placing a never-moved message."""
        origin = self.added_origin.get(key)
        if origin is not None:
            return origin
        # Only a move changes a seeded message's folder, and every move bumps its generation.
        return state.folder if state.generation == 0 else self.base_folder(key)

    def sender(self, key: int, origin: int | None = None) -> tuple[str, str]:
        """(name, address); the owner wrote what started in Sent Items or Drafts."""
        if (self.origin_folder(key) if origin is None else origin) in ALWAYS_READ:
            return self.display_name, self.email
        generated = self.content(key)
        return generated.from_name, generated.from_address

    def _base_is_read(self, key: int, folder_index: int) -> bool:
        return folder_index in ALWAYS_READ or self.content(key).is_read

    def state(self, key: int) -> MessageState:
        """The message's current state (not stored unless it was mutated)."""
        state = self.overlay.get(key)
        if state is not None:
            return state
        return seeded_state(self.content(key), self.base_folder(key))

    def exists(self, key: int) -> bool:
        if key < 0 or key >= self.next_key:
            return False
        state = self.overlay.get(key)
        return state is None or not state.deleted

    def placement(self, key: int) -> tuple[int, int]:
        """(folder, arrival seq) without generating content; folder -1 when deleted."""
        state = self.overlay.get(key)
        if state is None:
            return self.base_folder(key), 0
        return (-1 if state.deleted else state.folder), state.folder_since

    def resolve_message(self, value: str) -> int | None:
        """The key behind a REST or immutable id; None when unknown, deleted or stale."""
        parsed = ids.parse_message_id(self.tag, value)
        if parsed is None:
            return None
        key, generation = parsed
        if not self.exists(key):
            return None
        if generation is not None and generation != self.state(key).generation:
            return None
        return key

    def message_id(self, key: int, *, immutable: bool, generation: int | None = None) -> str:
        if immutable:
            return ids.message_id(self.tag, key, 0, immutable=True)
        if generation is None:
            generation = self.state(key).generation
        return ids.message_id(self.tag, key, generation, immutable=False)

    def members(self, folder: Folder) -> Iterator[int]:
        """Current messages of a folder, newest key first."""
        seq_cutoff = self.seq
        arrived = [
            key
            for seq, key in zip(folder.arrival_seq, folder.arrival_key, strict=True)
            if seq <= seq_cutoff and self.placement(key) == (folder.index, seq)
        ]
        arrived.sort(reverse=True)
        seeded = (key for key in reversed(folder.seed) if self.placement(key) == (folder.index, 0))
        yield from heapq.merge(arrived, seeded, reverse=True)

    def all_keys_desc(self) -> Iterator[int]:
        for key in range(self.next_key - 1, -1, -1):
            if self.exists(key):
                yield key

    def received_at(self, key: int) -> datetime:
        return self.content(key).received_at

    # -- mutating -----------------------------------------------------------------------

    def _materialize(self, key: int) -> MessageState:
        state = self.overlay.get(key)
        if state is None:
            state = self.state(key)
            self.overlay[key] = state
        return state

    def _log(self, folder: Folder, key: int, generation: int) -> None:
        folder.log_seq.append(self.seq)
        folder.log_key.append(key)
        folder.log_generation.append(generation)

    def _count(self, folder: Folder, total: int, unread: int) -> None:
        folder.total += total
        folder.unread += unread
        folder.changed_seq = self.seq

    def add_message(
        self,
        folder: Folder,
        *,
        subject: str | None = None,
        from_address: str | None = None,
        is_read: bool = False,
        content: ContentSpec | None = None,
        quirks: dict[str, object] | None = None,
    ) -> ChangeEvent:
        key = self.next_key
        self.next_key += 1
        self.seq += 1
        generated = generate(self.seed, key, key + 1, self.email)
        if content is not None:
            self.custom_content[key] = content
            generated = generated._replace(has_attachments=content.has_files)
        if quirks:
            self.quirks[key] = quirks
        now = max(datetime.now(UTC).replace(microsecond=0), self._last_added_at)
        self._last_added_at = now
        self.added[key] = generated._replace(
            received_at=now,
            is_read=is_read,
            category=None,
            subject=generated.subject if subject is None else subject,
            from_address=generated.from_address if from_address is None else from_address.lower(),
            from_name=generated.from_name if from_address is None else display_name(from_address),
        )
        self.added_origin[key] = folder.index
        self.overlay[key] = MessageState(
            folder=folder.index,
            is_read=is_read,
            categories=(),
            folder_since=self.seq,
            modified_at=now,
        )
        folder.arrival_seq.append(self.seq)
        folder.arrival_key.append(key)
        self._log(folder, key, 0)
        self._count(folder, 1, 0 if is_read else 1)
        return ChangeEvent("created", key, folder.index)

    def delete(self, key: int) -> ChangeEvent:
        state = self._materialize(key)
        self.seq += 1
        folder = self.folders[state.folder]
        state.deleted = True
        state.version += 1
        state.modified_at = datetime.now(UTC)
        self._log(folder, key, state.generation)
        self._count(folder, -1, 0 if state.is_read else -1)
        return ChangeEvent("deleted", key, folder.index)

    def move(self, key: int, destination: Folder) -> ChangeEvent | None:
        state = self._materialize(key)
        if state.folder == destination.index:
            return None
        self.seq += 1
        source = self.folders[state.folder]
        self._log(source, key, state.generation)
        self._count(source, -1, 0 if state.is_read else -1)
        state.folder = destination.index
        state.generation += 1
        state.version += 1
        state.folder_since = self.seq
        state.modified_at = datetime.now(UTC)
        destination.arrival_seq.append(self.seq)
        destination.arrival_key.append(key)
        self._log(destination, key, state.generation)
        self._count(destination, 1, 0 if state.is_read else 1)
        return ChangeEvent("updated", key, destination.index, previous_folder=source.index)

    def set_read(self, key: int, is_read: bool) -> ChangeEvent | None:
        state = self._materialize(key)
        if state.is_read == is_read:
            return None
        self.seq += 1
        folder = self.folders[state.folder]
        state.is_read = is_read
        state.version += 1
        state.modified_at = datetime.now(UTC)
        self._log(folder, key, state.generation)
        self._count(folder, 0, -1 if is_read else 1)
        return ChangeEvent("updated", key, folder.index)

    def set_categories(self, key: int, categories: tuple[str, ...]) -> ChangeEvent | None:
        state = self._materialize(key)
        if state.categories == categories:
            return None
        self.seq += 1
        folder = self.folders[state.folder]
        state.categories = categories
        state.version += 1
        state.modified_at = datetime.now(UTC)
        self._log(folder, key, state.generation)
        folder.changed_seq = self.seq
        return ChangeEvent("updated", key, folder.index)

    # -- folders ------------------------------------------------------------------------

    def _touch(self, *folders: Folder | None) -> None:
        for folder in folders:
            if folder is not None:
                folder.changed_seq = self.seq

    def create_folder(self, display_name: str, parent: Folder) -> Folder:
        self.seq += 1
        index = len(self.folders)
        folder = Folder(
            index=index,
            id=ids.folder_id(self.tag, index),
            spec=FolderSpec(display_name, None, parent.index),
        )
        self.folders.append(folder)
        self._folder_lookup[folder.id] = index
        parent.children.append(index)
        self._touch(folder, parent)
        return folder

    def rename_folder(self, folder: Folder, display_name: str) -> None:
        self.seq += 1
        folder.display_name = display_name
        self._touch(folder)

    def move_folder(self, folder: Folder, parent: Folder) -> None:
        """Exchange keeps a moved folder's id (and its messages' ImmutableIds)."""
        if parent.index in {f.index for f in self.subtree(folder)}:
            raise ValueError("a folder cannot move into itself or its own subfolders")
        if folder.parent == parent.index:
            return
        self.seq += 1
        old = self.folders[folder.parent] if folder.parent is not None else None
        if old is not None:
            old.children.remove(folder.index)
        parent.children.append(folder.index)
        folder.parent = parent.index
        self._touch(folder, old, parent)

    def delete_folder(self, folder: Folder) -> list[ChangeEvent]:
        """Hard delete: the folder, its subfolders and every message in them are gone."""
        events: list[ChangeEvent] = []
        doomed = self.subtree(folder)
        for target in doomed:
            events += [self.delete(key) for key in list(self.members(target))]
        self.seq += 1
        parent = self.folders[folder.parent] if folder.parent is not None else None
        if parent is not None:
            parent.children.remove(folder.index)
        for target in doomed:
            target.deleted = True
        self._touch(*doomed, parent)
        return events

    def expire_delta_tokens(self, folder: Folder | None, code: str = "syncStateNotFound") -> None:
        # Bump the sequence so a round started right after this is valid again.
        self.seq += 1
        for target in [folder] if folder is not None else self.folders:
            target.valid_from = self.seq
            target.invalid_code = code

    def changed_keys(
        self, folder: Folder, since: int, until: int
    ) -> list[tuple[int, tuple[int, ...]]]:
        """Distinct keys touched in (since, until], with the REST generations they had here."""
        cache_key = (folder.index, since, until)
        cached = self.change_cache.get(cache_key)
        if cached is not None:
            self.change_cache.move_to_end(cache_key)
            return cached
        start = bisect_right(folder.log_seq, since)
        stop = bisect_right(folder.log_seq, until)
        seen: dict[int, list[int]] = {}
        for i in range(start, stop):
            gens = seen.setdefault(folder.log_key[i], [])
            generation = folder.log_generation[i]
            if generation not in gens:
                gens.append(generation)
        result = [(key, tuple(gens)) for key, gens in seen.items()]
        self.change_cache[cache_key] = result
        if len(self.change_cache) > 32:
            self.change_cache.popitem(last=False)
        return result


def seeded_state(generated: GeneratedMessage, folder_index: int) -> MessageState:
    """The state of a message never mutated since it was seeded into `folder_index`."""
    category = generated.category
    return MessageState(
        folder_index,
        folder_index in ALWAYS_READ or generated.is_read,
        (category,) if category else (),
    )


def display_name(address: str) -> str:
    """What Exchange shows for an address it has no name for: its local part, titled."""
    return address.split("@")[0].replace(".", " ").replace("-", " ").title()


_KEY_VERSION = struct.Struct(">IH")


def change_key(key: int, version: int) -> str:
    # Once per message on every page; struct + hex is a quarter of an f-string's cost.
    if key <= 0xFFFFFFFF and version <= 0xFFFF:
        return "CQAAABYAAAA" + _KEY_VERSION.pack(key, version).hex()
    return f"CQAAABYAAAA{key:08x}{version:04x}"
