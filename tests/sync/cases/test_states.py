"""The case entry table: its moves, and what a case's status says about its entries."""

from __future__ import annotations

import pytest

from app.sync.cases import states
from app.sync.cases.states import EntryStatus

E = EntryStatus


def test_every_status_has_a_row_and_only_known_targets() -> None:
    assert set(states.TRANSITIONS) == set(E)
    for old, targets in states.TRANSITIONS.items():
        assert targets <= set(E), old
        assert old in targets  # writing the same status again is no move


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (E.AUTH_EXPIRED, E.SYNCING),  # only a reconnect leads out of auth_expired
        (E.AUTH_EXPIRED, E.COMPLETE),
        (E.COMPLETE, E.SYNCING),  # a complete entry starts over from pending
        (E.COMPLETE, E.ERROR),
    ],
)
def test_illegal_moves_are_refused(old: E, new: E) -> None:
    with pytest.raises(states.IllegalTransition):
        states.check(old, new)
    assert old.value not in states.allowed_sources(new)


def test_a_failing_entry_keeps_error_until_it_completes() -> None:
    assert states.during_run(E.PENDING) is E.SYNCING
    assert states.during_run(E.ERROR) is E.ERROR
    assert states.after_transient_failure(E.SYNCING, 2, 8) is E.SYNCING
    assert states.after_transient_failure(E.SYNCING, 8, 8) is E.ERROR
    assert states.on_reconnect(E.AUTH_EXPIRED) is E.PENDING
    assert states.on_reconnect(E.COMPLETE) is E.COMPLETE


@pytest.mark.parametrize(
    ("entries", "status"),
    [
        ([], E.COMPLETE),
        ([E.COMPLETE, E.COMPLETE], E.COMPLETE),
        ([E.PENDING, E.PENDING], E.PENDING),
        ([E.COMPLETE, E.PENDING], E.SYNCING),
        ([E.COMPLETE, E.SYNCING], E.SYNCING),
        ([E.SYNCING, E.ERROR], E.ERROR),
        ([E.ERROR, E.AUTH_EXPIRED, E.COMPLETE], E.AUTH_EXPIRED),
    ],
)
def test_a_case_is_complete_only_when_every_entry_is(entries: list[E], status: E) -> None:
    assert states.case_status(entries) is status
