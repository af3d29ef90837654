"""nats-py's client, with two shortcuts for a publisher that sends tens of thousands of
JetStream messages a second and reads as many acks.

- `send` hands many pre-built HPUB commands (`hpub`) to the connection's outgoing buffer at
  once. `Client.publish` validates, encodes a header dict and wakes the flusher for every
  message; the publisher's subjects and message ids are ours and already valid.
- `route_acks` takes every message on one inbox prefix straight from the protocol parser
  to a plain function: no `Msg`, no subscription queue, no task switch per ack.

Both go through nats-py's own buffer, flusher, parser and reconnect logic; only the
per-message objects are skipped. They rely on two methods nats-py keeps internal
(`_send_command`, `_process_msg`): the dependency is pinned below the next major version,
and the events tests fail if either stops being reached (`routed` counts what the parser
handed over).
"""

from __future__ import annotations

from collections.abc import Callable

from nats import errors
from nats.aio.client import Client

_HEADER = b"NATS/1.0\r\nNats-Msg-Id: "
_HEADER_END = b"\r\n\r\n"

# (subject, payload, status of a payload-less answer such as "503")
AckSink = Callable[[bytes, bytes, str | None], None]


def hpub(subject: bytes, reply: bytes, msg_id: bytes, data: bytes) -> bytes:
    """One HPUB command: `data` to `subject`, JetStream's answer to `reply`, de-duplicated
    by `msg_id` (the `Nats-Msg-Id` header)."""
    header = _HEADER + msg_id + _HEADER_END
    size = len(header)
    return b"HPUB %b %b %d %d\r\n%b%b\r\n" % (
        subject,
        reply,
        size,
        size + len(data),
        header,
        data,
    )


def header_size(msg_id: bytes) -> int:
    return len(_HEADER) + len(msg_id) + len(_HEADER_END)


def status(headers: bytes | None) -> str | None:
    """The status of an answer's header block (`NATS/1.0 503` gives "503")."""
    if not headers:
        return None
    parts = headers.split(b"\r\n", 1)[0].split()
    return parts[1].decode() if len(parts) > 1 else None


class WireClient(Client):
    def __init__(self) -> None:
        super().__init__()
        self._ack_prefix = b""
        self._ack_sink: AckSink | None = None
        self.routed = 0

    def route_acks(self, prefix: str, sink: AckSink | None) -> None:
        """Hand every message whose subject starts with `prefix` to `sink` (None: stop).
        The subscription itself is the caller's: the server sends only what it asked for."""
        self._ack_prefix = prefix.encode()
        self._ack_sink = sink

    async def send(self, commands: list[bytes]) -> None:
        """Queue pre-built protocol commands and wake the flusher once for all of them."""
        if self.is_closed:
            raise errors.ConnectionClosedError
        if self.is_draining_pubs:
            raise errors.ConnectionDrainingError
        data = b"".join(commands)
        if not self.is_connected and (
            self._max_pending_size <= 0
            or len(data) + self._pending_data_size > self._max_pending_size
        ):
            # As `publish`: reconnecting, and the buffer is off or full.
            raise errors.OutboundBufferLimitError
        await self._send_command(data)
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        sink = self._ack_sink
        if sink is not None and subject.startswith(self._ack_prefix):
            self.routed += 1
            sink(subject, data, status(headers) if not data else None)
            return
        await super()._process_msg(sid, subject, reply, data, headers)
