"""The provider HTTP client: bodies, keep-alive, a server that hangs up, timeouts, TLS, and
responses freed without waiting for the garbage collector."""

from __future__ import annotations

import asyncio
import gc
import ssl
import weakref
from collections.abc import AsyncIterator, Callable

import certifi
import httpx
import pytest

from app.config import Settings
from app.providers.http_client import AsyncioTransport, ProviderHttpClient
from app.simulator.server import SimulatorServer
from app.sync.runtime import make_http_client

LIMITS = httpx.Limits(max_connections=10, max_keepalive_connections=5)


class _Server:
    """A bare HTTP/1.1 server: one canned response per request, connections counted."""

    def __init__(self, body: bytes, *, close_after_response: bool = False) -> None:
        self.body = body
        self.close_after_response = close_after_response
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.body)}\r\n\r\n"
                writer.write(head.encode() + self.body)
                await writer.drain()
                if self.close_after_response:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[_Server], asyncio.Future[str]]]:
    servers: list[asyncio.Server] = []

    async def start(server: _Server) -> str:
        server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        servers.append(server.server)
        return server.url

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()


def _client(timeout: float = 5.0) -> httpx.AsyncClient:
    transport = AsyncioTransport(ssl_context=ssl.create_default_context(), limits=LIMITS)
    return ProviderHttpClient(transport=transport, timeout=timeout)


async def test_large_bodies_arrive_whole_over_one_kept_alive_connection(serve: object) -> None:
    body = bytes(range(256)) * (12 * 1024)  # 3 MiB, several times the read size
    server = _Server(body)
    url = await serve(server)  # type: ignore[operator]
    async with _client() as client:
        for _ in range(3):
            response = await client.get(url)
            assert response.status_code == 200 and response.content == body
    assert server.connections == 1


async def test_a_read_response_is_freed_without_the_cycle_collector(serve: object) -> None:
    body = b"x" * 100_000
    url = await serve(_Server(body))  # type: ignore[operator]
    async with _client() as client:
        gc.disable()
        try:
            response = await client.get(url)
            assert response.content == body and response.elapsed.total_seconds() > 0
            freed = weakref.ref(response)
            del response
            # Reference counting alone frees it: nothing waits for a full collection.
            assert freed() is None
        finally:
            gc.enable()


async def test_a_connection_the_server_closed_is_not_reused(serve: object) -> None:
    server = _Server(b"ok", close_after_response=True)
    url = await serve(server)  # type: ignore[operator]
    async with _client() as client:
        for _ in range(3):
            assert (await client.get(url)).content == b"ok"
            await asyncio.sleep(0.05)  # the server's FIN reaches the idle pooled connection
    assert server.connections == 3


async def test_a_server_that_never_answers_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # holds the connection open and says nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with _client(timeout=0.2) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(f"http://127.0.0.1:{port}/")
    finally:
        server.close()


async def test_nobody_listening_is_a_connect_error() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with _client() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")


async def test_https_is_verified_against_the_trusted_authority(
    simulator: SimulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{simulator.base_url}/_sim/counters"
    monkeypatch.setenv("SSL_CERT_FILE", str(simulator.ca_path))
    async with make_http_client(Settings()) as client:
        assert isinstance(client._transport, AsyncioTransport)
        response = await client.get(url)
        assert response.status_code == 200 and "totals" in response.json()
    # Against the public authorities only, the simulator's certificate fails the handshake.
    public = ssl.create_default_context(cafile=certifi.where())
    async with httpx.AsyncClient(
        transport=AsyncioTransport(ssl_context=public, limits=LIMITS)
    ) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(url)
