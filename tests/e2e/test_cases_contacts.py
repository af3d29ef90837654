"""Removing a contact: its links go unless another contact links the message; in a
cases-only mailbox, a message no case links any more goes too."""

from __future__ import annotations

from typing import Any

from app.sync.runtime import Runtime
from tests.conftest import LiveApi, run_worker
from tests.e2e.cases_support import (
    CONTACT,
    OTHER,
    call,
    case_message_ids,
    get_case,
    links,
    message_events,
    put_case,
    stored_ids,
)
from tests.e2e.support import Sim, connect_via_api, unique_email


async def new_mailbox(
    sim: Sim, live_api: LiveApi, user: str, scope: str, contacts: list[dict[str, Any]]
) -> tuple[dict[str, Any], str]:
    account = await sim.call(
        "POST",
        "/_sim/microsoft/accounts",
        json={"email": unique_email("contacts"), "message_count": 2400, "contacts": contacts},
    )
    body = {
        "provider": "microsoft",
        "access_token": account["access_token"],
        "refresh_token": account["refresh_token"],
        "expires_in": account["expires_in"],
        "email": account["email"],
        "scope": scope,
    }
    return account, await connect_via_api(live_api, user, body)


async def truth(sim: Sim, account: dict[str, Any], address: str) -> set[str]:
    body = await sim.call("GET", f"/_sim/microsoft/accounts/{account['email']}/contacts/{address}")
    return set(body["ids"])


PLANTED = [{"address": CONTACT, "count": 800}, {"address": OTHER, "count": 800}]


async def test_removing_a_contact_of_a_full_mirror_unlinks_and_keeps_the_mail(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account, mailbox_id = await new_mailbox(sim, live_api, "pia", "full", PLANTED)
    await run_worker(sim_rt)
    await put_case(live_api, "pia", "p-1", mailbox_ids=[mailbox_id], contacts=[CONTACT, OTHER])
    await run_worker(sim_rt)
    mine, theirs = await truth(sim, account, CONTACT), await truth(sim, account, OTHER)
    assert mine & theirs and mine - theirs
    everything = await stored_ids(sim_rt, mailbox_id)

    response = await call(live_api, "pia", "DELETE", f"/cases/p-1/contacts/{CONTACT}")
    assert response.status_code == 200, response.text
    case = response.json()
    assert case["contacts"] == [OTHER]
    assert [c["email"] for c in case["mailboxes"][0]["contacts"]] == [OTHER]
    assert await links(sim_rt, mailbox_id) == {(OTHER, m) for m in theirs}
    assert set(await case_message_ids(live_api, "pia", "p-1")) == theirs
    assert await stored_ids(sim_rt, mailbox_id) == everything  # a mirror keeps its mail
    again = await call(live_api, "pia", "DELETE", f"/cases/p-1/contacts/{CONTACT}")
    assert again.status_code == 404


async def test_removing_a_contact_of_a_cases_only_mailbox_deletes_what_no_case_links(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account, mailbox_id = await new_mailbox(sim, live_api, "quin", "cases", PLANTED)
    await put_case(live_api, "quin", "q-1", mailbox_ids=[mailbox_id], contacts=[CONTACT, OTHER])
    await run_worker(sim_rt)
    mine, theirs = await truth(sim, account, CONTACT), await truth(sim, account, OTHER)
    assert await stored_ids(sim_rt, mailbox_id) == mine | theirs

    # Another case of the same user keeps CONTACT's mail with a `since`: only its newer
    # messages stay linked (and stored) once q-1 lets go of CONTACT.
    await put_case(
        live_api,
        "quin",
        "q-2",
        mailbox_ids=[mailbox_id],
        contacts=[CONTACT],
        since="2024-01-01",
    )
    await run_worker(sim_rt)
    recent = {m for c, m in await links(sim_rt, mailbox_id) if c == CONTACT} & mine
    q2 = set(await case_message_ids(live_api, "quin", "q-2"))
    assert q2 and q2 < mine

    response = await call(live_api, "quin", "DELETE", f"/cases/q-1/contacts/{CONTACT}")
    assert response.status_code == 200, response.text
    assert set(await case_message_ids(live_api, "quin", "q-1")) == theirs
    assert await stored_ids(sim_rt, mailbox_id) == theirs | q2
    # Consumers of the events hear that the rest left the mailbox.
    _, deleted = await message_events(sim_rt, mailbox_id)
    assert set(deleted) == mine - theirs - q2
    assert recent >= q2

    # The case goes too: nothing of it is left but what q-2 still links.
    deleted = await call(live_api, "quin", "DELETE", "/cases/q-1")
    assert deleted.status_code == 204
    assert await stored_ids(sim_rt, mailbox_id) == q2
    assert (await call(live_api, "quin", "GET", "/cases/q-1")).status_code == 404
    assert (await get_case(live_api, "quin", "q-2"))["status"] == "complete"
