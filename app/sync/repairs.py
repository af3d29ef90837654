"""Repairs of the completion monitor, of one stream or label at a time, under the
mailbox's lease (a running sync is never interrupted: the repair waits for it).

- restart: the stream is enumerated again under a new generation, the engine's dead-cursor
  rebuild (phase `resync` from the first moment, then its sweep): what the store holds of
  it becomes exactly what the provider enumerates.
- list: the scope's ids are listed at the provider and diffed with the store; only missing
  messages are fetched, foreign rows removed, labels and read state set right. A few list
  calls instead of a re-download of the mailbox.

Every change is written as pages are (outbox events, lease fence, progress), and every
repair leaves a record (`monitor_repairs`), a metric and a log line.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

from app.db.models import Mailbox
from app.db.repositories.cursors import CursorRepository, StreamState
from app.db.repositories.mailboxes import Lease, LeaseLost, MailboxRepository
from app.db.repositories.messages import MessageRepository
from app.db.repositories.monitor import Counted, MonitorRepository
from app.db.repositories.outbox import OutboxRepository
from app.events.changes import MESSAGES_CHANGED, PageChanges
from app.metrics import MONITOR_DIFFERENCE, MONITOR_REPAIRED_MESSAGES, MONITOR_REPAIRS
from app.providers.base import (
    AuthExpiredError,
    LabelChange,
    MailProvider,
    MessageBatch,
    ProviderError,
    SyncContext,
)
from app.sync import states
from app.sync.gaps import Gap
from app.sync.queue import enqueue_sync
from app.sync.runtime import Runtime
from app.sync.states import Phase, RepairState
from app.sync.tokens import TokenSource, with_token_retry

log = logging.getLogger(__name__)

# Messages fetched (and written) per request / transaction by a listing repair.
FETCH_CHUNK = 500
# The label a message carries while unread, as the store writes it (is_read follows it).
UNREAD = "UNREAD"


@dataclass(slots=True)
class Bound:
    """A mailbox with its provider, the context its requests need and its token source."""

    mailbox: Mailbox
    provider: MailProvider
    ctx: SyncContext
    tokens: TokenSource


@asynccontextmanager
async def _kept(rt: Runtime, lease: Lease) -> AsyncIterator[None]:
    """Renew the lease while a repair runs (its fetches may outlast it); a lost lease is
    found by the next fenced write, which then refuses."""

    async def beat() -> None:
        seconds = rt.settings.lease_seconds
        while True:
            await asyncio.sleep(max(0.5, seconds / 3))
            try:
                async with rt.sessions() as session, session.begin():
                    if not await MailboxRepository(session).heartbeat(lease, seconds):
                        return
            except Exception as exc:
                log.warning("mailbox %s: repair lease heartbeat failed: %s", lease.mailbox_id, exc)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class Repairer:
    def __init__(self, rt: Runtime, owner: str) -> None:
        self.rt = rt
        self.owner = owner
        self.settings = rt.settings

    async def repair(
        self, mailbox: Mailbox, streams: list[StreamState], bound: Bound, gaps: Sequence[Gap]
    ) -> bool:
        """Repair the scopes of `gaps` under the mailbox's lease; False when a sync holds it."""
        settings = self.settings
        async with self.rt.sessions() as session, session.begin():
            lease = await MailboxRepository(session).acquire_lease(
                mailbox.id, self.owner, settings.lease_seconds
            )
        if lease is None:
            return False
        by_stream = {s.stream_key: s for s in streams}
        # Labels after their stream: a stream's listing may already bring what they lack.
        listed = sorted(
            (g for g in gaps if g.scope.repair == "list" and g.scope.stream in by_stream),
            key=lambda g: g.scope.kind != "stream",
        )
        # A stream that vanished meanwhile (a folder deleted) is the engine's to drop.
        restart = [g for g in gaps if g not in listed and g.scope.stream in by_stream]
        restarted = False
        try:
            async with _kept(self.rt, lease):
                if listed:
                    async with self.rt.sessions() as session, session.begin():
                        # From the first moment: the status must not claim the mailbox in sync.
                        await MailboxRepository(session).fence(
                            lease, settings.lease_seconds, phase=Phase.RESYNC
                        )
                    for gap in listed:
                        if gap.scope.kind == "label" and await self._mended(mailbox.id, gap):
                            continue
                        await self._reconcile(lease, bound, gap, by_stream[gap.scope.stream])
                if restart:
                    await self._restart(lease, mailbox, restart)
                    restarted = True
        except LeaseLost:
            log.warning("mailbox %s: lease lost during a repair; it resumes later", mailbox.id)
        except AuthExpiredError as exc:
            # The next pass meets the same refusal and parks the mailbox with the reason.
            log.warning("mailbox %s: repair refused by the provider: %s", mailbox.id, exc)
            restarted = True
        except ProviderError as exc:
            log.warning("mailbox %s: repair failed (looked at again later): %s", mailbox.id, exc)
        finally:
            async with self.rt.sessions() as session, session.begin():
                current = await CursorRepository(session).list(mailbox.id)
                phase = states.phase_of((s.progress() for s in current), running=False)
                await MailboxRepository(session).release(lease, phase=phase)
        if restarted:
            async with self.rt.sessions() as session, session.begin():
                await MonitorRepository(session).request_pass(mailbox.id)
            await enqueue_sync(self.rt.redis, mailbox.id, suffix=f"repair{lease.fencing_token}")
        return True

    async def _mended(self, mailbox_id: uuid.UUID, gap: Gap) -> bool:
        """Did the stream's repair already mend this label (its difference was the messages
        that were missing or foreign)? Then it needs no listing of its own."""
        async with self.rt.sessions() as session:
            stored = (await MonitorRepository(session).label_counts(mailbox_id)).get(
                gap.scope.key, Counted(0, 0)
            )
        return not any(Gap(gap.scope, stored).delta)

    async def _restart(self, lease: Lease, mailbox: Mailbox, gaps: Sequence[Gap]) -> None:
        """Enumerate each stream again under a new generation: the engine rewrites what it
        sees and sweeps the rest, as after a dead cursor."""
        async with self.rt.sessions() as session, session.begin():
            cursors = CursorRepository(session)
            repo = MonitorRepository(session)
            for stream_key in sorted({g.scope.stream for g in gaps}):
                await cursors.restart(mailbox.id, stream_key)
            for gap in gaps:
                await self._open(repo, mailbox.id, mailbox.provider, gap, method="restart")
            await MailboxRepository(session).fence(
                lease, self.settings.lease_seconds, phase=Phase.RESYNC
            )

    async def _reconcile(self, lease: Lease, bound: Bound, gap: Gap, stream: StreamState) -> None:
        """List the scope's ids at the provider, diff them with the store, fetch only what is
        missing, remove (stream) or relabel (label) the rest: a few list calls, not a
        re-download of the mailbox."""
        mailbox_id = lease.mailbox_id
        scope = gap.scope
        provider = bound.provider
        try:
            listed = await with_token_retry(
                bound.tokens, partial(provider.scope_ids, bound.ctx, scope)
            )
            async with self.rt.sessions() as session:
                repo = MonitorRepository(session)
                if scope.kind == "stream":
                    held = await repo.stream_ids(mailbox_id, scope.key)
                    elsewhere: set[str] = set()
                else:
                    held = await repo.label_ids(mailbox_id, scope.key)
                    elsewhere = await repo.present(mailbox_id, [i for i in listed if i not in held])
            missing = [i for i in listed if i not in held and i not in elsewhere]
            extra = sorted(held - set(listed))
            unread_changes: list[LabelChange] = []
            if scope.kind == "label" and gap.delta[1]:
                # Read state drifted inside the label: its unread members, listed too.
                unread = set(
                    await with_token_retry(
                        bound.tokens,
                        partial(provider.scope_ids, bound.ctx, scope, unread_only=True),
                    )
                )
                kept = [i for i in listed if i in held or i in elsewhere]
                async with self.rt.sessions() as session:
                    stored_unread = await MonitorRepository(session).unread_among(mailbox_id, kept)
                unread_changes = [
                    LabelChange(i, add=(UNREAD,))
                    for i in kept
                    if i in unread and i not in stored_unread
                ]
                unread_changes += [
                    LabelChange(i, remove=(UNREAD,))
                    for i in kept
                    if i in stored_unread and i not in unread
                ]
            fetched = MessageBatch()
            for start in range(0, len(missing), FETCH_CHUNK):
                chunk = missing[start : start + FETCH_CHUNK]
                batch = await with_token_retry(
                    bound.tokens,
                    partial(provider.get_messages, bound.ctx, stream.as_stream(), chunk),
                )
                for message in batch:
                    fetched.append(message)
        except ProviderError as exc:
            async with self.rt.sessions() as session, session.begin():
                repo = MonitorRepository(session)
                repair_id = await self._open(
                    repo, mailbox_id, bound.mailbox.provider, gap, method="list"
                )
                await repo.close_repair(
                    repair_id,
                    state=RepairState.FAILED,
                    provider_total=None,
                    provider_unread=None,
                    stored_total=None,
                    stored_unread=None,
                    detail=f"{exc.__class__.__name__}: {exc}"[:500],
                )
            raise
        if scope.kind == "stream":
            deletes, changes = extra, []
        else:
            deletes = []
            changes = [LabelChange(i, add=(scope.key,)) for i in listed if i in elsewhere]
            changes += [LabelChange(i, remove=(scope.key,)) for i in extra]
            changes += unread_changes
        written, removed, relabelled = await self._write(
            lease, bound.mailbox.provider, stream, fetched, deletes, changes, gap
        )
        provider_name = bound.mailbox.provider
        MONITOR_REPAIRED_MESSAGES.labels(provider_name, "fetched").inc(written)
        MONITOR_REPAIRED_MESSAGES.labels(provider_name, "removed").inc(removed)
        MONITOR_REPAIRED_MESSAGES.labels(provider_name, "relabelled").inc(relabelled)
        log.warning(
            "mailbox %s: %s %s differed (provider %s/%s unread, stored %s/%s); listed %d ids, "
            "fetched %d, removed %d, relabelled %d",
            mailbox_id, scope.kind, scope.key, scope.total, scope.unread, gap.stored.total,
            gap.stored.unread, len(listed), written, removed, relabelled,
        )  # fmt: skip

    async def _write(
        self,
        lease: Lease,
        provider: str,
        stream: StreamState,
        fetched: MessageBatch,
        deletes: list[str],
        changes: list[LabelChange],
        gap: Gap,
    ) -> tuple[int, int, int]:
        """The repair's changes written as pages are (their outbox events, the lease fence,
        progress), the last one with the repair's record."""
        mailbox_id = lease.mailbox_id
        seconds = self.settings.lease_seconds
        events = self.settings.events_enabled
        written = removed = relabelled = 0
        pages = [
            MessageBatch.of(fetched[i] for i in range(start, min(start + 1000, len(fetched))))
            for start in range(0, len(fetched), 1000)
        ] or [MessageBatch()]
        for n, page in enumerate(pages):
            last = n == len(pages) - 1
            async with self.rt.sessions() as session, session.begin():
                messages = MessageRepository(session)
                page_changes = PageChanges(stream.stream_key)
                upserted = await messages.upsert_page(
                    mailbox_id, stream.stream_key, stream.generation, page
                )
                came_back: set[str] = set()
                if events and upserted.inserted_ids:
                    came_back = await messages.returning(mailbox_id, upserted.inserted_ids)
                page_changes.upserted(upserted, came_back)
                written += len(upserted.written)
                deleted: list[str] = []
                if last:
                    relabelled_rows = await messages.apply_label_changes(mailbox_id, changes)
                    page_changes.relabelled(relabelled_rows)
                    relabelled = len(relabelled_rows)
                    deleted = await messages.delete_from_stream(
                        mailbox_id, stream.stream_key, deletes, remember=events
                    )
                    page_changes.deleted(deleted)
                    removed = len(deleted)
                    await self._open(
                        MonitorRepository(session),
                        mailbox_id,
                        provider,
                        gap,
                        method="list",
                        fetched=written,
                        removed=removed,
                        relabelled=relabelled,
                    )
                payload = page_changes.payload() if events else None
                if payload is not None:
                    await OutboxRepository(session).add(mailbox_id, MESSAGES_CHANGED, payload)
                await MailboxRepository(session).fence(
                    lease, seconds, synced_delta=upserted.inserted - len(deleted)
                )
        return written, removed, relabelled

    async def _open(
        self,
        repo: MonitorRepository,
        mailbox_id: uuid.UUID,
        provider: str,
        gap: Gap,
        *,
        method: str,
        fetched: int | None = None,
        removed: int | None = None,
        relabelled: int | None = None,
    ) -> int:
        scope = gap.scope
        MONITOR_REPAIRS.labels(provider, scope.kind, method).inc()
        MONITOR_DIFFERENCE.labels(provider, scope.kind).inc(abs(gap.delta[0] or 0))
        if method == "restart":
            log.warning(
                "mailbox %s: %s %s differs (provider %s/%s unread, stored %s/%s); "
                "enumerating stream %s again",
                mailbox_id, scope.kind, scope.key, scope.total, scope.unread, gap.stored.total,
                gap.stored.unread, scope.stream,
            )  # fmt: skip
        return await repo.open_repair(
            mailbox_id,
            provider=provider,
            scope_kind=scope.kind,
            scope_key=scope.key,
            method=method,
            provider_total=scope.total,
            provider_unread=scope.unread,
            stored_total=gap.stored.total,
            stored_unread=None if scope.unread is None else gap.stored.unread,
            fetched=fetched,
            removed=removed,
            relabelled=relabelled,
        )
