"""Provider HTML made safe to render inside a frontend (nh3, the Ammonia sanitizer).

No scripts, event handlers, forms, styles or frames survive; links keep only safe schemes
and open without a referrer. Images: `cid:` references point at our attachment route,
remote images are dropped unless the caller allows them (they are read receipts), and
nothing else (data:, javascript:, unknown relative paths) is kept.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import nh3

_TAGS = set(nh3.ALLOWED_TAGS) | {"font"}
_ATTRIBUTES: dict[str, set[str]] = copy.deepcopy(nh3.ALLOWED_ATTRIBUTES)
for _tag, _extra in {
    "*": {"dir", "lang", "title"},
    "font": {"color", "face", "size"},
    "table": {"width", "border", "cellpadding", "cellspacing", "bgcolor"},
    "td": {"width", "height", "valign", "bgcolor"},
    "th": {"width", "height", "valign", "bgcolor"},
    "tr": {"valign", "bgcolor"},
}.items():
    _ATTRIBUTES.setdefault(_tag, set()).update(_extra)
_SCHEMES = {"http", "https", "mailto", "tel", "cid"}
# Dropped with everything inside them, not just unwrapped.
_DROP_CONTENT = {"script", "style", "title", "head", "template", "noscript"}


def sanitize(
    html: str,
    *,
    inline_urls: Mapping[str, str],
    allow_remote_images: bool,
    local_prefix: str,
) -> str:
    """`inline_urls` maps a lower-cased Content-ID to the URL that serves that image."""

    def attribute(tag: str, name: str, value: str) -> str | None:
        if tag != "img" or name != "src":
            return value
        src = value.strip()
        lowered = src.lower()
        if lowered.startswith("cid:"):
            return inline_urls.get(src[4:].strip("<>").lower())
        if lowered.startswith(("http://", "https://", "//")):
            return src if allow_remote_images else None
        return src if src.startswith(local_prefix) else None

    return nh3.clean(
        html,
        tags=_TAGS,
        clean_content_tags=_DROP_CONTENT,
        attributes=_ATTRIBUTES,
        attribute_filter=attribute,
        url_schemes=_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


UrlFor = Callable[[str], str]
