"""`mailsync api | worker | publisher | migrate | simulator | openapi | events | run | demo |
status | dashboard-link | rotate-keys`."""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

ALEMBIC_INI = Path(__file__).parent / "db" / "alembic.ini"


def ensure_database(database_url: str) -> None:
    """Create the database named in DATABASE_URL when the server does not have it yet."""
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    url = make_url(database_url)
    name = url.database
    if not name or not url.drivername.startswith("postgresql"):
        return

    async def create() -> None:
        admin = create_async_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        try:
            async with admin.connect() as conn:
                exists = await conn.scalar(
                    text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
                )
                if not exists:
                    quoted = name.replace('"', '""')
                    await conn.execute(text(f'CREATE DATABASE "{quoted}"'))
                    print(f"created database {name}", file=sys.stderr)
        finally:
            await admin.dispose()

    asyncio.run(create())


def migrate() -> int:
    from alembic import command
    from alembic.config import Config

    from app.config import get_settings

    ensure_database(get_settings().database_url)
    command.upgrade(Config(str(ALEMBIC_INI)), "head")
    return 0


def openapi_document() -> str:
    """The API's OpenAPI document as committed in openapi.json."""
    import json

    from app.config import Settings
    from app.main import create_app

    settings = Settings(_env_file=None, MAILSYNC_ENV="development")
    return json.dumps(create_app(settings).openapi(), indent=2, sort_keys=True) + "\n"


def rotate_keys(batch_size: int) -> int:
    """Re-encrypt every stored secret under the first key of TOKEN_ENCRYPTION_KEYS."""
    import asyncio

    from app.config import get_settings
    from app.crypto import TokenCipher
    from app.db.session import make_engine, make_sessionmaker
    from app.sync.key_rotation import KeyRotation

    settings = get_settings()
    if not settings.encryption_keys:
        print(
            "TOKEN_ENCRYPTION_KEYS is empty: there is no key to rotate to "
            "(put the new key first, keep the old ones after it)",
            file=sys.stderr,
        )
        return 2

    async def run() -> int:
        engine = make_engine(settings.database_url, pool_size=2)
        try:
            rotation = KeyRotation(
                make_sessionmaker(engine),
                TokenCipher(settings.encryption_keys),
                batch_size=batch_size,
                progress=lambda line: print(line, flush=True),
            )
            result = await rotation.run()
        finally:
            await engine.dispose()
        for column, key in result.failed:
            print(f"cannot decrypt {column} of row {key} with any configured key", file=sys.stderr)
        if result.failed:
            print(
                f"{len(result.failed)} value(s) could not be decrypted and were left as they "
                "are: keep the key that encrypted them, or reconnect those mailboxes",
                file=sys.stderr,
            )
            return 1
        if result.behind:
            print(
                f"{result.behind} value(s) are still under an older key: some process is "
                "writing with an old first key; restart every API and worker with the new "
                "TOKEN_ENCRYPTION_KEYS and run rotate-keys again",
                file=sys.stderr,
            )
            return 2
        print("every stored secret is under the first key: the other keys can be removed")
        return 0

    return asyncio.run(run())


