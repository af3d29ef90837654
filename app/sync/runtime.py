"""The long-lived things a worker (or the API) shares: engine, sessions, HTTP, Redis, cipher."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field

import httpx
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.crypto import TokenCipher
from app.db.session import make_engine, make_sessionmaker
from app.providers.base import MailProvider, ProviderName
from app.providers.http_client import AsyncioTransport, ProviderHttpClient
from app.providers.registry import build_provider
from app.sync.activity import Activity


def make_http_client(settings: Settings) -> ProviderHttpClient:
    """One pooled client for every provider call; trusts SSL_CERT_FILE when it is set."""
    # httpx reads SSL_CERT_FILE itself (trust_env); the explicit context keeps that true
    # for clients created before the variable was exported, e.g. in tests.
    cafile = os.environ.get("SSL_CERT_FILE")
    context = ssl.create_default_context(cafile=cafile) if cafile else httpx.create_ssl_context()
    return ProviderHttpClient(
        transport=AsyncioTransport(
            ssl_context=context,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=100),
        ),
        timeout=httpx.Timeout(30.0, connect=10.0),
    )


def lazy_redis(url: str) -> ArqRedis:
    """An ARQ client that connects on first use: a process starts (and reports not ready)
    while Redis is down, instead of failing at start-up."""
    return ArqRedis(
        ConnectionPool.from_url(url, socket_connect_timeout=2, socket_timeout=5),
        # Never wait forever on a half-open connection: a request must answer.
        health_check_interval=30,
    )


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    http: httpx.AsyncClient
    redis: ArqRedis
    cipher: TokenCipher
    # Recent activity for the dashboard; a process starts its flushing (`activity.start()`).
    activity: Activity
    _providers: dict[str, MailProvider] = field(default_factory=dict)

    @classmethod
    async def create(cls, settings: Settings, *, redis: ArqRedis | None = None) -> Runtime:
        engine = make_engine(settings.database_url)
        redis = redis or lazy_redis(settings.redis_url)
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine, events=settings.events_enabled),
            http=make_http_client(settings),
            redis=redis,
            cipher=TokenCipher(settings.encryption_keys),
            activity=Activity(redis),
        )

    def provider(self, name: str) -> MailProvider:
        if name not in self._providers:
            self._providers[name] = build_provider(
                _as_provider_name(name), self.settings, self.http
            )
        return self._providers[name]

    async def close(self, *, close_redis: bool = True) -> None:
        await self.activity.stop()
        for provider in self._providers.values():
            # Providers with connections of their own (MSAL's) release them here.
            closer = getattr(provider, "aclose", None)
            if closer is not None:
                await closer()
        await self.http.aclose()
        await self.engine.dispose()
        if close_redis:
            await self.redis.aclose()


def _as_provider_name(name: str) -> ProviderName:
    if name == "google":
        return "google"
    if name == "microsoft":
        return "microsoft"
    raise ValueError(f"unknown provider {name!r}")
