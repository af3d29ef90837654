"""Converting a body between text and HTML when the provider has only the other form."""

from __future__ import annotations

import html as html_module
import re

_BLOCK_END = re.compile(r"(?i)<br\s*/?>|</(p|div|tr|li|h[1-6]|blockquote|table)\s*>")


def html_to_text(html: str) -> str:
    # Imported here: the worker loads the providers but never converts a body.
    import nh3

    with_breaks = _BLOCK_END.sub("\n", html)
    stripped = nh3.clean(with_breaks, tags=set(), clean_content_tags={"script", "style", "head"})
    lines = (line.strip() for line in html_module.unescape(stripped).splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def text_to_html(text: str) -> str:
    return '<div style="white-space: pre-wrap">' + html_module.escape(text) + "</div>"
