"""The deterministic corpus behind every simulated mailbox."""

from __future__ import annotations

from collections import Counter

import pytest

from app.simulator import corpus


@pytest.mark.parametrize("seed", [0, 1, 77, 123456])
def test_thread_index_agrees_with_generate(seed: int) -> None:
    for index in range(400):
        assert (
            corpus.thread_index(seed, index)
            == corpus.generate(seed, index, 400, "o@x.com").thread_index
        )


def test_same_inputs_same_message_and_realistic_spread() -> None:
    total = 5000
    messages = [corpus.generate(9, i, total, "owner@example.com") for i in range(total)]
    assert messages[123] == corpus.generate(9, 123, total, "owner@example.com")
    assert corpus.generate(10, 123, total, "owner@example.com") != messages[123]
    # Newest last (within jitter), spread over years.
    assert messages[0].received_at < messages[total // 2].received_at < messages[-1].received_at
    assert (messages[-1].received_at - messages[0].received_at).days > 5 * 365
    # Old mail is read, the newest few percent often unread; some attachments and categories.
    assert all(m.is_read for m in messages[: total // 2])
    unread_recent = sum(not m.is_read for m in messages[-150:])
    assert 40 < unread_recent < 110
    assert 0.12 < sum(m.has_attachments for m in messages) / total < 0.24
    assert 0.06 < sum(m.category is not None for m in messages) / total < 0.14
    # Threads: replies share the subject of their thread's first message.
    replies = [m for m in messages if m.thread_index != m.position]
    assert len(replies) > total / 4
    assert all(m.subject.endswith(messages[m.thread_index].subject) for m in replies[:200])
    assert all(m.to[0] == "owner@example.com" for m in messages)
    buckets = Counter(m.bucket for m in messages)
    assert set(buckets) == set(range(100))
    assert len({m.internet_message_id for m in messages}) == total
