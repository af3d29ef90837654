"""`mailsync api | worker | migrate | simulator`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ALEMBIC_INI = Path(__file__).parent / "db" / "alembic.ini"


def migrate() -> int:
    from alembic import command
    from alembic.config import Config

    command.upgrade(Config(str(ALEMBIC_INI)), "head")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailsync")
    sub = parser.add_subparsers(dest="command", required=True)
    api = sub.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    api.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    api.add_argument("--migrate", action="store_true", help="run migrations first")
    sub.add_parser("worker", help="run an ARQ sync worker")
    sub.add_parser("migrate", help="apply database migrations (safe to run twice)")
    sim = sub.add_parser("simulator", help="serve the Graph/Gmail simulator over HTTPS")
    sim.add_argument("rest", nargs=argparse.REMAINDER)
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
        # arq's own CLI handles signals and graceful shutdown.
        return subprocess.call([sys.executable, "-m", "arq", "app.sync.worker.WorkerSettings"])  # noqa: S603
    if args.command == "simulator":
        from app.simulator.__main__ import main as simulator_main

        simulator_main(args.rest)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
