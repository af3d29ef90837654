"""Per-mailbox provider limits shared by every worker, kept in Redis.

One Lua script admits a request only when the mailbox is not paused (a Retry-After we were
given), a concurrent-request slot is free (Graph: 4 per mailbox across all clients) and the
quota bucket holds enough units (Gmail: 250 units per user per second). Slots are leases
with an expiry, renewed by their holder while its request is in flight, so a slot outlives
a worker that died holding it by at most `slot_ttl` (the lease period: a dead worker's
mailbox is resumed within about that long, and Graph has long finished a request by then).

Two things keep the slot count honest beyond our own requests:

- A request we stop waiting for (a slice ends, a job is cancelled, a worker shuts down) is
  still being worked on by the provider, which counts it against the mailbox until it ends.
  Its slot is therefore not given back on cancellation: it stays taken until the request's
  own timeout would have ended it. (Callers that can let the request finish in the
  background, as the Graph client does, give the slot back when it really ends.)
- The provider's limit is shared with every other client of the mailbox (Outlook, phones,
  other apps), so a concurrency refusal can come while we use fewer slots than allowed:
  `tighten` lowers this mailbox's limit by one for a while, down to one.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from app.providers.base import ProviderLimits, ThrottledError

# KEYS: pause, slots (zset holder -> expiry ms), bucket (hash tokens, ts), cap (tightened limit)
# ARGV: now_ms, holder, slot_ttl_ms, max_concurrency (0 = none), rate (units/s, 0 = none),
#       capacity, cost
# Returns 0 when admitted, else the number of milliseconds to wait before trying again.
_ADMIT = """
local now = tonumber(ARGV[1])
local pause_ttl = redis.call('PTTL', KEYS[1])
if pause_ttl > 0 then return pause_ttl end
local max_conc = tonumber(ARGV[4])
if max_conc > 0 then
  local cap = tonumber(redis.call('GET', KEYS[4]))
  if cap and cap < max_conc then max_conc = cap end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= max_conc then
    return -1
  end
end
local rate = tonumber(ARGV[5])
local cost = tonumber(ARGV[7])
if rate > 0 then
  local capacity = tonumber(ARGV[6])
  local state = redis.call('HMGET', KEYS[3], 'tokens', 'ts')
  local tokens = tonumber(state[1]) or capacity
  local ts = tonumber(state[2]) or now
  tokens = math.min(capacity, tokens + (now - ts) * rate / 1000.0)
  if tokens < cost then
    redis.call('HSET', KEYS[3], 'tokens', tokens, 'ts', now)
    redis.call('PEXPIRE', KEYS[3], 60000)
    return math.max(1, math.ceil((cost - tokens) * 1000.0 / rate))
  end
  redis.call('HSET', KEYS[3], 'tokens', tokens - cost, 'ts', now)
  redis.call('PEXPIRE', KEYS[3], 60000)
