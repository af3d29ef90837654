"""A small HTTP/1.1 load generator: keep-alive connections on asyncio streams, one request in
flight per connection, latencies recorded per request.

httpx spends ~0.3 ms of CPU per request, more than the endpoints measured here; on a
two-core machine it would be the bottleneck of both runs and hide the ratio. This client
sends pre-encoded requests and reads just enough of each response to find its end.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


def encode_post(host: str, path: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nUser-Agent: mailsync-bench\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Result:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> _Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
                break
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


async def _open_all(host: str, port: int, connections: int) -> list[_Connection]:
    return await asyncio.gather(*(_Connection.open(host, port) for _ in range(connections)))


async def closed_loop(
    host: str, port: int, requests: list[bytes], *, connections: int, seconds: float
) -> Result:
    """Every connection sends its next request as soon as the previous answer arrived:
    the most the server answers, and how long each answer took at that load."""
    conns = await _open_all(host, port, connections)
    result = Result()
    deadline = time.perf_counter() + seconds
    counter = 0

    async def run(conn: _Connection) -> None:
        nonlocal counter
        while time.perf_counter() < deadline:
            raw = requests[counter % len(requests)]
            counter += 1
            started = time.perf_counter()
            status = await conn.request(raw)
            result.latencies.append(time.perf_counter() - started)
            result.statuses[status] = result.statuses.get(status, 0) + 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(run(c) for c in conns))
    finally:
        result.seconds = time.perf_counter() - started
        for conn in conns:
            conn.close()
    return result


async def open_loop(
    host: str, port: int, requests: list[bytes], *, connections: int, rate: float, seconds: float
) -> Result:
    """Requests are due at a fixed rate whatever the answers do; a request's latency counts
    from when it was due, so a stall is charged to every request it delayed (no coordinated
    omission)."""
    conns = await _open_all(host, port, connections)
    result = Result()
    total = int(rate * seconds)
    start = time.perf_counter() + 0.05
    next_index = 0

    async def run(conn: _Connection) -> None:
        nonlocal next_index
        while next_index < total:
            index = next_index
            next_index += 1
            due = start + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            status = await conn.request(requests[index % len(requests)])
            result.latencies.append(time.perf_counter() - due)
            result.statuses[status] = result.statuses.get(status, 0) + 1

    try:
        await asyncio.gather(*(run(c) for c in conns))
    finally:
        result.seconds = time.perf_counter() - start
        for conn in conns:
            conn.close()
    return result
