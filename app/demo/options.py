"""The demo's command-line flags (kept apart so `mailsync --help` imports nothing heavy)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEMO_USER = "demo-user"
DEMO_OPERATOR = "demo-operator"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default=os.environ.get("HOST", "127.0.0.1"), help="the API's address"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PORT", "8000")),
        help="the API's port (PORT; default 8000)",
    )
    parser.add_argument("--outlook-messages", type=int, default=20_000)
    parser.add_argument("--gmail-messages", type=int, default=5_000)
    parser.add_argument(
        "--trickle-interval",
        type=float,
        default=3.0,
        help="seconds between simulated mail changes (0: none)",
    )
    parser.add_argument(
        "--trickle-changes",
        type=int,
        default=0,
        help="stop the trickle after this many changes (0: until Ctrl-C)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the simulator's CA and the processes' logs go (default: a temporary directory)",
    )
    parser.add_argument("--user", default=DEMO_USER, help="the demo user's id (JWT sub)")
