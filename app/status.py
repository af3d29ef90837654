"""`mailsync status [--watch]`: the mailboxes and their progress, in a terminal.

Reads PostgreSQL through the dashboard's repository (the same rows, the same order:
attention first), so an operator on a shell sees what the dashboard shows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from datetime import UTC, datetime

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import get_settings
from app.dashboard.views import PROVIDERS, STATUS_ORDER, MailboxPage, mailbox_page
from app.db.repositories.dashboard import MailboxFilter
from app.db.session import make_engine, make_sessionmaker
from app.sync.states import MailboxStatus

STATUS_STYLE: dict[str, str] = {
    MailboxStatus.CONNECTED: "green",
    MailboxStatus.SYNCING: "cyan",
    MailboxStatus.PENDING: "cyan",
    MailboxStatus.ERROR: "bold red",
    MailboxStatus.AUTH_EXPIRED: "bold red",
    MailboxStatus.DISCONNECTED: "dim",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    parser.add_argument("--status", choices=STATUS_ORDER, default=None)
    parser.add_argument("--provider", choices=PROVIDERS, default=None)
    parser.add_argument("--user", default=None, help="one user's mailboxes")
    parser.add_argument("--search", default=None, help="part of an address")
    parser.add_argument("--page", type=int, default=1, help="50 mailboxes a page")


def _ago(value: datetime | None) -> str:
    if value is None:
        return "never"
    seconds = int((datetime.now(UTC) - value).total_seconds())
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86400:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def render(data: MailboxPage) -> Group:
    table = Table(expand=True, header_style="bold", pad_edge=False)
    table.add_column("address", overflow="fold", ratio=3)
    table.add_column("provider")
    table.add_column("user", overflow="fold", ratio=1)
    table.add_column("status")
    table.add_column("phase")
    table.add_column("progress", min_width=24, ratio=2)
    table.add_column("messages", justify="right")
    table.add_column("last sync", justify="right")
    table.add_column("last error", overflow="fold", ratio=3)
    for m in data.items:
        row = m.row
        progress = Table.grid(padding=(0, 1))
        progress.add_column(ratio=1)
        progress.add_column(justify="right", width=4)
        progress.add_row(ProgressBar(total=100, completed=m.percent), f"{m.percent}%")
        total = f" / {row.messages_total_estimate:,}" if row.messages_total_estimate else ""
        table.add_row(
            row.email or "(unknown yet)",
            row.provider,
            row.user_id,
            Text(row.status, style=STATUS_STYLE.get(row.status, "")),
            row.phase or "",
            progress,
            f"{row.messages_synced:,}{total}",
            _ago(row.last_synced_at),
            Text(row.last_error or "", style="red"),
        )
    shown = f"{len(data.items)} of {data.total:,} mailboxes"
    if data.pages > 1:
        shown += f" (page {data.page} of {data.pages})"
    return Group(table, Text(shown, style="dim"))


async def _fetch(args: argparse.Namespace, engine: AsyncEngine) -> MailboxPage:
    async with make_sessionmaker(engine)() as session:
        flt = MailboxFilter(
            status=args.status, provider=args.provider, user_id=args.user, search=args.search
        )
        return await mailbox_page(session, flt, args.page)


def run(args: argparse.Namespace, console: Console | None = None) -> int:
    console = console or Console()

    async def show() -> None:
        engine = make_engine(get_settings().database_url, pool_size=1)
        try:
            if not args.watch:
                console.print(render(await _fetch(args, engine)))
                return
            with Live(
                render(await _fetch(args, engine)), console=console, auto_refresh=False
            ) as live:
                while True:
                    await asyncio.sleep(args.interval)
                    live.update(render(await _fetch(args, engine)), refresh=True)
        finally:
            await engine.dispose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(show())
    return 0
