"""`mailsync run` (what `make run` calls) with a provider configured: migrate, then the API,
a worker and a publisher against the real providers; Ctrl-C stops them and nothing is left."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx

from app.config import Settings
from tests.ops.support import (
    MAILSYNC,
    ROOT,
    alive,
    descendants,
    free_port,
    marked_env,
    process_env,
    survivors,
)


async def test_run_with_a_provider_configured_serves_the_api_a_worker_and_a_publisher(
    events_settings: Settings,
) -> None:
    settings = events_settings
    port = free_port()
    env = process_env(
        settings,
        PORT=str(port),
        HOST="127.0.0.1",
        MICROSOFT_CLIENT_ID="00000000-0000-0000-0000-000000000000",
        MICROSOFT_CLIENT_SECRET="not-used-here",
        WORKER_METRICS_PORT=str(free_port()),
    )
    env, marker = marked_env(env)
    process = await asyncio.create_subprocess_exec(
        *MAILSYNC, "run", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    started: set[int] = set()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            async with asyncio.timeout(60):
                while True:
                    assert process.returncode is None, "mailsync run exited"
                    try:
                        if (await client.get("/readyz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.1)
            started = descendants(process.pid)
            commands = {command_of(pid) for pid in started if alive(pid)}
            assert any("uvicorn app.main:app" in c for c in commands), commands
            assert any("arq app.sync.worker.WorkerSettings" in c for c in commands), commands
            assert any("app.cli publisher" in c for c in commands), commands
            # Not the demo: no simulator.
            assert not any("app.simulator" in c for c in commands), commands
    finally:
        started |= descendants(process.pid)
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, output.decode(errors="replace")[-2000:]
    assert "api, worker, publisher" in output.decode()
    assert not {pid for pid in started if alive(pid)} | set(survivors(marker))


def command_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
