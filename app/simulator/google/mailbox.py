"""One simulated Gmail mailbox: seeded messages computed on demand, an overlay of changes,
and the history log those changes write.

A mailbox of `total` seeded messages stores nothing per message until it is touched:
message `i` is `corpus.generate(seed, i, total, owner)`, its id is arithmetic on `i`, and
its labels are derived once and kept in a compact array. What the control API changes
(added messages, deletions, label edits) lives in small dicts, and every change appends a
history record, which is what `history.list` and push notifications are made of.
"""

from __future__ import annotations

import random
import time
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

from app.simulator import corpus
from app.simulator.contacts import PlantedContact, Planting
from app.simulator.content import ContentSpec, custom_content, seeded_content
from app.simulator.corpus import GeneratedMessage
from app.simulator.google.labels import (
    SEEDED_USER_LABELS,
    SENT_BIT,
    SYSTEM_LABELS,
    derive_bits,
    labels_of,
)
from app.simulator.google.query import Query

EPOCH_MS = int(corpus.EPOCH.timestamp() * 1000)
SPAN_MS = corpus.SPAN_SECONDS * 1000
# Seeded message ids keep the index in their low 20 bits.
MAX_MESSAGES = 1 << 20
_LOW_MASK = MAX_MESSAGES - 1
_CHUNK_BITS = 12
_CHUNK = 1 << _CHUNK_BITS
_CHUNK_MASK = _CHUNK - 1
HISTORY_TYPES = ("messageAdded", "messageDeleted", "labelAdded", "labelRemoved")
_SYSTEM = frozenset(SYSTEM_LABELS)
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@lru_cache(maxsize=8192)
def _generated(seed: int, index: int, total: int, owner: str) -> GeneratedMessage:
    # A full sync lists a page, then gets the same ids; both need the message once.
    return corpus.generate(seed, index, total, owner)


