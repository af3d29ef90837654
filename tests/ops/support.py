"""Running mailsync's own commands as processes, as an operator would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

from app.config import Settings

ROOT = Path(__file__).resolve().parents[2]
MAILSYNC = [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a mailsync process configured like `settings`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MICROSOFT_", "GOOGLE_", "GMAIL_", "GRAPH_"))
    }
    for name, field in Settings.model_fields.items():
        if field.alias:
            env[field.alias] = str(getattr(settings, name))
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, their children, …), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def run(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [*MAILSYNC, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def marked_env(env: dict[str, str]) -> tuple[dict[str, str], str]:
    """`env` with a marker every process started from it inherits (children and orphans)."""
    marker = uuid.uuid4().hex
    return {**env, "MAILSYNC_TEST_MARKER": marker}, marker


def survivors(marker: str) -> list[int]:
    """Every live process carrying the marker: nothing a test started may outlive it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"MAILSYNC_TEST_MARKER={marker}".encode() in environ and alive(int(entry.name)):
            found.append(int(entry.name))
    return found
