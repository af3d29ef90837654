"""`make run` and `mailsync demo`.

`mailsync run` (what `make run` calls): with a Microsoft or Google client configured, migrate
and run the API, a worker and an event publisher against the real providers; with neither,
the demo.

`mailsync demo`: the simulator (on a free port), a fresh database, the API, a worker, an
event publisher, a demo
user whose Outlook and Gmail mailboxes are connected through the public API, a trickle of
mail changes arriving through the providers' push notifications, and one line to open:
`Dashboard: <url>`. Ctrl-C stops every process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import httpx
import jwt

from app.config import Settings
from app.demo.options import DEMO_OPERATOR
from app.demo.processes import ChildExited, ProcessSpec, Supervisor, python_module, stack
from app.demo.scenario import GMAIL_EMAIL, OUTLOOK_EMAIL, SimulatorControl, Trickle, connect

# Used only when DATABASE_URL is not set: the demo then owns this database and starts it
# afresh on every run. With DATABASE_URL set, it keeps the database and replaces only the
# demo user's mailboxes.
DEMO_DATABASE_URL = "postgresql+asyncpg://postgres@localhost:5432/mailsync_demo"
SESSION_HOURS = 12


def _say(line: str = "") -> None:
    print(line, flush=True)


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def provider_configured() -> bool:
    from app.config import get_settings

    settings = get_settings()
    return bool(settings.microsoft_client_id or settings.google_client_id)


# -- `mailsync run` -------------------------------------------------------------------


def run_stack() -> int:
    if not provider_configured():
        from app.cli import main as cli_main

        return cli_main(["demo"])
    from app.cli import migrate
    from app.config import get_settings

    migrate()
    host = os.environ.get("HOST", "0.0.0.0")  # noqa: S104 - `make run` serves the machine
    port = int(os.environ.get("PORT", "8000"))
    log_dir = Path(tempfile.mkdtemp(prefix="mailsync-run-"))
    supervisor = Supervisor(log_dir, os.environ)
    processes = stack(host, port, events=get_settings().events_enabled)
    for spec in processes:
        supervisor.start(spec)
    names = ", ".join(spec.name for spec in processes)
    _say(f"mailsync: {names}; API on http://{host}:{port}; logs in {log_dir}")
    _say("Dashboard: /dashboard (`mailsync dashboard-link` prints a sign-in link)")
    _say("Ctrl-C stops them all.")
    return asyncio.run(_supervise(supervisor))


async def _supervise(supervisor: Supervisor) -> int:
    stop = _stop_event()
    watcher = asyncio.create_task(supervisor.watch())
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({watcher, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if watcher.done() and isinstance(watcher.exception(), ChildExited):
            exc = watcher.exception()
            assert isinstance(exc, ChildExited)
            _say(f"{exc}; last lines of its log:\n{exc.child.tail()}")
            return 1
        return 0
    finally:
        watcher.cancel()
        waiter.cancel()
        supervisor.stop_all()


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    return stop


# -- `mailsync demo` ------------------------------------------------------------------


def run_demo(args: argparse.Namespace) -> int:
    if not _port_is_free(args.host, args.port):
        _say(f"port {args.port} is in use: set PORT (or --port) to a free one")
        return 2
    own_state = args.state_dir is None
    state_dir: Path = args.state_dir or Path(tempfile.mkdtemp(prefix="mailsync-demo-"))
    state_dir.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(state_dir / "logs", os.environ)
    try:
        return asyncio.run(_demo(args, state_dir, supervisor))
    except ChildExited as exc:
        _say(f"{exc}; last lines of its log:\n{exc.child.tail()}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        supervisor.stop_all()
        if own_state:
            shutil.rmtree(state_dir, ignore_errors=True)


async def _start_simulator(supervisor: Supervisor, state_dir: Path) -> dict[str, str]:
    env_file = state_dir / "simulator.env"
    env_file.unlink(missing_ok=True)
    supervisor.start(
        ProcessSpec(
            "simulator",
            python_module(
                "app.simulator",
                "--port",
                "0",
                "--state-dir",
                str(state_dir),
                "--env-file",
                str(env_file),
            ),
        )
    )
    await supervisor.wait_until(env_file.exists, what="the simulator", seconds=60)
    env = {}
    for line in env_file.read_text().splitlines():
        key, _, value = line.partition("=")
        env[key] = value.strip("'")
    return env


def _configured(name: str) -> str | None:
    """A setting from the environment or `.env` (where Settings would read it too)."""
    if os.environ.get(name):
        return os.environ[name]
    from dotenv import dotenv_values

    return dotenv_values(".env").get(name) or None


def _demo_env(args: argparse.Namespace, sim_env: dict[str, str]) -> dict[str, str]:
    public = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '') else args.host}:{args.port}"  # noqa: S104
    env = {
        "MAILSYNC_ENV": os.environ.get("MAILSYNC_ENV", "development"),
        "DATABASE_URL": _configured("DATABASE_URL") or DEMO_DATABASE_URL,
        "AUTH_JWT_SECRET": os.environ.get("AUTH_JWT_SECRET") or secrets.token_urlsafe(48),
        "PUBLIC_BASE_URL": public,
        "GOOGLE_PUSH_AUDIENCE": f"{public}/webhooks/google",
        "WORKER_METRICS_PORT": os.environ.get("WORKER_METRICS_PORT") or str(_free_port()),
        "EVENTS_PUBLISHER_PORT": os.environ.get("EVENTS_PUBLISHER_PORT") or str(_free_port()),
        # Short slices: Ctrl-C waits for the running one, and a demo should stop at once.
        "SYNC_SLICE_SECONDS": _configured("SYNC_SLICE_SECONDS") or "5",
        "PYTHONUNBUFFERED": "1",
        **sim_env,
    }
    if env["MAILSYNC_ENV"] not in ("development", "test"):
        # The demo's generated secret and the simulator's clients are for a laptop only.
        env["MAILSYNC_ENV"] = "development"
    return env


async def _prepare_database(database_url: str, owned: bool, user: str) -> None:
    from app.cli import migrate

    if owned:
        await _recreate(database_url)
    await asyncio.to_thread(migrate)
    if not owned:
        await _forget_demo_mailboxes(user)


async def _recreate(database_url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    url = make_url(database_url)
    admin = create_async_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    quoted = str(url.database).replace('"', '""')
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{quoted}" WITH (FORCE)'))
            await conn.execute(text(f'CREATE DATABASE "{quoted}"'))
    finally:
        await admin.dispose()


async def _forget_demo_mailboxes(user: str) -> None:
    """A database that is not the demo's own: replace only the demo user's mailboxes (they
    point at a simulator that is gone)."""
    from app.api.deps import UnitOfWork
    from app.config import get_settings
    from app.db.repositories.mailboxes import MailboxRepository
    from app.sync import mailboxes as service
    from app.sync.runtime import Runtime

    rt = await Runtime.create(get_settings())
    try:
        async with rt.sessions() as session:
            uow = UnitOfWork(session, rt)
            ids = [m.id for m in await MailboxRepository(session).list_for_user(user)]
            if ids:
                await service.disconnect(uow, ids, purge=True)
                await uow.commit()
    finally:
        await rt.close()


async def _demo(args: argparse.Namespace, state_dir: Path, supervisor: Supervisor) -> int:
    from app.config import get_settings
    from app.dashboard.auth import mint_login_token

    started = time.monotonic()
    stop = _stop_event()
    _say("mailsync demo: starting the provider simulator, the API and a worker…")
    sim_env = await _start_simulator(supervisor, state_dir)
    env = _demo_env(args, sim_env)
    owned = _configured("DATABASE_URL") is None
    os.environ.update(env)
    supervisor.env.update(env)
    get_settings.cache_clear()
    settings = get_settings()
    await _prepare_database(settings.database_url, owned, args.user)
    for spec in stack(args.host, args.port, events=settings.events_enabled):
        supervisor.start(spec)

    sim = SimulatorControl(sim_env["GMAIL_BASE_URL"], sim_env["SSL_CERT_FILE"])
    public = env["PUBLIC_BASE_URL"]
    async with httpx.AsyncClient(base_url=public, timeout=30) as api:
        await _wait_ready(supervisor, api)
        outlook, gmail = await asyncio.gather(
            sim.create_outlook(OUTLOOK_EMAIL, args.outlook_messages),
            sim.create_gmail(GMAIL_EMAIL, args.gmail_messages),
        )
        await sim.push_to(f"{public}/webhooks/google", env["GOOGLE_PUSH_AUDIENCE"])
        bearer = _user_token(settings, args.user, hours=SESSION_HOURS)
        outlook_id = await connect(api, bearer, outlook)
        gmail_id = await connect(api, bearer, gmail)

    login = mint_login_token(settings, DEMO_OPERATOR, seconds=SESSION_HOURS * 3600)
    _say()
    _say(f"Dashboard: {public}/dashboard/login?token={login}")
    _say()
    _say(f"  demo user {args.user!r}: Outlook {OUTLOOK_EMAIL} ({args.outlook_messages:,} messages,")
    _say(f"  mailbox {outlook_id}) and Gmail {GMAIL_EMAIL} ({args.gmail_messages:,}, {gmail_id}),")
    _say(f"  connected through POST /mail/connect {time.monotonic() - started:.1f} s after start.")
    _say(f"  Bearer token for {args.user!r} (valid {SESSION_HOURS} h; the link above works once):")
    _say(f"  {bearer}")
    _say(f'  curl -H "Authorization: Bearer <token>" {public}/mail/status')
    _say(
        f"  Metrics: {public}/metrics (API), "
        f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics (worker)"
        + (
            f", http://127.0.0.1:{env['EVENTS_PUBLISHER_PORT']}/metrics (publisher; NATS at "
            f"{settings.nats_url})"
            if settings.events_enabled
            else ""
        )
    )
    _say(f"  Simulator: {sim.base_url} (CA {sim_env['SSL_CERT_FILE']})")
    _say(f"  Logs: {supervisor.log_dir}")
    _say("  Ctrl-C stops everything.")
    _say()

    tasks = [asyncio.create_task(supervisor.watch()), asyncio.create_task(stop.wait())]
    if args.trickle_interval > 0:
        trickle = Trickle(sim, outlook, gmail)
        tasks.append(asyncio.create_task(trickle.run(args.trickle_interval, args.trickle_changes)))
    try:
        done, _ = await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sim.aclose()
    _say("mailsync demo: stopping…")
    return 0


async def _wait_ready(supervisor: Supervisor, api: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + 60
    while True:
        supervisor.check()
        with contextlib.suppress(httpx.HTTPError):
            if (await api.get("/readyz")).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError("the API did not become ready within 60 s")
        await asyncio.sleep(0.1)


def _user_token(settings: Settings, user: str, *, hours: float) -> str:
    """An HS256 bearer token for the demo user (no operator role: their own mail only)."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": user, "iat": now, "exp": now + int(hours * 3600)}
    if settings.auth_jwt_audience:
        claims["aud"] = settings.auth_jwt_audience
    if settings.auth_jwt_issuer:
        claims["iss"] = settings.auth_jwt_issuer
    return jwt.encode(claims, settings.auth_jwt_secret, algorithm="HS256")