@dataclass(slots=True)
class MessageView:
    """Everything the API can say about one message, whatever its origin."""

    id: str
    thread_id: str
    label_ids: tuple[str, ...]
    history_id: int
    internal_ms: int
    snippet: str
    subject: str
    from_header: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    message_id: str
    in_reply_to: str | None
    has_attachments: bool
    size_estimate: int
    content: ContentSpec | None = None
    from_name: str | None = None

    @property
    def date_header(self) -> str:
        t = time.gmtime(self.internal_ms // 1000)
        return (
            f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
        )


@dataclass(slots=True)
class AddedMessage:
    """A message delivered through the control API after the mailbox was seeded."""

    id: str
    thread_id: str
    seq: int
    internal_ms: int
    subject: str
    from_header: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    snippet: str
    message_id: str
    in_reply_to: str | None
    has_attachments: bool
    content: ContentSpec | None = None


@dataclass(slots=True)
class HistoryEntry:
    """What one change did to one message."""

    message_id: str
    thread_id: str
    # The message's labels right after this change.
    label_ids: tuple[str, ...]
    added: bool = False
    deleted: bool = False
    labels_added: tuple[str, ...] = ()
    labels_removed: tuple[str, ...] = ()

    def touches(self, label_id: str) -> bool:
        return (
            label_id in self.label_ids
            or label_id in self.labels_added
            or label_id in self.labels_removed
        )


@dataclass(slots=True)
class HistoryRecord:
    """One history id. Gmail may put several messages and several change types in one
    record (a delivery a filter labels, a batch modify, a thread deleted): clients must not
    assume a record holds one change, nor in which order its lists happened."""

    id: int
    entries: list[HistoryEntry]

    def render(self, types: frozenset[str] | None, label_id: str | None) -> dict[str, Any] | None:
        lists: dict[str, list[dict[str, Any]]] = {}
        refs: dict[str, dict[str, str]] = {}
        for entry in self.entries:
            if label_id is not None and not entry.touches(label_id):
                continue
            ref = {"id": entry.message_id, "threadId": entry.thread_id}
            full = {**ref, "labelIds": list(entry.label_ids)}
            wanted = False
            if entry.added and (types is None or "messageAdded" in types):
                lists.setdefault("messagesAdded", []).append({"message": full})
                wanted = True
            if entry.deleted and (types is None or "messageDeleted" in types):
                lists.setdefault("messagesDeleted", []).append({"message": full})
                wanted = True
            if entry.labels_added and (types is None or "labelAdded" in types):
                lists.setdefault("labelsAdded", []).append(
                    {"message": full, "labelIds": list(entry.labels_added)}
                )
                wanted = True
            if entry.labels_removed and (types is None or "labelRemoved" in types):
                lists.setdefault("labelsRemoved", []).append(
                    {"message": full, "labelIds": list(entry.labels_removed)}
                )
                wanted = True
            if wanted:
                refs.setdefault(entry.message_id, ref)
        if not lists:
            return None
        return {"id": str(self.id), "messages": list(refs.values()), **lists}


@dataclass(slots=True)
class LabelCounts:
    messages_total: int = 0
    messages_unread: int = 0
    threads_total: int = 0
    # Threads with the label and at least one unread message carrying it.
    threads_unread: int = 0


@dataclass(frozen=True, slots=True)
class Change:
    """One message touched by a mutation; push filters look at its labels."""

    message_id: str
    labels_before: frozenset[str]
    labels_after: frozenset[str]


@dataclass(slots=True)
class Watch:
    topic_name: str
    label_ids: frozenset[str]
    # "include": only changes touching those labels notify; "exclude": all but those.
    behavior: str
    expiration_ms: int

    def wants(self, changes: list[Change]) -> bool:
        if not self.label_ids:
            return True
        for change in changes:
            touched = change.labels_before | change.labels_after
            hit = bool(touched & self.label_ids)
            if hit if self.behavior == "include" else not hit:
                return True
        return False


class HistoryExpired(Exception):
    """startHistoryId is older than what the mailbox still keeps."""


class InvalidPageToken(ValueError):
    pass


@dataclass(slots=True)
class ListPage:
    messages: list[tuple[str, str]] = field(default_factory=list)
    next_page_token: str | None = None
    result_size_estimate: int = 0


class Mailbox:
    def __init__(
        self,
        email: str,
        *,
        seed: int,
        total: int,
        history_id_start: int,
        retention: Callable[[], int],
    ) -> None:
        if not 0 <= total <= MAX_MESSAGES:
            raise ValueError(f"a mailbox holds 0..{MAX_MESSAGES} seeded messages")
        self.email = email
        self.seed = seed
        self.total = total
        self._retention = retention
        self._rng = random.Random(seed ^ 0x5EED)
        self._id_mask = (seed * 0x2545F491) & _LOW_MASK
        self._bits: dict[int, array[int]] = {}
        self._offsets: dict[int, bytearray] = {}
        self.deleted: set[int] = set()
        self.added: dict[str, AddedMessage] = {}
        self._added_order: list[str] = []
        self._added_seq = 0
        # Labels of every message whose labels differ from its seeded ones (and all added).
        self.label_overrides: dict[str, frozenset[str]] = {}
        self.message_history: dict[str, int] = {}
        self.user_labels: dict[str, str] = dict(SEEDED_USER_LABELS)
        self._next_label = len(SEEDED_USER_LABELS) + 1
        self.base_history_id = history_id_start
        self.history_id = history_id_start
        self.floor_history_id = history_id_start
        self._history: list[HistoryRecord] = []
        self._history_ids: list[int] = []
        self._history_head = 0
        self._open_record: HistoryRecord | None = None
        self.watch: Watch | None = None
        self._threads_total: int | None = None
        self._estimates: dict[str, tuple[int, int]] = {}
        self._label_counts: tuple[int, dict[str, LabelCounts]] | None = None
        # Seeded messages a planted correspondent takes part in (app/simulator/contacts.py).
        self.planting = Planting(email)
        self._planted: dict[int, GeneratedMessage] = {}

    def plant(self, contacts: list[PlantedContact]) -> None:
        self.planting = Planting.plan(self.seed, self.total, self.email, contacts)
        self._planted = {
            # A sent message's sender becomes a recipient in `_seeded_view` by itself.
            index: self.planting.apply(
                index, corpus.generate(self.seed, index, self.total, self.email), owner_sent=False
            )
            for index in self.planting.roles
        }
        self._estimates.clear()

    # -- ids -------------------------------------------------------------------------

    def _approx_ms(self, index: int) -> int:
        return EPOCH_MS + (index * SPAN_MS) // max(self.total, 1)

    def seeded_id(self, index: int) -> str:
        # Gmail ids grow with time; the high bits are a timestamp, the low ones the index.
        return f"{(self._approx_ms(index) << 20) | (index ^ self._id_mask):016x}"

    def seeded_index(self, message_id: str) -> int | None:
        if len(message_id) != 16:
            return None
        try:
            value = int(message_id, 16)
        except ValueError:
            return None
        index = (value & _LOW_MASK) ^ self._id_mask
        if index >= self.total or (value >> 20) != self._approx_ms(index):
            return None
        return index

    def _offset(self, index: int) -> int:
        chunk = self._offsets.get(index >> _CHUNK_BITS)
        if chunk is None:
            chunk = self._offsets[index >> _CHUNK_BITS] = bytearray(_CHUNK)
        stored = chunk[index & _CHUNK_MASK]
        if not stored:
            stored = index - corpus.thread_index(self.seed, index) + 1
            chunk[index & _CHUNK_MASK] = stored
        return stored - 1

    def _thread_root(self, index: int) -> int:
        """The first message of `index`'s thread; Gmail's threadId is that message's id."""
        key = index - self._offset(index)
        for candidate in range(key, min(key + 4, self.total)):
            if candidate - self._offset(candidate) == key:
                return candidate
        return index

    def _seeded_thread_id(self, index: int) -> str:
        return self.seeded_id(self._thread_root(index))

    # -- labels ----------------------------------------------------------------------

    def _seeded_bits(self, index: int) -> int:
        chunk = self._bits.get(index >> _CHUNK_BITS)
        if chunk is None:
            chunk = self._bits[index >> _CHUNK_BITS] = array("I", bytes(4 * _CHUNK))
        bits = chunk[index & _CHUNK_MASK]
        if not bits:
            bits = derive_bits(self._message(index), self.seed)
            chunk[index & _CHUNK_MASK] = bits
        return bits

    def _message(self, index: int) -> GeneratedMessage:
        planted = self._planted.get(index) if self._planted else None
        if planted is not None:
            return planted
        return _generated(self.seed, index, self.total, self.email)

    def labels(self, message_id: str, index: int | None = None) -> frozenset[str]:
        override = self.label_overrides.get(message_id)
        if override is not None:
            return override
        if index is None:
            index = self.seeded_index(message_id)
            assert index is not None
        return labels_of(self._seeded_bits(index))

    def known_label(self, label_id: str) -> bool:
        return label_id in _SYSTEM or label_id in self.user_labels

    def label_names(self) -> dict[str, str]:
        """Lower-cased user label names (and their hyphenated search form) to ids."""
        names: dict[str, str] = {}
        for label_id, name in self.user_labels.items():
            names[name.lower()] = label_id
            names[name.lower().replace(" ", "-")] = label_id
        return names

    def create_label(self, name: str) -> str:
        label_id = f"Label_{self._next_label}"
        self._next_label += 1
        self.user_labels[label_id] = name
        return label_id

    # -- reading ---------------------------------------------------------------------

    def exists(self, message_id: str) -> bool:
        if message_id in self.added:
            return True
        index = self.seeded_index(message_id)
        return index is not None and index not in self.deleted

    def view(self, message_id: str) -> MessageView | None:
        added = self.added.get(message_id)
        if added is not None:
            return self._added_view(added)
        index = self.seeded_index(message_id)
        if index is None or index in self.deleted:
            return None
        return self._seeded_view(index, message_id)

    def _seeded_view(self, index: int, message_id: str) -> MessageView:
        m = self._message(index)
        labels = self.labels(message_id, index)
        root = self._thread_root(index)
        in_reply_to = None
        if root != index:
            in_reply_to = self._message(root).internet_message_id
        from_header = f"{m.from_name} <{m.from_address}>"
        to = m.to
        if self._seeded_bits(index) & SENT_BIT:  # the owner wrote it
            from_header, to = self.email, (m.from_address, *m.to[1:])
        content = seeded_content(self.seed, index, m)
        size = 1800 + 4 * len(m.snippet) + (index * 37) % 3000
        size += sum(a.size * 4 // 3 for a in content.attachments)
        return MessageView(
            id=message_id,
            thread_id=self.seeded_id(root),
            label_ids=_ordered(labels),
            history_id=self.message_history.get(message_id, self.base_history_id),
            internal_ms=int(m.received_at.timestamp() * 1000),
            snippet=m.snippet,
            subject=m.subject,
            from_header=from_header,
            to=to,
            cc=m.cc,
            message_id=m.internet_message_id,
            in_reply_to=in_reply_to,
            has_attachments=m.has_attachments,
            size_estimate=size,
            content=content,
        )

    def _added_view(self, added: AddedMessage) -> MessageView:
        return MessageView(
            id=added.id,
            thread_id=added.thread_id,
            label_ids=_ordered(self.label_overrides[added.id]),
            history_id=self.message_history.get(added.id, self.base_history_id),
            internal_ms=added.internal_ms,
            snippet=added.snippet,
            subject=added.subject,
            from_header=added.from_header,
            to=added.to,
            cc=added.cc,
            message_id=added.message_id,
            in_reply_to=added.in_reply_to,
            has_attachments=added.has_attachments,
            size_estimate=2000
            + 4 * len(added.snippet)
            + sum(a.size * 4 // 3 for a in (added.content.attachments if added.content else ())),
            content=added.content,
        )

    @property
    def messages_total(self) -> int:
        return self.total - len(self.deleted) + len(self.added)

    @property
    def threads_total(self) -> int:
        if self._threads_total is None:
            # Exact for small mailboxes, a sample's proportion for large ones.
            step = max(1, self.total // 4096)
            sample = range(0, self.total, step)
            roots = sum(1 for i in sample if self._thread_root(i) == i)
            self._threads_total = roots * self.total // max(len(sample), 1)
        # Deletions are not subtracted: a thread survives while any message of it does.
        new_threads = sum(1 for a in self.added.values() if a.thread_id == a.id)
        return self._threads_total + new_threads

    def _live_among(
        self, position: tuple[int, int], indexes: list[int]
    ) -> Iterator[tuple[str, int | None, tuple[int, int]]]:
        """`_live`, but of the seeded messages only `indexes` (sorted, newest first)."""
        segment, value = position
        if segment == 1:
            for item in self._live(position):
                if item[1] is not None:
                    break
                yield item
            value = self.total - 1
        for index in indexes:
            if index <= value and index not in self.deleted:
                yield self.seeded_id(index), index, (2, index - 1)

    def _planted_only(self, query: Query | None) -> list[int] | None:
        """Seeded messages that can match `query`, when it asks for an address only planted
        messages hold (newest first); None when any message could."""
        addresses = query.addresses() if query is not None else None
        if not addresses or not all(self.planting.only_planted(a) for a in addresses):
            return None
        found: set[int] = set()
        for address in addresses:
            found.update(self.planting.keys_between(address, 0, self.total))
        return sorted(found, reverse=True)

    def label_counts(self, label_id: str) -> LabelCounts:
        """Exact counts of messages and threads with `label_id`, as labels.get reports them.

        Every live message is looked at once per state of the mailbox (the history id moves
        with every change), so counting costs a scan after a change, never a guess."""
        cached = self._label_counts
        if cached is None or cached[0] != self.history_id:
            counts: dict[str, LabelCounts] = {}
            threads: dict[str, set[str]] = {}
            unread_threads: dict[str, set[str]] = {}
            for message_id, index, _ in self._live((1, self._added_seq + 1)):
                labels = self.labels(message_id, index)
                unread = "UNREAD" in labels
                thread_id = (
                    self._seeded_thread_id(index)
                    if index is not None
                    else self.added[message_id].thread_id
                )
                for label in labels:
                    entry = counts.setdefault(label, LabelCounts())
                    entry.messages_total += 1
                    threads.setdefault(label, set()).add(thread_id)
                    if unread:
                        entry.messages_unread += 1
                        unread_threads.setdefault(label, set()).add(thread_id)
            for label, entry in counts.items():
                entry.threads_total = len(threads.get(label, ()))
                entry.threads_unread = len(unread_threads.get(label, ()))
            cached = self._label_counts = (self.history_id, counts)
        return cached[1].get(label_id, LabelCounts())

    def _live(self, position: tuple[int, int]) -> Iterator[tuple[str, int | None, tuple[int, int]]]:
        """(message id, seeded index or None, position after it), newest first from `position`.

        Added messages (by sequence, descending) come before seeded ones (by index,
        descending). A position is (segment, value): (1, seq) continues with added messages
        older than seq, (2, index) with seeded messages at or below index.
        """
        segment, value = position
        if segment == 1:
            for message_id in reversed(self._added_order):
                added = self.added.get(message_id)
                if added is None or added.seq >= value:
                    continue
                yield message_id, None, (1, added.seq)
            value = self.total - 1
        deleted = self.deleted
        seeded_id = self.seeded_id
        for index in range(value, -1, -1):
            if index not in deleted:
                yield seeded_id(index), index, (2, index - 1)

    def list_messages(
        self,
        *,
        max_results: int,
        page_token: str | None,
        label_ids: frozenset[str],
        include_spam_trash: bool,
        query: Query | None,
        estimate_key: str = "",
    ) -> ListPage:
        position = _decode_page_token(page_token) if page_token else (1, self._added_seq + 1)
        spam_trash = include_spam_trash or (query is not None and query.includes_spam_trash)
        spam_trash = spam_trash or bool(label_ids & {"SPAM", "TRASH"})
        filtered = bool(label_ids) or not spam_trash or query is not None
        page = ListPage()
        if not filtered:
            page.result_size_estimate = self.messages_total
            for message_id, index, after in self._live(position):
                thread_id = (
                    self._seeded_thread_id(index)
                    if index is not None
                    else self.added[message_id].thread_id
                )
                page.messages.append((message_id, thread_id))
                if len(page.messages) == max_results:
                    if any(True for _ in self._live(after)):
                        page.next_page_token = _encode_page_token(after)
                    break
            return page

        # Filtering costs a derived label set (and maybe the message) per candidate; like
        # Gmail, a page may come back short with a nextPageToken rather than scan forever.
        def matches(message_id: str, index: int | None) -> bool:
            labels = self.labels(message_id, index)
            if label_ids and not label_ids <= labels:
                return False
            if not spam_trash and ("SPAM" in labels or "TRASH" in labels):
                return False
            return query is None or query.matches(labels, partial(self._must_view, message_id))

        budget = max(2000, 10 * max_results)
        scanned = 0
        among = self._planted_only(query)
        live = self._live(position) if among is None else self._live_among(position, among)
        for message_id, index, after in live:
            if scanned >= budget or len(page.messages) == max_results:
                page.next_page_token = _encode_page_token(position)
                break
            scanned += 1
            position = after
            if not matches(message_id, index):
                continue
            thread_id = (
                self._seeded_thread_id(index)
                if index is not None
                else self.added[message_id].thread_id
            )
            page.messages.append((message_id, thread_id))
        if among is None:
            page.result_size_estimate = self._estimate(matches, estimate_key)
        else:
            page.result_size_estimate = sum(
                1
                for message_id, index, _ in self._live_among((1, self._added_seq + 1), among)
                if matches(message_id, index)
            )
        return page

    def _estimate(self, matches: Callable[[str, int | None], bool], key: str) -> int:
        """resultSizeEstimate for a filtered list: exact over added messages, a sample's
        proportion over seeded ones; kept until the mailbox changes."""
        cached = self._estimates.get(key)
        if cached is not None and cached[0] == self.history_id:
            return cached[1]
        exact = sum(1 for message_id in self.added if matches(message_id, None))
        step = max(1, self.total // 256)
        sample = [i for i in range(0, self.total, step) if i not in self.deleted]
        hits = sum(1 for i in sample if matches(self.seeded_id(i), i))
        seeded_live = self.total - len(self.deleted)
        estimate = exact + (round(hits / len(sample) * seeded_live) if sample else 0)
        if len(self._estimates) > 64:
            self._estimates.clear()
        self._estimates[key] = (self.history_id, estimate)
        return estimate

    def _must_view(self, message_id: str) -> MessageView:
        view = self.view(message_id)
        assert view is not None
        return view

    def involving(self, address: str) -> list[str]:
        """Ids of the live messages `address` is the sender or a recipient of, newest first."""
        wanted = address.lower()
        among = None
        if self.planting.only_planted(wanted):
            among = sorted(self.planting.keys_between(wanted, 0, self.total), reverse=True)
        start = (1, self._added_seq + 1)
        live = self._live(start) if among is None else self._live_among(start, among)
        found = []
        for message_id, _, _ in live:
            view = self._must_view(message_id)
            people = {*view.to, *view.cc, view.from_header}
            if any(wanted == p.lower() or f"<{wanted}>" in p.lower() for p in people):
                found.append(message_id)
        return found

    def ground_truth(self, offset: int, limit: int) -> list[MessageView]:
        out: list[MessageView] = []
        for n, (message_id, _, _) in enumerate(self._live((1, self._added_seq + 1))):
            if n < offset:
                continue
            if len(out) >= limit:
                break
            out.append(self._must_view(message_id))
        return out

    # -- changes ---------------------------------------------------------------------

    def _next_history_id(self) -> int:
        # Increasing, with gaps: clients must not assume consecutive ids.
        self.history_id += self._rng.randint(1, 9)
        return self.history_id

    @contextmanager
    def one_record(self) -> Iterator[None]:
        """Every change made inside goes into a single history record (one history id)."""
        if self._open_record is not None:
            yield
            return
        self._open_record = HistoryRecord(0, [])
        try:
            yield
        finally:
            record, self._open_record = self._open_record, None
            if record.entries:
                record.id = self._next_history_id()
                self._append(record)

    def _record(self, entry: HistoryEntry) -> None:
        if self._open_record is not None:
            self._open_record.entries.append(entry)
            return
        self._append(HistoryRecord(self._next_history_id(), [entry]))

    def _append(self, record: HistoryRecord) -> None:
        self._history.append(record)
        self._history_ids.append(record.id)
        for entry in record.entries:
            if entry.deleted:
                self.message_history.pop(entry.message_id, None)
            else:
                self.message_history[entry.message_id] = record.id
        excess = len(self._history) - self._history_head - self._retention()
        if excess > 0:
            self._history_head += excess
            self.floor_history_id = self._history_ids[self._history_head - 1]
            if self._history_head > 1024 and self._history_head * 2 > len(self._history):
                del self._history[: self._history_head]
                del self._history_ids[: self._history_head]
                self._history_head = 0

    def add_message(
        self,
        *,
        label_ids: frozenset[str],
        subject: str,
        from_header: str,
        to: tuple[str, ...],
        cc: tuple[str, ...],
        snippet: str,
        has_attachments: bool,
        reply_to: str | None,
        content: ContentSpec | None = None,
    ) -> tuple[MessageView, Change]:
        parent = self.view(reply_to) if reply_to else None
        now_ms = int(time.time() * 1000)
        self._added_seq += 1
        while True:
            message_id = f"{(now_ms << 20) | (self._added_seq & _LOW_MASK):016x}"
            if message_id not in self.added and self.seeded_index(message_id) is None:
                break
            now_ms += 1
        mid_domain = from_header.rsplit("@", 1)[-1].rstrip(">") or "mail.gmail.com"
        added = AddedMessage(
            id=message_id,
            thread_id=parent.thread_id if parent else message_id,
            seq=self._added_seq,
            internal_ms=now_ms,
            subject=("Re: " + parent.subject.removeprefix("Re: ")) if parent else subject,
            from_header=from_header,
            to=to,
            cc=cc,
            snippet=snippet,
            message_id=f"<{corpus.stable_id(self.email, message_id, 'mid')}@{mid_domain}>",
            in_reply_to=parent.message_id if parent else None,
            has_attachments=content.has_files if content is not None else has_attachments,
            content=content
            or custom_content(
                self._added_seq,
                text=snippet,
                body_html=f"<div>{snippet}</div>",
                attachments=(
                    [{"name": "attachment.pdf", "content_type": "application/pdf", "size": 45_000}]
                    if has_attachments
                    else []
                ),
            ),
        )
        self.added[message_id] = added
        self._added_order.append(message_id)
        self.label_overrides[message_id] = label_ids
        self._record(HistoryEntry(message_id, added.thread_id, _ordered(label_ids), added=True))
        return self._added_view(added), Change(message_id, frozenset(), label_ids)

    def delete_message(self, message_id: str) -> Change | None:
        """Permanent deletion (not trash): a messagesDeleted record."""
        view = self.view(message_id)
        if view is None:
            return None
        labels = frozenset(view.label_ids)
        if message_id in self.added:
            del self.added[message_id]
        else:
            index = self.seeded_index(message_id)
            assert index is not None
            self.deleted.add(index)
        self.label_overrides.pop(message_id, None)
        self._record(HistoryEntry(message_id, view.thread_id, view.label_ids, deleted=True))
        return Change(message_id, labels, frozenset())

    def modify_message(
        self, message_id: str, add: frozenset[str], remove: frozenset[str]
    ) -> Change | None:
        """Apply a label edit; None when the message is unknown or nothing changed."""
        if not self.exists(message_id):
            return None
        before = self.labels(message_id)
        after = (before | add) - remove
        if after == before:
            return None
        self.label_overrides[message_id] = after
        added = tuple(label for label in _ordered(after) if label not in before)
        removed = tuple(label for label in _ordered(before) if label not in after)
        thread_id = self._must_view(message_id).thread_id
        self._record(
            HistoryEntry(
                message_id, thread_id, _ordered(after), labels_added=added, labels_removed=removed
            )
        )
        return Change(message_id, before, after)

    def expire_history(self) -> None:
        """Make every history id before now too old (Gmail keeps history for about a week)."""
        self.floor_history_id = self.history_id
        self._history_head = len(self._history)

    def history_page(
        self,
        start: int,
        *,
        types: frozenset[str] | None,
        label_id: str | None,
        max_results: int,
        page_token: str | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        if start < self.floor_history_id:
            raise HistoryExpired
        after = start
        if page_token is not None:
            if not page_token.isdigit() or int(page_token) < start:
                raise InvalidPageToken(page_token)
            after = int(page_token)
            if after < self.floor_history_id:
                raise HistoryExpired
        pos = bisect_right(self._history_ids, after, lo=self._history_head)
        records: list[dict[str, Any]] = []
        end = len(self._history)
        while pos < end and len(records) < max_results:
            rendered = self._history[pos].render(types, label_id)
            pos += 1
            if rendered is not None:
                records.append(rendered)
        next_token = str(self._history_ids[pos - 1]) if pos < end else None
        return records, next_token


@lru_cache(maxsize=4096)
def _ordered(labels: frozenset[str]) -> tuple[str, ...]:
    """Labels in a stable order: system labels in catalogue order, then user labels."""
    present = labels
    system = tuple(label for label in SYSTEM_LABELS if label in present)
    return system + tuple(sorted(present - _SYSTEM))


def _encode_page_token(position: tuple[int, int]) -> str:
    segment, value = position
    return f"{segment}{max(value, 0):019d}" if value >= 0 else f"{segment}{'9' * 19}"


def _decode_page_token(token: str) -> tuple[int, int]:
    if len(token) != 20 or not token.isdigit() or token[0] not in "12":
        raise InvalidPageToken(token)
    value = int(token[1:])
    return int(token[0]), (-1 if value == 10**19 - 1 else value)
