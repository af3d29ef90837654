"""What a user sees when Microsoft refuses the grant: one clean line, not Entra's report."""

from __future__ import annotations

from app.sync.runtime import Runtime
from tests.conftest import LiveApi, run_worker
from tests.e2e.support import Sim, connect_via_api, status_of
from tests.e2e.test_outlook import connect_body, new_account


async def test_an_expired_grant_shows_one_line_with_the_code_and_what_to_do(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account = await new_account(sim, 20)
    await sim.call("POST", f"/_sim/microsoft/accounts/{account['user_id']}/expire-grants")
    await sim.call(
        "POST",
        f"/_sim/microsoft/accounts/{account['user_id']}/access-tokens/expire",
    )
    await connect_via_api(live_api, "ines", connect_body(account))
    await run_worker(sim_rt)
    status = await status_of(live_api, "ines")
    assert status["status"] == "auth_expired", status
    # Entra's description has CRLF lines, trace and correlation ids and timestamps.
    assert status["last_error"] == (
        "Microsoft refused the token request (AADSTS700082): The refresh token has expired "
        "due to inactivity. Reconnect the mailbox (sign in to Microsoft again)."
    )
