"""The processes `make run` starts, and how they are stopped: all of them, and only them.

One list (`stack`) says what runs; adding the event publisher is one entry. Each child
gets a process group of its own, so a signal reaches whatever it starts in turn, and asks
the kernel to be sent SIGTERM should the supervisor itself die (no orphan survives a
`kill -9` of the supervisor either). Logs go to one file per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    # Resolved here, in the parent: a child between fork and exec should only call it.
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):  # not Linux: the process group alone stops children
        return None


_PRCTL = _load_prctl()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    name: str
    argv: list[str]
    # Environment on top of the supervisor's (e.g. the worker's metrics port).
    env: dict[str, str] = field(default_factory=dict)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def stack(host: str, port: int, *, events: bool = True) -> list[ProcessSpec]:
    """The service itself, in start order (stopped in reverse): the API, a worker and, when
    events are on, an event publisher (it waits for NATS if NATS is not up yet)."""
    processes = [
        ProcessSpec(
            "api",
            python_module(
                "uvicorn",
                "app.main:app",
                "--host",
                host,
                "--port",
                str(port),
                "--proxy-headers",
                "--no-access-log",
                "--timeout-graceful-shutdown",
                "5",
            ),
        ),
        ProcessSpec("worker", python_module("arq", "app.sync.worker.WorkerSettings")),
    ]
    if events:
        processes.append(ProcessSpec("publisher", python_module("app.cli", "publisher")))
    return processes


@dataclass
class Child:
    spec: ProcessSpec
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ChildExited(Exception):
    def __init__(self, child: Child) -> None:
        super().__init__(f"{child.spec.name} exited with status {child.process.returncode}")
        self.child = child


class Supervisor:
    def __init__(self, log_dir: Path, env: Mapping[str, str]) -> None:
        self.log_dir = log_dir
        self.env = dict(env)
        self.children: list[Child] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, spec: ProcessSpec) -> Child:
        log_path = self.log_dir / f"{spec.name}.log"
        with log_path.open("ab") as out:
            process = subprocess.Popen(  # noqa: S603 - our own modules, no shell
                spec.argv,
                env={**self.env, **spec.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child = Child(spec, process, log_path)
        self.children.append(child)
        log.debug("started %s (pid %d)", spec.name, process.pid)
        return child

    def check(self) -> None:
        """Raise ChildExited when any child has stopped on its own."""
        for child in self.children:
            if child.process.poll() is not None:
                raise ChildExited(child)

    async def watch(self, interval: float = 0.5) -> None:
        while True:
            self.check()
            await asyncio.sleep(interval)

    async def wait_until(
        self, ready: Callable[[], bool], *, what: str, seconds: float = 60.0
    ) -> None:
        deadline = time.monotonic() + seconds
        while not ready():
            self.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready after {seconds:.0f} s")
            await asyncio.sleep(0.1)

    def stop_all(self, grace: float = 20.0) -> list[int]:
        """SIGTERM every child's process group, wait, then SIGKILL what is left.
        Returns the pids it started (all gone when this returns)."""
        for child in reversed(self.children):
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in reversed(self.children):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", child.spec.name, grace)
        for child in self.children:
            # Whatever a child started and left behind in its group goes too.
            _signal_group(child, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=5)
        return [c.pid for c in self.children]


def _signal_group(child: Child, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)
