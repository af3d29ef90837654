"""Who used the machine's CPU during a benchmark: named processes, PostgreSQL, NATS.

The machine is shared: PostgreSQL backends serving other databases are left out (those alive
when the run ends, from pg_stat_activity); its background processes (WAL writer,
checkpointer, …) are counted, since a benchmark's writes are what keeps them busy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import asyncpg

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (0 for a process that has just exited)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def pids_named(name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


async def foreign_backends(database_url: str) -> set[int]:
    """PostgreSQL client backends serving other databases than the benchmark's."""
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND datname IS DISTINCT FROM current_database()"
        )
        return {int(r["pid"]) for r in rows}
    finally:
        await conn.close()


@dataclass
class CpuSample:
    named: dict[str, float]
    postgres: dict[int, float]
    nats: dict[int, float]
    busy: float
    total: float

    @classmethod
    def take(cls, processes: dict[str, int | None]) -> CpuSample:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = ticks[3] + ticks[4]  # idle + iowait
        return cls(
            named={name: cpu_seconds(pid) for name, pid in processes.items() if pid},
            postgres={pid: cpu_seconds(pid) for pid in pids_named("postgres")},
            nats={pid: cpu_seconds(pid) for pid in pids_named("nats-server")},
            busy=(sum(ticks) - idle) / _TICK,
            total=sum(ticks) / _TICK,
        )

    def since(self, before: CpuSample, foreign: set[int] | None = None) -> dict[str, float]:
        """CPU seconds per process (and `postgres`, `nats`), and the machine's `utilization`."""
        foreign = foreign or set()
        out = {name: t - before.named.get(name, 0.0) for name, t in self.named.items()}
        out["postgres"] = sum(
            t - before.postgres.get(pid, 0.0)
            for pid, t in self.postgres.items()
            if pid not in foreign
        )
        out["nats"] = sum(t - before.nats.get(pid, 0.0) for pid, t in self.nats.items())
        out["utilization"] = (self.busy - before.busy) / max(self.total - before.total, 1e-9)
        return out
