"""Which streams a pass follows: every stream, or only those its notifications point to.

A change notification names what changed (app/providers/base.py ChangeHint); the webhook
log keeps it in `pending_streams` beside the pass it owes. When a pass begins it reads the
hints waiting for its mailbox (in the transaction that takes its lease; when the store
alone answers the plan, `stored_plan`, the pass begins in that transaction too), and:

- the periodic pass (its time has come: `mailboxes.full_pass_at`), a pass nobody notified
  (sync now, a retry, the first sync) and a pass owed by a notification that names nothing
  (Graph's `missed`) follow every stream, and take every hint;
- any other pass follows the union of the hinted streams and leaves the other cursors where
  they are: a named stream (Gmail's history), the stream the store holds a notified message
  in, and, for a new message, the stream the provider says it is in now (one request per
  message). A changed message the store holds is not located: its stream is followed, and
  only if that stream's delta removed it (it moved) does the pass ask where it went, and
  leave that stream to the next pass. Too many messages to locate, a provider that cannot
  locate one, or a message neither the provider nor the store can place, make it a pass
  over everything.

A stream the store does not know yet (a folder created since the last discovery) makes the
pass refresh the stream list first. What a pass reads when it begins is what it takes: a
hint noted later stays for the next pass (app/sync/engine.py owes it one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from app.db.models import Mailbox
from app.db.repositories.cursors import StreamState
from app.db.repositories.pending_streams import PendingHint
from app.providers.base import EVERY_STREAM, ChangeHint, MailProvider, MessageLocator, SyncContext
from app.sync.tokens import TokenSource, with_token_retry

# Notified messages located at the provider for one pass, at most; beyond that a pass over
# every stream costs less than a request per message.
LOCATE_AT_MOST = 8
# Hints read for one pass, at most; beyond that the pass follows every stream.
HINTS_AT_MOST = 200


@dataclass(slots=True)
class PassPlan:
    full: bool
    # A targeted pass's streams.
    streams: set[str] = field(default_factory=set)
    # The hints the pass covers, as it read them (taken when it begins).
    taken: list[PendingHint] = field(default_factory=list)
    # Changed messages followed in the stream the store holds them in, unlocated: taken
    # when the pass ends, once it knows whether they stayed (`moved_away`).
    trusted: list[PendingHint] = field(default_factory=list)
    # A hinted stream the store does not know: refresh the stream list first.
    discover: bool = False


def periodic_pass_due(mailbox: Mailbox, now: datetime | None = None) -> bool:
    due = mailbox.full_pass_at
    return due is None or due <= (now or datetime.now(UTC))


def may_target(mailbox: Mailbox, stored: Sequence[StreamState]) -> bool:
    """Whether a beginning pass may follow only what notifications pointed to: not the
    first (no stream known yet), not a periodic one."""
    return bool(stored) and not periodic_pass_due(mailbox)


@dataclass(slots=True)
class _Targets:
    """What the hints say before any request: the streams named or held in the store,
    the trusted messages, and the messages only the provider can place."""

    streams: set[str]
    trusted: list[PendingHint]
    to_locate: list[str]


def _targets(pending: list[PendingHint] | None) -> _Targets | None:
    """None: the pass follows every stream."""
    if pending is None:
        return None
    hints = list(dict.fromkeys(p.hint for p in pending))
    if not hints or len(hints) >= HINTS_AT_MOST or any(h.everything for h in hints):
        return None
    streams = {h.stream for h in hints if h.stream}
    streams.update(p.stored_stream for p in pending if p.stored_stream)
    # A changed message the store holds is followed in the stream it is stored in, without
    # asking where it is now: if it moved, that stream's delta removes it, and the pass asks
    # then (`moved_away`).
    trusted = [p for p in pending if p.hint.locate and p.hint.message and p.stored_stream]
    held = {p.hint.message for p in trusted}
    to_locate = sorted({h.message for h in hints if h.locate and h.message} - held)
    return _Targets(streams, trusted, to_locate)


def _targeted(pending: list[PendingHint], targets: _Targets, known_streams: set[str]) -> PassPlan:
    taken = [p for p in {p.hint: p for p in pending}.values() if p not in targets.trusted]
    return PassPlan(
        full=False,
        streams=targets.streams,
        taken=taken,
        trusted=targets.trusted,
        discover=not targets.streams <= known_streams,
    )


def stored_plan(known_streams: set[str], pending: list[PendingHint] | None) -> PassPlan | None:
    """The targeted plan when the store alone answers it (no message to locate, no stream
    to discover), so the pass can begin in the lease's transaction; None otherwise."""
    targets = _targets(pending)
    if pending is None or targets is None or targets.to_locate:
        return None
    plan = _targeted(pending, targets, known_streams)
    return None if plan.discover else plan


async def plan_pass(
    mailbox: Mailbox,
    provider: MailProvider,
    ctx: SyncContext,
    tokens: TokenSource,
    known_streams: set[str],
    pending: list[PendingHint] | None,
) -> PassPlan:
    """`pending`: the hints read with the lease (None when `may_target` said no)."""
    targets = _targets(pending)
    if pending is None or targets is None:
        return PassPlan(full=True)
    to_locate = targets.to_locate
    if to_locate:
        if len(to_locate) > LOCATE_AT_MOST or not isinstance(provider, MessageLocator):
            return PassPlan(full=True)
        located = await with_token_retry(tokens, partial(provider.locate, ctx, to_locate))
        stored = {p.hint.message for p in pending if p.stored_stream}
        if any(key is None and message not in stored for message, key in located.items()):
            # Neither the provider nor the store can place it: look everywhere.
            return PassPlan(full=True)
        targets.streams.update(key for key in located.values() if key)
    return _targeted(pending, targets, known_streams)


async def moved_away(
    plan: PassPlan,
    left: set[str],
    provider: MailProvider,
    ctx: SyncContext,
    tokens: TokenSource,
) -> list[ChangeHint]:
    """What the next pass must follow for the trusted messages this pass saw `left` their
    stream: the stream each is in now (one request per message). A stream this pass
    followed already holds the message (the move came before the notification, and so
    before the pass); one gone at the provider too was deleted, as its stream said."""
    if not left:
        return []
    if len(left) > LOCATE_AT_MOST or not isinstance(provider, MessageLocator):
        return [EVERY_STREAM]
    located = await with_token_retry(tokens, partial(provider.locate, ctx, sorted(left)))
    now_in = {key for key in located.values() if key} - plan.streams
    return [ChangeHint(stream=key) for key in sorted(now_in)]