end
if max_conc > 0 then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]) * 2)
end
return 0
"""

# KEYS: cap; ARGV: max_concurrency, window_ms. One slot fewer than now (at least one),
# for `window_ms` after the latest refusal.
_TIGHTEN = """
local cap = tonumber(redis.call('GET', KEYS[1])) or tonumber(ARGV[1])
cap = math.max(1, cap - 1)
redis.call('SET', KEYS[1], cap, 'PX', tonumber(ARGV[2]))
return cap
"""

# KEYS: slots; ARGV: holder, until_ms. An abandoned request's slot lapses then rather than
# at the admission's crash-safety expiry (only if the slot is still there to keep).
_HOLD = """
return redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[2]), ARGV[1])
"""


# KEYS: bucket; ARGV: units, capacity. Units back into the bucket, never above capacity.
_REFUND = """
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
if not tokens then return 0 end
redis.call('HSET', KEYS[1], 'tokens', math.min(tonumber(ARGV[2]), tokens + tonumber(ARGV[1])))
return 1
"""


class RedisRateGate:
    """A `RateGate` (app.providers.base) for one mailbox, shared through Redis."""

    def __init__(
        self,
        redis: Redis,
        mailbox_key: str,
        limits: ProviderLimits,
        *,
        slot_ttl_seconds: float = 15.0,
        # A bucket of one second's worth of units: bursts up to the documented per-second
        # rate, a moving average at the rate.
        burst_seconds: float = 1.0,
        # How long a request can still be running at the provider after we stopped waiting
        # for it: the provider HTTP client's timeout (app.sync.runtime).
        request_timeout_seconds: float = 30.0,
        # How long a concurrency refusal keeps the mailbox's limit lowered.
        tighten_seconds: float = 60.0,
        on_pause: Callable[[float], None] | None = None,
        # A person waiting for the answer: refuse (ThrottledError) rather than wait longer.
        max_wait_seconds: float | None = None,
    ) -> None:
        self._redis = redis
        # Told of every Retry-After (metrics, the dashboard's throttling figure).
        self._on_pause = on_pause
        self._keys = [
            f"gate:{mailbox_key}:pause",
            f"gate:{mailbox_key}:slots",
            f"gate:{mailbox_key}:bucket",
            f"gate:{mailbox_key}:cap",
        ]
        self._limits = limits
        self._slot_ttl_ms = int(slot_ttl_seconds * 1000)
        self._request_timeout_ms = int(request_timeout_seconds * 1000)
        self._tighten_ms = int(tighten_seconds * 1000)
        rate = limits.units_per_second or 0.0
        self._rate = rate
        self._capacity = rate * burst_seconds
        self._script = redis.register_script(_ADMIT)
        self._tighten_script = redis.register_script(_TIGHTEN)
        self._hold_script = redis.register_script(_HOLD)
        self._refund_script = redis.register_script(_REFUND)
        self._max_wait = max_wait_seconds

    async def _admit(self, holder: str, cost: int) -> int:
        now_ms = int(time.time() * 1000)
        # A request dearer than the whole bucket could never pass; let it through at capacity.
        cost = min(cost, int(self._capacity)) if self._capacity else cost
        wait = await self._script(
            keys=self._keys,
            args=[
                now_ms,
                holder,
                self._slot_ttl_ms,
                self._limits.max_concurrency or 0,
                self._rate,
                self._capacity,
                cost,
            ],
        )
        return int(wait)

    @asynccontextmanager
    async def request(self, cost: int = 1) -> AsyncIterator[None]:
        holder = uuid.uuid4().hex
        deadline = None if self._max_wait is None else time.monotonic() + self._max_wait
        while True:
            wait_ms = await self._admit(holder, cost)
            if wait_ms == 0:
                break
            if deadline is not None and time.monotonic() + max(wait_ms, 0) / 1000 > deadline:
                raise ThrottledError(
                    "the provider's limit for this mailbox is spent for now",
                    retry_after=max(wait_ms / 1000, 1.0),
                )
            if wait_ms < 0:
                # All slots busy: poll briefly with jitter; slots free in milliseconds.
                await asyncio.sleep(random.uniform(0.005, 0.025))
            else:
                await asyncio.sleep(wait_ms / 1000 + random.uniform(0, 0.005))
        if not self._limits.max_concurrency:
            yield
            return
        admitted_ms = int(time.time() * 1000)
        renewal = asyncio.create_task(self._renew(holder))
        try:
            yield
        except asyncio.CancelledError:
            await self._stop(renewal)
            # Whoever stopped waiting, the provider has not: the slot stays taken until the
            # request could still be running, so no extra request slips in.
            await self._hold_script(
                keys=[self._keys[1]], args=[holder, admitted_ms + self._request_timeout_ms]
            )
            raise
        except BaseException:
            await self._stop(renewal)
            await self._redis.zrem(self._keys[1], holder)
            raise
        else:
            await self._stop(renewal)
            await self._redis.zrem(self._keys[1], holder)

    @staticmethod
    async def _stop(renewal: asyncio.Task[None]) -> None:
        renewal.cancel()
        await asyncio.gather(renewal, return_exceptions=True)

    async def _renew(self, holder: str) -> None:
        """Keep a slot whose request is still in flight (a slow page) from expiring."""
        interval = self._slot_ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            expiry = int(time.time() * 1000) + self._slot_ttl_ms
            await self._redis.zadd(self._keys[1], {holder: expiry}, xx=True)

    async def pause(self, seconds: float) -> None:
        if self._on_pause is not None:
            self._on_pause(seconds)
        ms = max(1, int(seconds * 1000))
        # Only lengthen a pause: another worker may have been told to wait longer.
        current = await self._redis.pttl(self._keys[0])
        if current is None or current < ms:
            await self._redis.set(self._keys[0], b"1", px=ms)

    async def tighten(self) -> None:
        if self._limits.max_concurrency:
            await self._tighten_script(
                keys=[self._keys[3]], args=[self._limits.max_concurrency, self._tighten_ms]
            )

    async def refund(self, units: int) -> None:
        if self._rate and units > 0:
            await self._refund_script(keys=[self._keys[2]], args=[units, self._capacity])

    async def concurrency_limit(self) -> int | None:
        """The concurrent requests allowed now (tightened or not); None without a limit."""
        if not self._limits.max_concurrency:
            return None
        cap = await self._redis.get(self._keys[3])
        limit = self._limits.max_concurrency
        return min(limit, int(cap)) if cap is not None else limit
