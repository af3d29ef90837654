"""Gmail's attachment answer decoded incrementally: any chunking, same bytes."""

from __future__ import annotations

import base64
import json
import random

import pytest

from app.providers.base import TransientError
from app.providers.gmail.attachment_stream import DataFieldDecoder


def _answer(data: bytes, *, padded: bool, escaped: bool = False) -> bytes:
    encoded = base64.urlsafe_b64encode(data).decode()
    if not padded:
        encoded = encoded.rstrip("=")
    body = json.dumps({"attachmentId": 'A"\\x', "size": len(data), "data": encoded}, indent=1)
    return body.encode()


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 1000, 65537])
@pytest.mark.parametrize("padded", [True, False])
def test_any_chunking_decodes_the_same_bytes(size: int, padded: bool) -> None:
    rng = random.Random(size)
    data = rng.randbytes(size)
    raw = _answer(data, padded=padded)
    for _ in range(5):
        decoder = DataFieldDecoder()
        out, i = [], 0
        while i < len(raw):
            step = rng.randint(1, 50)
            out.append(decoder.feed(raw[i : i + step]))
            i += step
        out.append(decoder.finish())
        assert b"".join(out) == data


def test_data_before_other_keys_and_missing_data() -> None:
    data = b"hello world"
    raw = b'{"data": "' + base64.urlsafe_b64encode(data) + b'", "size": 11}'
    decoder = DataFieldDecoder()
    assert decoder.feed(raw) + decoder.finish() == data
    empty = DataFieldDecoder()
    empty.feed(b'{"size": 0}')
    with pytest.raises(TransientError):
        empty.finish()
