"""The second, small state machine: one search entry per (case, mailbox, contact).

```
            (new contact or mailbox; `since` moved; reconnect)
                 ┌───────────────────────────────────────┐
                 ▼                                       │
 (new) ──> pending ──> syncing ──> complete ─────────────┘
              │           │  ▲  \\
              │           │  │   \\ a permanent provider error, or
              │           ▼  │    ▼ MAX_TRANSIENT_RETRIES failures in a row
              │       auth_expired   error ──(retries continue)──> syncing / complete
              └───────────┴──────────┴──── reconnect ──> pending
```

- `pending`: created, nothing has run yet.
- `syncing`: a search (or a query over the stored mirror) is under way, or a full mirror's
  first backfill has not finished (what it stores later is linked as it commits).
- `complete`: everything the provider had for the contact is stored and linked; new mail
  keeps being linked as it arrives.
- `error`: the provider refused the search for good, or it kept failing; retries continue
  with backoff, so the entry leaves `error` by itself when the trouble passes.
- `auth_expired`: the mailbox's grant was refused; "reconnect the mailbox", after which the
  entry resumes from its last checkpoint.

A case's own status is derived (`case_status`): `complete` only when every entry is.

Mailbox scope (`MailboxScope`) says how a mailbox's entries find mail: a `full` mirror
links by a query over what it stores; a `cases` mailbox stores only mail exchanged with
its owner's case contacts and finds history with the provider's search.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class MailboxScope(enum.StrEnum):
    FULL = "full"
    CASES = "cases"


class EntryStatus(enum.StrEnum):
    PENDING = "pending"
    SYNCING = "syncing"
    COMPLETE = "complete"
    ERROR = "error"
    AUTH_EXPIRED = "auth_expired"


class CaseEvent(enum.StrEnum):
    MESSAGE_LINKED = "case.message_linked"
    SYNC_COMPLETE = "case.sync_complete"


E = EntryStatus

# An entry may hold a search lease (and a job may run it) in these.
RUNNABLE: frozenset[EntryStatus] = frozenset({E.PENDING, E.SYNCING, E.ERROR})

TRANSITIONS: dict[EntryStatus, frozenset[EntryStatus]] = {
    E.PENDING: frozenset({E.PENDING, E.SYNCING, E.COMPLETE, E.ERROR, E.AUTH_EXPIRED}),
    E.SYNCING: frozenset({E.SYNCING, E.COMPLETE, E.ERROR, E.AUTH_EXPIRED, E.PENDING}),
    E.COMPLETE: frozenset({E.COMPLETE, E.PENDING}),
    E.ERROR: frozenset({E.ERROR, E.SYNCING, E.COMPLETE, E.AUTH_EXPIRED, E.PENDING}),
    E.AUTH_EXPIRED: frozenset({E.AUTH_EXPIRED, E.PENDING}),
}

RECONNECT_ADVICE = "reconnect the mailbox"


class IllegalTransition(Exception):
    pass


def check(old: EntryStatus | str, new: EntryStatus | str) -> None:
    if EntryStatus(new) not in TRANSITIONS[EntryStatus(old)]:
        raise IllegalTransition(f"case entry status may not move from {old} to {new}")


def allowed_sources(new: EntryStatus) -> list[str]:
    """The statuses from which `new` may be entered: a guarded UPDATE matches only these."""
    return sorted(old.value for old, targets in TRANSITIONS.items() if new in targets)


def values(enum_type: type[enum.StrEnum]) -> list[str]:
    return [member.value for member in enum_type]


def during_run(current: EntryStatus | str) -> EntryStatus:
    """What a running slice shows: a failing entry keeps `error` until it completes."""
    current = EntryStatus(current)
    return current if current is E.ERROR else E.SYNCING


def after_transient_failure(
    current: EntryStatus | str, failures: int, max_failures: int
) -> EntryStatus:
    return E.ERROR if failures >= max_failures else during_run(current)


def on_reconnect(current: EntryStatus | str) -> EntryStatus:
    """New credentials revive a parked or failed entry; the others keep their status."""
    current = EntryStatus(current)
    return E.PENDING if current in (E.AUTH_EXPIRED, E.ERROR) else current


def case_status(entries: Iterable[EntryStatus | str]) -> EntryStatus:
    """A case is `complete` only when every entry is; otherwise its most urgent state."""
    found = {EntryStatus(e) for e in entries}
    if not found or found == {E.COMPLETE}:
        return E.COMPLETE
    for urgent in (E.AUTH_EXPIRED, E.ERROR):
        if urgent in found:
            return urgent
    if found == {E.PENDING}:
        return E.PENDING
    return E.SYNCING
