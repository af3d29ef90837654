"""Real `mailsync worker` processes: a killed worker's mailbox is taken over within about one
lease period, and SIGTERM lets the running slice commit and leaves no process behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.sync.runtime import Runtime
from tests.conftest import LiveApi
from tests.e2e.support import Sim, connect_via_api
from tests.e2e.test_outlook import assert_converged, connect_body, new_account
from tests.sync.helpers import mailbox_row

LEASE_SECONDS = 3


class Workers:
    """`mailsync worker` subprocesses, each marked so that none can outlive the test."""

    def __init__(self, settings: Settings, logs: Path, **overrides: str) -> None:
        self.marker = uuid.uuid4().hex
        self.logs = logs
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GRAPH_", "GMAIL_"))}
        for name, field in Settings.model_fields.items():
            value = getattr(settings, name)
            if field.alias and value is not None:
                env[field.alias] = str(value)
        env.update(
            MAILSYNC_ENV="test",
            LEASE_SECONDS=str(LEASE_SECONDS),
            LOG_LEVEL="INFO",
            MAILSYNC_TEST_MARKER=self.marker,
            **overrides,
        )
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *command: str) -> subprocess.Popen[bytes]:
        """`mailsync <command>` (a worker unless told otherwise)."""
        proc = subprocess.Popen(  # noqa: S603 - our own CLI, arguments from the test
            [sys.executable, "-m", "app.cli", *(command or ("worker",))],
            env=self.env,
            cwd=Path(__file__).parents[2],
            stdout=subprocess.DEVNULL,
            # Kept by pytest beside the test's other temporary files, for a post-mortem.
            stderr=(self.logs / f"{(command or ('worker',))[0]}-{len(self.procs)}.log").open("wb"),
        )
        self.procs.append(proc)
        return proc

    def survivors(self) -> list[int]:
        """Every live process started with our marker (children and orphans included)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                state = (entry / "stat").read_text().split()[2]
            except OSError:
                continue
            if f"MAILSYNC_TEST_MARKER={self.marker}".encode() in environ and state != "Z":
                found.append(int(entry.name))
        return found

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def workers(sim_settings: Settings, live_api: LiveApi, tmp_path: Path) -> Iterator[Any]:
    made: list[Workers] = []

    def make(**overrides: str) -> Workers:
        w = Workers(live_api.settings, tmp_path, **overrides)
        made.append(w)
        return w

    try:
        yield make
    finally:
        for w in made:
            w.stop_all()


async def _wait_for(
    rt: Runtime, mailbox_id: uuid.UUID, check: Any, within: float = 60
) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while True:
            row = await mailbox_row(rt, mailbox_id)
            if check(row):
                return row
            await asyncio.sleep(0.05)


def _pid_of(owner: str) -> int:
    return int(owner.split(":")[1])


async def test_a_killed_workers_mailbox_is_resumed_within_about_one_lease(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime, workers: Any
) -> None:
    account = await new_account(sim, 12_000)
    await sim.call("PUT", "/_sim/faults", json={"latency_ms": 250})
    pool = workers(SYNC_SLICE_SECONDS="30")
    first, second = pool.start(), pool.start()
    mailbox_id = uuid.UUID(await connect_via_api(live_api, "kim", connect_body(account)))

    row = await _wait_for(
        sim_rt, mailbox_id, lambda r: r["lease_owner"] and r["messages_synced"] > 0
    )
    victim = _pid_of(row["lease_owner"])
    assert victim in (first.pid, second.pid)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    synced_at_kill = (await mailbox_row(sim_rt, mailbox_id))["messages_synced"]

    # The survivor takes the lapsed lease and commits a page of its own.
    taken = await _wait_for(
        sim_rt,
        mailbox_id,
        lambda r: (
            r["lease_owner"]
            and _pid_of(r["lease_owner"]) != victim
            and r["messages_synced"] > synced_at_kill
        ),
    )
    gap = time.monotonic() - killed_at
    print(f"\nkill -9 → survivor committing: {gap:.1f} s (lease {LEASE_SECONDS} s)")
    # A lease (and a request slot) lapses at most LEASE_SECONDS after its last renewal;
    # the scheduler looks every 5 s; the rest is the survivor's first page.
    assert gap < LEASE_SECONDS + 5 + 4
    assert _pid_of(taken["lease_owner"]) != victim

    await sim.call("PUT", "/_sim/faults", json={})
    await _wait_for(sim_rt, mailbox_id, lambda r: r["status"] == "connected", within=120)
    await assert_converged(sim, sim_rt, account["email"], str(mailbox_id))


async def test_sigterm_lets_the_slice_commit_and_leaves_no_process(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime, workers: Any
) -> None:
    account = await new_account(sim, 30_000)
    await sim.call("PUT", "/_sim/faults", json={"latency_ms": 400})
    pool = workers(SYNC_SLICE_SECONDS="3")
    worker = pool.start()
    mailbox_id = uuid.UUID(await connect_via_api(live_api, "sam", connect_body(account)))
    await _wait_for(sim_rt, mailbox_id, lambda r: r["lease_owner"] and r["messages_synced"] > 0)

    worker.send_signal(signal.SIGTERM)
    returncode = await asyncio.to_thread(worker.wait, 30)  # a container's grace period
    assert returncode is not None
    assert pool.survivors() == []
    row = await mailbox_row(sim_rt, mailbox_id)
    # The running slice ended by committing and releasing its lease, not by dying.
    assert row["lease_owner"] is None
    assert row["status"] == "syncing" and 0 < row["messages_synced"] < 30_000

    # Nothing was lost: a new worker picks the continuation up and converges exactly.
    await sim.call("PUT", "/_sim/faults", json={})
    pool.start()
    await _wait_for(sim_rt, mailbox_id, lambda r: r["status"] == "connected", within=120)
    await assert_converged(sim, sim_rt, account["email"], str(mailbox_id))


async def test_sigterm_stops_the_api_command_with_nothing_left(
    sim_settings: Settings, rt: Runtime, tmp_path: Path
) -> None:
    import socket

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes = Workers(sim_settings, tmp_path)
    api = processes.start("api", "--port", str(port))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            async with asyncio.timeout(30):
                while True:
                    try:
                        if (await client.get("/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
        api.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert await asyncio.to_thread(api.wait, 30) in (0, -signal.SIGTERM)
        assert processes.survivors() == []
        log = (tmp_path / "api-0.log").read_text()
        assert "Application shutdown complete" in log, log[-2000:]
    finally:
        processes.stop_all()
