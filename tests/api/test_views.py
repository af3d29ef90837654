"""File names in Content-Disposition: nothing that breaks a header or escapes a folder."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from app.api.views import content_disposition, provider_attachment_id, public_attachment_id


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", 'a"b.txt', "x\r\nSet-Cookie: a=b", "résumé, 2024.pdf", "..", "", None,
     "a\\b", "\x00nul.bin", "日本語.txt"],
)  # fmt: skip
def test_content_disposition_is_safe(name: str | None) -> None:
    header = content_disposition(name)
    assert header.isprintable() and "\r" not in header and "\n" not in header
    ascii_part = header.split('filename="')[1].split('"')[0]
    assert ascii_part.isascii() and ascii_part and not ascii_part.startswith(".")
    assert "/" not in ascii_part and "\\" not in ascii_part
    exact = unquote(header.split("filename*=UTF-8''")[1])
    assert "/" not in exact and "\\" not in exact and "\r" not in exact and exact


def test_attachment_ids_round_trip() -> None:
    for provider_id in ("1", "0.1", "AAMkAGI2=", "a/b+c=="):
        public = public_attachment_id(provider_id)
        assert "/" not in public and "=" not in public
        assert provider_attachment_id(public) == provider_id
