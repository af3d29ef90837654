"""The simulator's own outbound HTTP (Graph's validation calls and notifications, Pub/Sub
pushes): clients share one TLS context, built when the simulator starts.

Building a default context loads the CA bundle: ~50 ms of CPU on this event loop, which
would stall every request the simulator is serving at that moment. Microsoft's and
Google's servers have no such pause, so the simulator must not either.
"""

from __future__ import annotations

import ssl
from functools import cache

import httpx


@cache
def tls_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


def client(*, timeout: float = 5.0, follow_redirects: bool = False) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        verify=tls_context(), timeout=timeout, follow_redirects=follow_redirects
    )
