"""The simulated mailbox without HTTP: ids, threads, paging, history retention."""

from __future__ import annotations

import pytest

from app.simulator.google.mailbox import HistoryExpired, Mailbox


def _mailbox(total: int = 300, retention: int = 1000, seed: int = 11) -> Mailbox:
    return Mailbox(
        "owner@example.com",
        seed=seed,
        total=total,
        history_id_start=9_999_999_990,
        retention=lambda: retention,
    )


def test_seeded_ids_are_16_hex_unique_and_invertible() -> None:
    box = _mailbox(total=5000)
    ids = [box.seeded_id(i) for i in range(box.total)]
    assert len(set(ids)) == box.total
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    assert [box.seeded_index(i) for i in ids] == list(range(box.total))
    assert box.seeded_index("0000000000000000") is None
    assert box.seeded_index("zz") is None
    # Gmail ids grow with time: newer (higher index) messages have larger ids.
    assert ids == sorted(ids, key=lambda x: int(x, 16))


def test_thread_id_is_the_first_message_of_the_thread() -> None:
    box = _mailbox(total=600)
    views = [box.view(box.seeded_id(i)) for i in range(box.total)]
    by_thread: dict[str, list[int]] = {}
    for index, view in enumerate(views):
        assert view is not None
        by_thread.setdefault(view.thread_id, []).append(index)
    assert 1 < len(by_thread) < box.total
    for thread_id, members in by_thread.items():
        assert box.seeded_id(min(members)) == thread_id
        first = views[min(members)]
        assert first is not None and first.in_reply_to is None
        for index in members[1:]:
            view = views[index]
            assert view is not None
            assert view.subject.startswith("Re: ")
            assert view.in_reply_to == first.message_id


def test_paging_sees_every_live_message_once_even_when_deleting_between_pages() -> None:
    box = _mailbox(total=250)
    seen: list[str] = []
    token = None
    deleted: set[str] = set()
    while True:
        page = box.list_messages(
            max_results=40,
            page_token=token,
            label_ids=frozenset(),
            include_spam_trash=True,
            query=None,
        )
        seen += [message_id for message_id, _ in page.messages]
        # Delete a message already listed and one not yet listed.
        for victim in (page.messages[0][0], box.seeded_id(max(0, 249 - len(seen) - 5))):
            if box.delete_message(victim) is not None:
                deleted.add(victim)
        token = page.next_page_token
        if token is None:
            break
    assert len(seen) == len(set(seen))
    unlisted_deleted = {d for d in deleted if d not in seen}
    assert set(seen) | unlisted_deleted == {box.seeded_id(i) for i in range(250)}


def test_history_older_than_retention_is_gone() -> None:
    box = _mailbox(retention=3)
    start = box.history_id
    ids = [box.seeded_id(i) for i in range(6)]
    for message_id in ids:
        assert box.modify_message(message_id, frozenset({"STARRED"}), frozenset()) is not None
    with pytest.raises(HistoryExpired):
        box.history_page(start, types=None, label_id=None, max_results=100, page_token=None)
    # The three newest records are still there, readable from the floor.
    records, _ = box.history_page(
        box.floor_history_id, types=None, label_id=None, max_results=100, page_token=None
    )
    assert [r["messages"][0]["id"] for r in records] == ids[-3:]


def test_no_op_modify_writes_no_history() -> None:
    box = _mailbox()
    message_id = box.seeded_id(10)
    labels = box.labels(message_id)
    before = box.history_id
    assert box.modify_message(message_id, frozenset(labels), frozenset()) is None
    assert box.history_id == before
