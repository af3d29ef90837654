"""The mailbox lifecycle, whole, in one place: statuses, phases, stream modes, the transitions
allowed between statuses, and the lifecycle event each transition raises.

```
                 reconnect                    first pass completes
    ┌──────────────────────────────┐   ┌──────────────────────────────┐
    │                              ▼   │                              ▼
 (new) ──> pending ──> syncing ──> connected <──────────── error <─────┐
              │           │           │   \\                  ▲  ▲      │
              │           │           │    \\ permanent error  │  │ 8 transient failures
              │           └───────────┼─────\\───────────────┘  │ (retries continue)
              │                       │      ▼                   │
              └──── refused refresh ──┴──> auth_expired ──reconnect──> pending
 any status ──> disconnected ──reconnect──> pending
```

- `pending`: connected, no slice has run yet.
- `syncing`: the first pass is running (backfill).
- `connected`: a pass has completed; later passes, dead-cursor rebuilds and the monitor's
  repairs keep `connected` and say what they do in `phase` (and `in_sync` in the API).
- `error`: a permanent provider error, or `MAX_TRANSIENT_RETRIES` consecutive transient
  failures. Retries continue with backoff; the mailbox stays `error` until a pass completes
  (it does not flap to `syncing` and back on each retry).
- `auth_expired`: the provider refused the grant; nothing runs until the user reconnects.
- `disconnected`: parked by the user; messages kept unless purged.

Phases: `backfill` (a stream's first enumeration), `resync` (a stream rebuilt after its
cursor died, or repaired by the monitor), `incremental` (following cursors), `idle`.
A stream (a Graph folder, the Gmail mailbox) is in mode `full` while it is enumerated from
scratch and `incremental` once its enumeration completed.

Push (`active`, `none`, `failing`) says whether the provider's notifications reach us; a
mailbox without working push is polled every `SYNC_POLL_WITHOUT_PUSH_SECONDS` instead of
the slow safety-net interval (`pass_interval`). The completion monitor compares a mailbox
with the provider only while it is `settled` (nothing in flight), and a repair it starts is
`running` until a later check measures its result (`done`) or it fails (`failed`).

Lifecycle events (the outbox carries them to JetStream) are raised by transitions, once per
transition, never once per retry:

| transition | event |
|---|---|
| a pass completes for the first time in the mailbox's life | `mailbox.connected` |
| into `error`, unless already failing | `mailbox.sync_failed` |
| into `auth_expired` | `mailbox.auth_expired` |
| a pass completes after `error`/`auth_expired` (failing) | `mailbox.recovered` |
| into `disconnected` | `mailbox.disconnected` |

This module imports nothing from the application: the store (`app/db`) reads the same
enums and table, so a status string literal appears nowhere else.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class MailboxStatus(enum.StrEnum):
    PENDING = "pending"
    SYNCING = "syncing"
    CONNECTED = "connected"
    ERROR = "error"
    AUTH_EXPIRED = "auth_expired"
    DISCONNECTED = "disconnected"


class Phase(enum.StrEnum):
    BACKFILL = "backfill"
    RESYNC = "resync"
    INCREMENTAL = "incremental"
    IDLE = "idle"


class StreamMode(enum.StrEnum):
    FULL = "full"
    INCREMENTAL = "incremental"


class PushState(enum.StrEnum):
    ACTIVE = "active"  # a live subscription (Graph) or watch (Gmail) delivers changes
    NONE = "none"  # push is not configured, or no channel exists (yet)
    FAILING = "failing"  # creating or renewing it failed, it lapsed, or changes were missed


class RepairState(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class LifecycleEvent(enum.StrEnum):
    CONNECTED = "mailbox.connected"
    SYNC_FAILED = "mailbox.sync_failed"
    AUTH_EXPIRED = "mailbox.auth_expired"
    RECOVERED = "mailbox.recovered"
    DISCONNECTED = "mailbox.disconnected"


S = MailboxStatus

# Nothing syncs in these until the user acts (reconnect).
PARKED: frozenset[MailboxStatus] = frozenset({S.DISCONNECTED, S.AUTH_EXPIRED})
# A sync (slice) may hold the lease in these.
SYNCABLE: frozenset[MailboxStatus] = frozenset(S) - PARKED

# from -> the statuses it may move to. Every writer of `mailboxes.status` goes through
# `allowed_sources()` / `check()`; the database's CHECK constraint holds the names.
TRANSITIONS: dict[MailboxStatus, frozenset[MailboxStatus]] = {
    S.PENDING: frozenset(
        {S.PENDING, S.SYNCING, S.CONNECTED, S.ERROR, S.AUTH_EXPIRED, S.DISCONNECTED}
    ),
    S.SYNCING: frozenset({S.SYNCING, S.CONNECTED, S.ERROR, S.AUTH_EXPIRED, S.DISCONNECTED}),
    S.CONNECTED: frozenset({S.CONNECTED, S.ERROR, S.AUTH_EXPIRED, S.DISCONNECTED}),
    S.ERROR: frozenset({S.ERROR, S.CONNECTED, S.AUTH_EXPIRED, S.DISCONNECTED, S.PENDING}),
    S.AUTH_EXPIRED: frozenset({S.AUTH_EXPIRED, S.PENDING, S.DISCONNECTED}),
    S.DISCONNECTED: frozenset({S.DISCONNECTED, S.PENDING}),
}


class IllegalTransition(Exception):
    pass


def check(old: MailboxStatus | str, new: MailboxStatus | str) -> None:
    if MailboxStatus(new) not in TRANSITIONS[MailboxStatus(old)]:
        raise IllegalTransition(f"mailbox status may not move from {old} to {new}")


def allowed_sources(new: MailboxStatus) -> list[str]:
    """The statuses from which `new` may be entered: a guarded UPDATE matches only these."""
    return sorted(old.value for old, targets in TRANSITIONS.items() if new in targets)


def values(enum_type: type[enum.StrEnum]) -> list[str]:
    return [member.value for member in enum_type]


# -- the rules each writer asks ---------------------------------------------------------


def on_reconnect(current: MailboxStatus | str) -> MailboxStatus:
    """New credentials revive a parked or failed mailbox; a healthy one keeps its status."""
    current = MailboxStatus(current)
    if current in (S.AUTH_EXPIRED, S.ERROR, S.DISCONNECTED):
        return S.PENDING
    return current


def during_slice(current: MailboxStatus | str) -> MailboxStatus:
    """The status a slice shows while it runs."""
    current = MailboxStatus(current)
    if current is S.PENDING:
        return S.SYNCING
    # connected stays connected (phase says what runs); error stays error until a pass
    # completes, so a mailbox that keeps failing does not flap between error and syncing.
    return current


def after_transient_failure(
    current: MailboxStatus | str, failures: int, max_failures: int
) -> MailboxStatus:
    current = MailboxStatus(current)
    if failures >= max_failures:
        return S.ERROR
    return during_slice(current)


@dataclass(frozen=True, slots=True)
class Transition:
    """What a guarded status write found and did; `event` is what it must announce."""

    old: MailboxStatus
    new: MailboxStatus
    event: LifecycleEvent | None


def transition(
    old: MailboxStatus | str,
    new: MailboxStatus | str,
    *,
    pass_completed: bool = False,
    ever_completed: bool = False,
    failing: bool = False,
) -> Transition:
    """Check a move and name the lifecycle event it raises.

    `pass_completed`: this write ends a pass (every stream caught up). `ever_completed`: a
    pass had completed before in this mailbox's life. `failing`: the mailbox entered
    `error` or `auth_expired` and has not completed a pass since.
    """
    old, new = MailboxStatus(old), MailboxStatus(new)
    check(old, new)
    event: LifecycleEvent | None = None
    if new is S.DISCONNECTED and old is not S.DISCONNECTED:
        event = LifecycleEvent.DISCONNECTED
    elif new is S.AUTH_EXPIRED and old is not S.AUTH_EXPIRED:
        event = LifecycleEvent.AUTH_EXPIRED
    elif new is S.ERROR and not failing:
        event = LifecycleEvent.SYNC_FAILED
    elif new is S.CONNECTED and pass_completed:
        if not ever_completed:
            event = LifecycleEvent.CONNECTED
        elif failing:
            event = LifecycleEvent.RECOVERED
    return Transition(old, new, event)


def enters_failing(new: MailboxStatus) -> bool:
    return new in (S.ERROR, S.AUTH_EXPIRED)


# -- phase and progress -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamProgress:
    """What the status needs of one stream (read from its cursor row)."""

    mode: StreamMode | str
    caught_up: bool
    generation: int
    total_estimate: int | None
    # Messages seen by the stream's current enumeration (full mode).
    enumerated: int
    # The first enumeration of a stream is a backfill; any later one rebuilds it.
    rebuilding: bool


def phase_of(streams: Iterable[StreamProgress], *, running: bool) -> Phase:
    streams = list(streams)
    full = [s for s in streams if StreamMode(s.mode) is StreamMode.FULL]
    if full:
        return Phase.RESYNC if any(s.rebuilding for s in full) else Phase.BACKFILL
    if running or any(not s.caught_up for s in streams):
        return Phase.INCREMENTAL
    return Phase.IDLE


def streams_behind(streams: Iterable[StreamProgress]) -> int:
    return sum(1 for s in streams if StreamMode(s.mode) is StreamMode.FULL or not s.caught_up)


def percent(
    status: MailboxStatus | str,
    streams: Iterable[StreamProgress],
    *,
    messages_synced: int = 0,
    total_estimate: int | None = None,
) -> int:
    """How much of the mailbox's content is in the store: 100 only when no stream is being
    enumerated. A stream being enumerated counts what its enumeration has seen, so a dead
    cursor's rebuild shows its own progress instead of the 100 the mailbox had before."""
    status = MailboxStatus(status)
    streams = list(streams)
    enumerating = any(StreamMode(s.mode) is StreamMode.FULL for s in streams)
    if status is S.CONNECTED and not enumerating:
        return 100
    total = done = 0
    for s in streams:
        if s.total_estimate is None:
            continue
        total += s.total_estimate
        if StreamMode(s.mode) is StreamMode.FULL:
            done += min(s.enumerated, s.total_estimate)
        else:
            done += s.total_estimate
    if total == 0:
        # No stream knows its size (yet): the mailbox-wide estimate is all there is.
        done, total = messages_synced, total_estimate or 0
    if total <= 0:
        return 0
    # 100 is reserved for "nothing left to enumerate".
    return max(0, min(99, done * 100 // total))


def in_sync(
    status: MailboxStatus | str,
    streams: Iterable[StreamProgress],
    *,
    owed: bool,
    phase: Phase | str | None = None,
) -> bool:
    """Every stream caught up, no pass owed (no change known and not yet applied), and no
    repair running (the monitor found the store different from the provider)."""
    streams = list(streams)
    return (
        MailboxStatus(status) is S.CONNECTED
        and bool(streams)
        and streams_behind(streams) == 0
        and not owed
        and (phase is None or Phase(phase) is not Phase.RESYNC)
    )


# -- push and the completion monitor -----------------------------------------------------


# Push states in which nothing tells us about changes: the mailbox is polled.
POLLED: frozenset[PushState] = frozenset({PushState.NONE, PushState.FAILING})


def pass_interval(push: PushState | str, *, interval: float, without_push: float) -> float:
    """Seconds from one completed pass to the next periodic one: the slow safety net while
    push delivers changes, fast polling while it does not."""
    if PushState(push) in POLLED:
        return min(interval, without_push)
    return interval


def verifiable(status: MailboxStatus | str) -> bool:
    """The monitor checks mailboxes that have completed a pass and are healthy; a failing
    or parked one has its own status to show, and a first backfill is not complete yet."""
    return MailboxStatus(status) is S.CONNECTED


def settled(
    status: MailboxStatus | str,
    streams: Iterable[StreamProgress],
    *,
    leased: bool,
    pass_running: bool,
    owed: bool,
) -> bool:
    """Nothing in flight on our side: no slice holds the lease, no pass is under way, every
    stream has caught up, and no change is known that a pass has not applied. Only then do
    stored counts mean something next to the provider's."""
    return (
        verifiable(status)
        and not leased
        and not pass_running
        and in_sync(status, streams, owed=owed)
    )
