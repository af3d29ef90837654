"""JetStream publishing with every ack collected on one inbox.

nats-py's `publish_async` gives each message a future, a semaphore slot, its own reply
token and a parsed `PubAck` object, which made the publisher's CPU, not JetStream, the
limit. Here each event is a core NATS publish whose reply subject is `{inbox}.{n}`, `n`
this publisher's running message number; JetStream answers every publish that carries a
reply subject with an ack on it. The commands are built here and handed to the connection
`FLUSH_EVERY` at a time, and the answers come from the protocol parser to `_record`
(wire.py), which keeps one byte per message:

    {"stream": …, "seq": …}                     stored
    {"stream": …, "seq": …, "duplicate": true}  stored before (same Nats-Msg-Id): stored
    {"error": {"code": …, "description": …}}    refused (stream full, limits, …)
    no payload, status 503                      no stream captures the subject

A `Batch` is one round's messages. At most `window` of its messages wait for their acks:
a publish beyond that waits for half of them to come back, for at most `timeout` seconds.
Acks of an abandoned batch (a round that timed out) arrive with numbers below the next
batch's first and are ignored, so a late ack never counts for a message it does not
belong to.
"""

from __future__ import annotations

import asyncio

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import MaxPayloadError

from app.events.wire import WireClient, header_size, hpub

PENDING = 0
STORED = 1
DUPLICATE = 2
REFUSED = 3

# Hand the messages to the connection every so many publishes, so JetStream stores the
# first ones while the next are still being built.
FLUSH_EVERY = 256
_NO_RESPONDERS = "503"


class _AckError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _Ack(msgspec.Struct):
    error: _AckError | None = None
    duplicate: bool = False


_decode_ack = msgspec.json.Decoder(_Ack).decode


class AckTimeout(Exception):
    """JetStream did not answer in time; the batch's unanswered messages count as lost."""


class Batch:
    """One round's messages, numbered from `base`: what JetStream answered for each."""

    __slots__ = ("base", "no_stream", "received", "refusal", "states")

    def __init__(self, base: int) -> None:
        self.base = base
        self.states = bytearray()
        self.received = 0
        self.refusal: str | None = None
        self.no_stream = False

    @property
    def sent(self) -> int:
        return len(self.states)

    @property
    def outstanding(self) -> int:
        return len(self.states) - self.received

    def stored(self, start: int, end: int) -> bool:
        """Whether JetStream holds every message in [start, end)."""
        part = self.states[start:end]
        return PENDING not in part and REFUSED not in part

    def duplicates(self, start: int, end: int) -> int:
        return self.states.count(DUPLICATE, start, end)


class AckedPublisher:
    """Core NATS publishes with JetStream acks on one inbox, a bounded window of them."""

    def __init__(self, nc: WireClient, window: int, timeout: float) -> None:
        self._nc = nc
        self.window = window
        self.timeout = timeout
        self._inbox = nc.new_inbox() + "."
        self._reply = self._inbox.encode()
        self._skip = len(self._reply)
        self._next = 0
        self._out: list[bytes] = []
        self._batch: Batch | None = None
        self._sub: Subscription | None = None
        self._progress = asyncio.Event()
        # Wake the waiting publish when this few messages are still outstanding.
        self._wake_at = -1

    async def start(self) -> None:
        self._nc.route_acks(self._inbox, self._record)
        # The server sends what this subscription asks for; the parser hands it to
        # `_record` directly (its callback is never reached while routed).
        self._sub = await self._nc.subscribe(self._inbox + "*", cb=self._on_ack)

    async def stop(self) -> None:
        self._nc.route_acks(self._inbox, None)
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()

    def batch(self) -> Batch:
        self._out.clear()
        batch = Batch(self._next)
        self._batch = batch
        return batch

    async def publish(self, batch: Batch, subject: str, data: bytes, msg_id: str) -> None:
        n = len(batch.states)
        if n - batch.received >= self.window:
            await self._wait(batch, self.window // 2)
        ident = msg_id.encode()
        if len(data) + header_size(ident) > self._nc.max_payload:
            raise MaxPayloadError(f"event {msg_id} is {len(data)} bytes")
        number = batch.base + n
        batch.states.append(PENDING)
        self._next = number + 1
        self._out.append(hpub(subject.encode(), b"%b%d" % (self._reply, number), ident, data))
        if len(self._out) >= FLUSH_EVERY:
            await self._send()
            # Let the flusher write them, so JetStream stores these while the next are built.
            await asyncio.sleep(0)

    async def settle(self, batch: Batch) -> None:
        """Until every message of the batch is answered (AckTimeout after `timeout`)."""
        await self._wait(batch, 0)

    async def _send(self) -> None:
        out, self._out = self._out, []
        await self._nc.send(out)

    async def _wait(self, batch: Batch, at_most: int) -> None:
        if self._out:
            await self._send()
        while batch.outstanding > at_most:
            self._wake_at = at_most
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), self.timeout)
            except TimeoutError:
                raise AckTimeout(
                    f"{batch.outstanding} of {batch.sent} acks missing after "
                    f"{self.timeout:g} s without progress"
                ) from None
            finally:
                self._wake_at = -1

    async def _on_ack(self, msg: Msg) -> None:
        # Reached only if the parser stopped routing (see wire.py): the same, more slowly.
        headers = msg.headers or {}
        self._record(msg.subject.encode(), msg.data, headers.get("Status"))

    def _record(self, subject: bytes, data: bytes, status: str | None) -> None:
        batch = self._batch
        if batch is None:
            return
        i = int(subject[self._skip :]) - batch.base
        if not 0 <= i < len(batch.states) or batch.states[i] != PENDING:
            return  # an abandoned batch's, or answered already
        batch.states[i] = self._outcome(batch, data, status)
        batch.received += 1
        if batch.outstanding <= self._wake_at:
            self._progress.set()

    @staticmethod
    def _outcome(batch: Batch, data: bytes, status: str | None) -> int:
        if not data:
            if status == _NO_RESPONDERS:
                batch.no_stream = True
                reason = "no stream captures the subject (no responders)"
            else:
                reason = f"empty answer (status {status})"
            batch.refusal = batch.refusal or reason
            return REFUSED
        try:
            ack = _decode_ack(data)
        except msgspec.DecodeError:
            batch.refusal = batch.refusal or f"unreadable ack {data[:200]!r}"
            return REFUSED
        if ack.error is not None:
            err = ack.error
            batch.refusal = batch.refusal or (
                f"{err.description} (code {err.code}, err_code {err.err_code})"
            )
            return REFUSED
        return DUPLICATE if ack.duplicate else STORED
