"""OutlookProvider's completion-monitor methods against the simulator: folder counts, a
folder's ids, single messages; and an app-only token Graph refuses as AccessDenied."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from app.providers.base import AccessDenied, AccessTokenRejected
from tests.providers.outlook.support import create_account, ground_truth
from tests.providers.outlook.test_sync import Connect, assert_matches


async def test_counts_ids_and_single_messages(client: httpx.AsyncClient, connect: Connect) -> None:
    sim_account = await create_account(client, message_count=250)
    mailbox = connect(sim_account)
    user = sim_account["user_id"]
    await client.post(
        f"/_sim/microsoft/accounts/{user}/messages/read",
        json={"folder": "inbox", "count": 4, "is_read": False},
    )
    streams = list(await mailbox.provider.list_streams(mailbox.ctx))
    truth = await ground_truth(client, user)
    totals = Counter(m["folder_id"] for m in truth)
    unread = Counter(m["folder_id"] for m in truth if not m["is_read"])

    counts = await mailbox.provider.counts(mailbox.ctx, streams)
    assert counts.stable
    assert {s.key for s in counts.scopes} == {s.key for s in streams}
    for scope in counts.scopes:
        assert (scope.kind, scope.repair, scope.stream) == ("stream", "restart", scope.key)
        assert (scope.total, scope.unread) == (totals.get(scope.key, 0), unread.get(scope.key, 0))

    [inbox] = [s for s in streams if "INBOX" in s.labels]
    scope = next(s for s in counts.scopes if s.key == inbox.key)
    members = {m["id"] for m in truth if m["folder_id"] == inbox.key}
    assert set(await mailbox.provider.scope_ids(mailbox.ctx, scope)) == members
    unread_members = {m["id"] for m in truth if m["folder_id"] == inbox.key and not m["is_read"]}
    listed = await mailbox.provider.scope_ids(mailbox.ctx, scope, unread_only=True)
    assert set(listed) == unread_members

    by_id = {m["id"]: m for m in truth}
    wanted = sorted(members)[:5]
    gone = "AAMkAGdvbmU="
    batch = await mailbox.provider.get_messages(mailbox.ctx, inbox, [*wanted, gone])
    assert batch.provider_message_id == wanted
    for message in batch:
        assert_matches(message, inbox, by_id[message.provider_message_id])


async def test_an_app_only_token_without_the_role_is_access_denied(
    client: httpx.AsyncClient, connect: Connect
) -> None:
    sim_account = await create_account(client, message_count=5)
    mailbox = connect(sim_account, app_only=True)
    await mailbox.refresh()
    streams = list(await mailbox.provider.list_streams(mailbox.ctx))
    await client.put(
        f"/_sim/microsoft/tenants/{sim_account['tenant_id']}/consent", json={"granted": False}
    )
    await mailbox.refresh()  # issued after the withdrawal: no Mail.Read role
    with pytest.raises(AccessDenied, match="admin consent") as raised:
        await mailbox.provider.counts(mailbox.ctx, streams)
    # The engine treats it as a refused token: one fresh token, then the mailbox parks.
    assert isinstance(raised.value, AccessTokenRejected)
    await client.put(
        f"/_sim/microsoft/tenants/{sim_account['tenant_id']}/consent", json={"granted": True}
    )
