"""The lifecycle table: every move, every event, phase and progress."""

from __future__ import annotations

import pytest

from app.sync import states
from app.sync.states import LifecycleEvent, MailboxStatus, Phase, StreamMode, StreamProgress

S = MailboxStatus


def test_every_status_has_a_row_and_only_known_targets() -> None:
    assert set(states.TRANSITIONS) == set(S)
    for old, targets in states.TRANSITIONS.items():
        assert targets <= set(S), old
        # Every status can be parked by the user, and reconnect leads out of every park.
        assert S.DISCONNECTED in targets


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.CONNECTED, S.PENDING),  # a healthy mailbox keeps its status on reconnect
        (S.CONNECTED, S.SYNCING),  # later passes say what they do in `phase`
        (S.AUTH_EXPIRED, S.CONNECTED),  # only a reconnect leads out of auth_expired
        (S.AUTH_EXPIRED, S.SYNCING),
        (S.DISCONNECTED, S.CONNECTED),
        (S.ERROR, S.SYNCING),  # a failing mailbox does not flap on each retry
    ],
)
def test_illegal_moves_are_refused(old: S, new: S) -> None:
    with pytest.raises(states.IllegalTransition):
        states.check(old, new)
    assert old.value not in states.allowed_sources(new)


def test_allowed_sources_is_the_table_read_backwards() -> None:
    assert states.allowed_sources(S.AUTH_EXPIRED) == sorted(
        ["pending", "syncing", "connected", "error", "auth_expired"]
    )
    assert states.allowed_sources(S.PENDING) == sorted(
        ["pending", "error", "auth_expired", "disconnected"]
    )


def test_events_once_per_transition() -> None:
    first = states.transition(S.SYNCING, S.CONNECTED, pass_completed=True)
    assert first.event is LifecycleEvent.CONNECTED
    again = states.transition(S.CONNECTED, S.CONNECTED, pass_completed=True, ever_completed=True)
    assert again.event is None
    assert states.transition(S.CONNECTED, S.ERROR).event is LifecycleEvent.SYNC_FAILED
    # Still failing: a retry that fails again raises nothing new.
    assert states.transition(S.ERROR, S.ERROR, failing=True).event is None
    recovered = states.transition(
        S.ERROR, S.CONNECTED, pass_completed=True, ever_completed=True, failing=True
    )
    assert recovered.event is LifecycleEvent.RECOVERED
    # A mailbox that failed before its first pass completed is "connected" when it does.
    first_after_failing = states.transition(S.ERROR, S.CONNECTED, pass_completed=True, failing=True)
    assert first_after_failing.event is LifecycleEvent.CONNECTED
    assert states.transition(S.SYNCING, S.AUTH_EXPIRED).event is LifecycleEvent.AUTH_EXPIRED
    assert states.transition(S.AUTH_EXPIRED, S.DISCONNECTED).event is LifecycleEvent.DISCONNECTED
    assert states.transition(S.DISCONNECTED, S.DISCONNECTED).event is None
    # A slice's own bookkeeping raises nothing.
    assert states.transition(S.PENDING, S.SYNCING).event is None
    assert states.transition(S.CONNECTED, S.CONNECTED).event is None


def test_reconnect_and_slice_statuses() -> None:
    assert states.on_reconnect(S.AUTH_EXPIRED) is S.PENDING
    assert states.on_reconnect(S.DISCONNECTED) is S.PENDING
    assert states.on_reconnect(S.ERROR) is S.PENDING
    assert states.on_reconnect(S.CONNECTED) is S.CONNECTED
    assert states.on_reconnect(S.SYNCING) is S.SYNCING
    assert states.during_slice(S.PENDING) is S.SYNCING
    assert states.during_slice(S.ERROR) is S.ERROR
    assert states.after_transient_failure(S.SYNCING, 7, 8) is S.SYNCING
    assert states.after_transient_failure(S.CONNECTED, 8, 8) is S.ERROR


def _stream(
    mode: StreamMode, *, caught_up: bool = True, generation: int = 1, total: int | None = 100,
    enumerated: int = 0,
) -> StreamProgress:  # fmt: skip
    return StreamProgress(mode, caught_up, generation, total, enumerated, generation > 1)


def test_phase_follows_the_streams() -> None:
    inc = _stream(StreamMode.INCREMENTAL)
    assert states.phase_of([inc], running=False) is Phase.IDLE
    assert states.phase_of([inc], running=True) is Phase.INCREMENTAL
    first = _stream(StreamMode.FULL, caught_up=False)
    assert states.phase_of([inc, first], running=True) is Phase.BACKFILL
    rebuild = _stream(StreamMode.FULL, caught_up=False, generation=2)
    assert states.phase_of([inc, rebuild], running=False) is Phase.RESYNC


def test_percent_measures_a_rebuild_not_the_mailbox_it_had() -> None:
    inc = _stream(StreamMode.INCREMENTAL, total=300)
    rebuild = _stream(StreamMode.FULL, caught_up=False, generation=2, total=100, enumerated=50)
    assert states.percent(S.CONNECTED, [inc]) == 100
    assert states.percent(S.CONNECTED, [inc, rebuild]) == 87  # (300 + 50) / 400
    # An enumeration that saw more than the estimate is still not done.
    over = _stream(StreamMode.FULL, caught_up=False, generation=2, total=100, enumerated=140)
    assert states.percent(S.CONNECTED, [over]) == 99
    # Without stream totals, the mailbox-wide estimate.
    unknown = _stream(StreamMode.FULL, caught_up=False, total=None)
    assert states.percent(S.SYNCING, [unknown], messages_synced=30, total_estimate=60) == 50
    assert states.percent(S.PENDING, []) == 0


def test_in_sync_needs_every_stream_caught_up_and_nothing_owed() -> None:
    inc = _stream(StreamMode.INCREMENTAL)
    assert states.in_sync(S.CONNECTED, [inc], owed=False)
    assert not states.in_sync(S.CONNECTED, [inc], owed=True)
    assert not states.in_sync(
        S.CONNECTED, [_stream(StreamMode.INCREMENTAL, caught_up=False)], owed=False
    )
    assert not states.in_sync(S.ERROR, [inc], owed=False)
    assert not states.in_sync(S.CONNECTED, [], owed=False)
    assert (
        states.streams_behind(
            [inc, _stream(StreamMode.FULL), _stream(StreamMode.INCREMENTAL, caught_up=False)]
        )
        == 2
    )
