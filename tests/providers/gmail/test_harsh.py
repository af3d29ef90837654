"""GmailProvider against the simulator at its harshest: the per-user concurrency limit,
quota refusals without Retry-After, batch answers out of order, mixed history records."""

from __future__ import annotations

import json

import pytest

from app.providers.base import ThrottledError, aiter_pages
from app.providers.gmail.errors import ConcurrencyLimited, classify
from app.providers.gmail.pacing import BatchPacing
from tests.providers.gmail.conftest import Harness, MakeHarness, Store
from tests.providers.gmail.sim import GoogleSim
from tests.providers.gmail.test_sync import _assert_matches_truth, _sync


def _concurrency_refusal() -> bytes:
    return json.dumps(
        {
            "error": {
                "code": 429,
                "message": "Too many concurrent requests for user.",
                "errors": [
                    {
                        "message": "Too many concurrent requests for user.",
                        "domain": "global",
                        "reason": "rateLimitExceeded",
                    }
                ],
                "status": "RESOURCE_EXHAUSTED",
            }
        }
    ).encode()


def test_concurrency_refusal_is_told_from_a_quota_refusal() -> None:
    refused = classify(429, {}, _concurrency_refusal(), operation="users.messages.get")
    assert isinstance(refused, ConcurrencyLimited) and refused.retry_after is None
    quota = json.dumps(
        {
            "error": {
                "code": 403,
                "message": "User-rate limit exceeded.  Retry after 2999-01-01T00:00:00.000Z",
                "errors": [{"reason": "userRateLimitExceeded", "domain": "usageLimits"}],
            }
        }
    ).encode()
    throttled = classify(403, {}, quota, operation="users.messages.get")
    assert type(throttled) is ThrottledError
    assert throttled.retry_after is not None and throttled.retry_after > 1e6


def test_pacing_shrinks_below_what_gmail_took_and_grows_back() -> None:
    pacing = BatchPacing.start(50, 3)
    pacing.refused(sent=50, refused=20)
    assert pacing.size == 22 and pacing.concurrency == 1  # 30 taken, a quarter less
    pacing.refused(sent=22, refused=22)
    assert pacing.size == 1
    pacing.accepted(sent=1)
    assert pacing.size == 2
    for _ in range(200):
        pacing.accepted(sent=pacing.size)
    assert pacing.size == 50 and pacing.concurrency == 3
    # A short last batch of a page says nothing about a full one.
    pacing.refused(sent=50, refused=1)
    size = pacing.size
    pacing.accepted(sent=3)
    assert pacing.size == size


async def _units_of_one_full_page(sim: GoogleSim, h: Harness) -> tuple[int, dict[str, int]]:
    before = await sim.counters(h.account.email)
    page = await h.provider.fetch_page(h.ctx, h.stream, None)
    after = await sim.counters(h.account.email)
    return len(page.upserts), {
        k: after[k] - before.get(k, 0) for k in after if isinstance(after[k], int)
    }


async def test_concurrency_limit_keeps_answered_parts_and_resends_only_refused_ones(
    sim: GoogleSim, harness: MakeHarness
) -> None:
    h = await harness(messages=500, quota=False)
    await h.provider.list_streams(h.ctx)
    async with sim.faults(
        gmail_quota_units_per_second=0, gmail_user_concurrency=20, gmail_user_concurrency_jitter=0
    ):
        fetched, spent = await _units_of_one_full_page(sim, h)
    # The page is whole, not failed because parts were refused.
    assert fetched == 500
    assert spent["concurrency_refused"] > 0
    # Every message was answered exactly once: getProfile 1 + messages.list 5 + labels.list 1
    # + 500 gets x 5; a part fetched twice (an answered part thrown away) would cost 5 more.
    assert spent["quota_units"] == 7 + 500 * 5
    # The gate got back the units of refused parts: Gmail charged nothing for them.
    assert h.gate.refunded == 5 * spent["concurrency_refused"]
    # It learned what this mailbox takes at once and sends no more than that.
    assert h.provider._client.pacing(h.ctx).size <= 20
    assert h.provider._client.pacing(h.ctx).concurrency == 1