def events_command(args: argparse.Namespace) -> int:
    if args.events_command == "schema":
        from app.events.contract import schema_document

        current = schema_document()
        if args.check:
            if not args.path.exists() or args.path.read_text() != current:
                print(f"{args.path} is out of date: run `mailsync events schema`", file=sys.stderr)
                return 1
            return 0
        args.path.write_text(current)
        return 0
    if args.events_command == "resnapshot":
        import asyncio

        from app.config import get_settings
        from app.events.snapshot import resnapshot_from_cli

        return asyncio.run(resnapshot_from_cli(get_settings(), args.mailbox, wait=args.wait))
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailsync")
    sub = parser.add_subparsers(dest="command", required=True)
    api = sub.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    api.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    api.add_argument("--migrate", action="store_true", help="run migrations first")
    sub.add_parser("worker", help="run an ARQ sync worker")
    sub.add_parser("migrate", help="apply database migrations (safe to run twice)")
    spec = sub.add_parser("openapi", help="write openapi.json (or --check it is current)")
    spec.add_argument("--check", action="store_true")
    spec.add_argument("--path", type=Path, default=Path("openapi.json"))
    rotate = sub.add_parser(
        "rotate-keys",
        help="re-encrypt every stored secret under the first key of TOKEN_ENCRYPTION_KEYS",
    )
    rotate.add_argument("--batch-size", type=int, default=500)
    from app.simulator.__main__ import add_arguments as simulator_arguments

    simulator_arguments(
        sub.add_parser("simulator", help="serve the Graph/Gmail simulator over HTTPS")
    )
    sub.add_parser(
        "run",
        help="migrate, then the API and a worker; the live demo when no provider is configured",
    )
    from app.demo.options import add_arguments as demo_arguments

    demo_arguments(sub.add_parser("demo", help="the live demo: simulator, API, worker, dashboard"))
    link = sub.add_parser(
        "dashboard-link", help="print a one-time dashboard login link (needs AUTH_JWT_SECRET)"
    )
    link.add_argument("--subject", default="operator", help="who signs in (the JWT sub)")
    link.add_argument("--minutes", type=int, default=60, help="how long the link is valid")
    from app.status import add_arguments as status_arguments

    status_arguments(sub.add_parser("status", help="mailboxes and their progress, in the terminal"))
    pub = sub.add_parser("publisher", help="publish the outbox to NATS JetStream")
    pub.add_argument("--host", default=os.environ.get("EVENTS_PUBLISHER_HOST", "0.0.0.0"))  # noqa: S104
    pub.add_argument("--port", type=int, default=None, help="health/metrics port (0: none)")
    events = sub.add_parser("events", help="event tools")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    snap = events_sub.add_parser(
        "resnapshot", help="re-emit every stored message of a mailbox as email.snapshot"
    )
    snap.add_argument("--mailbox", required=True, type=uuid.UUID)
    snap.add_argument("--wait", action="store_true", help="follow the walk until it completes")
    schema = events_sub.add_parser(
        "schema", help="write events.schema.json (or --check it is current)"
    )
    schema.add_argument("--check", action="store_true")
    schema.add_argument("--path", type=Path, default=Path("events.schema.json"))
    args = parser.parse_args(argv)

    if args.command == "migrate":
        return migrate()
    if args.command == "api":
        if args.migrate:
            migrate()
        import uvicorn

        uvicorn.run("app.main:app", host=args.host, port=args.port, proxy_headers=True)
        return 0
    if args.command == "worker":
        # Replace this process with arq's own CLI: signals (SIGTERM from a supervisor, or as
        # PID 1 in a container) reach the worker itself, which lets running slices commit,
        # and no parent is left to orphan it.
        argv = [sys.executable, "-m", "arq", "app.sync.worker.WorkerSettings"]
        os.execv(sys.executable, argv)  # noqa: S606
    if args.command == "openapi":
        current = openapi_document()
        if args.check:
            if not args.path.exists() or args.path.read_text() != current:
                print(f"{args.path} is out of date: run `mailsync openapi`", file=sys.stderr)
                return 1
            return 0
        args.path.write_text(current)
        return 0
    if args.command == "rotate-keys":
        return rotate_keys(max(1, args.batch_size))
    if args.command == "publisher":
        import asyncio

        from app.config import get_settings
        from app.events import service

        settings = get_settings()
        port = settings.events_publisher_port if args.port is None else args.port
        return asyncio.run(service.run(settings, host=args.host, port=port))
    if args.command == "events":
        return events_command(args)
    if args.command == "simulator":
        from app.simulator.__main__ import run as run_simulator

        run_simulator(args)
        return 0
    if args.command in ("run", "demo"):
        from app.demo.main import run_demo, run_stack

        return run_stack() if args.command == "run" else run_demo(args)
    if args.command == "dashboard-link":
        from app.config import get_settings
        from app.dashboard.auth import mint_login_token

        settings = get_settings()
        if not settings.auth_jwt_secret:
            print(
                "dashboard-link needs AUTH_JWT_SECRET (with AUTH_JWKS_URL only, sign in",
                file=sys.stderr,
            )
            print("through a proxy that sends the operator's bearer token)", file=sys.stderr)
            return 2
        token = mint_login_token(settings, args.subject, seconds=args.minutes * 60)
        print(f"{settings.public_base_url.rstrip('/')}/dashboard/login?token={token}")
        return 0
    if args.command == "status":
        from app.status import run as run_status

        return run_status(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