async def test_concurrency_limit_with_jitter_converges_exactly(
    sim: GoogleSim, harness: MakeHarness
) -> None:
    h = await harness(messages=1200, quota=False)
    store = Store()
    async with sim.faults(
        gmail_quota_units_per_second=0,
        gmail_user_concurrency=40,
        gmail_user_concurrency_jitter=0.5,
        seed=5,
    ):
        pages = await _sync(h, store)
    assert pages[-1].caught_up
    counters = await sim.counters(h.account.email)
    assert counters["concurrency_refused"] > 0
    assert counters["retry_after_violations"] == 0
    # Concurrency refusals are not a quota matter: the mailbox was never paused for them.
    assert h.gate.pauses == []
    await _assert_matches_truth(sim, h, store)


@pytest.mark.parametrize(
    ("status", "reason"),
    [(429, "rateLimitExceeded"), (403, "userRateLimitExceeded"), (403, "rateLimitExceeded")],
)
async def test_quota_refusals_name_their_wait_only_in_the_message(
    sim: GoogleSim, harness: MakeHarness, status: int, reason: str
) -> None:
    # Our gate keeps 250 units/s, Google here allows 100: refusals are certain, and the
    # only wait they carry is "Retry after <RFC 3339>" in the message.
    h = await harness(messages=60)
    store = Store()
    async with sim.faults(
        gmail_quota_units_per_second=100, gmail_quota_status=status, gmail_quota_reason=reason
    ):
        pages = await _sync(h, store)
    assert pages[-1].caught_up
    counters = await sim.counters(h.account.email)
    assert counters["throttled"] > 0
    assert counters["retry_after_violations"] == 0
    # Each refusal paused the whole mailbox for the instant Google named (under a second
    # at these rates), not for a blind exponential backoff.
    assert h.gate.pauses and all(0 < p < 1.5 for p in h.gate.pauses)
    await _assert_matches_truth(sim, h, store)


async def test_batch_answers_out_of_order_without_content_length(
    sim: GoogleSim, harness: MakeHarness
) -> None:
    h = await harness(messages=260, quota=False)
    store = Store()
    async with sim.faults(
        gmail_quota_units_per_second=0, gmail_batch_shuffle=True, gmail_batch_content_length=False
    ):
        await _sync(h, store)
    await _assert_matches_truth(sim, h, store)


async def test_history_records_with_several_change_types(
    sim: GoogleSim, harness: MakeHarness
) -> None:
    h = await harness(messages=80, quota=False)
    store = Store()
    async with sim.faults(gmail_quota_units_per_second=0):
        pages = await _sync(h, store)
        truth = await sim.truth(h.account.email)
        relabelled, removed, read = truth[2]["id"], truth[5]["id"], truth[9]["id"]
        response = await sim.http.post(
            f"/_sim/google/accounts/{h.account.email}/history/record",
            json={
                "operations": [
                    {"op": "add", "count": 3, "label_ids": ["INBOX", "UNREAD"]},
                    {"op": "modify", "ids": ["new:0", relabelled], "add_label_ids": ["STARRED"],
                     "remove_label_ids": ["INBOX"]},
                    {"op": "modify", "ids": [read], "remove_label_ids": ["UNREAD"]},
                    {"op": "delete", "ids": ["new:2", removed]},
                ]
            },
        )  # fmt: skip
        assert response.status_code == 201, response.text
        # A second mixed record: a label added and taken away again, then the message read.
        await sim.http.post(
            f"/_sim/google/accounts/{h.account.email}/history/record",
            json={
                "operations": [
                    {"op": "modify", "ids": [relabelled], "add_label_ids": ["IMPORTANT"]},
                    {"op": "modify", "ids": [relabelled], "remove_label_ids": ["IMPORTANT"]},
                    {"op": "modify", "ids": [read], "add_label_ids": ["UNREAD"]},
                ]
            },
        )  # fmt: skip
        await _sync(h, store, pages[-1].cursor)
    await _assert_matches_truth(sim, h, store)


async def test_a_user_that_takes_one_request_at_a_time_still_syncs(
    sim: GoogleSim, harness: MakeHarness
) -> None:
    h = await harness(messages=30, quota=False)
    async with sim.faults(
        gmail_quota_units_per_second=0, gmail_user_concurrency=1, gmail_user_concurrency_jitter=0
    ):
        pages = [p async for p in aiter_pages(h.provider, h.ctx, h.stream, None)]
    assert sum(len(p.upserts) for p in pages) == 30
    # It sawtooths around what the user takes: one at a time, now and then two.
    assert h.provider._client.pacing(h.ctx).size <= 2
