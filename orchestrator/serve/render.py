"""Turning values into HTML that cannot be turned against the reader.

Every ``{{ value }}`` in a template is HTML-escaped and every character that could hide or reorder
text is replaced by a visible marker such as ``⟨U+202E⟩`` (:func:`environment`). Values that are
already ``Markup`` (the highlighted diff, the SVG charts) were built with the same rules.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

TEMPLATES = Path(__file__).parent / "templates"

# Bidi embeddings/overrides/isolates, marks, zero-width and BOM characters, line/paragraph
# separators, and C0/C1 controls except tab and newline: what can make text read otherwise
# than it is (Trojan Source) or vanish on screen.
_HIDDEN = re.compile(
    "[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u180e\u200b-\u200f\u202a-\u202e\u2028\u2029"
    "\u2060-\u2064\u2066-\u2069\ufeff\ufff9-\ufffb]"
)


def _marker(match: re.Match[str]) -> str:
    return f"\u27e8U+{ord(match.group()):04X}\u27e9"


def visible(text: str) -> str:
    """``text`` with every hidden or reordering character replaced by a visible ``⟨U+XXXX⟩`` marker.

    Bidi controls, zero-width characters and other control characters are marked. The markers are
    plain text, so they are safe inside attribute values too.
    """
    return _HIDDEN.sub(_marker, text)


def safe_text(value: object) -> Markup:
    """Escaped, visible HTML text of ``value`` (Markup passes through unchanged)."""
    if isinstance(value, Markup):
        return value
    return Markup(visible(str(escape(value))))  # escaping leaves the hidden characters for `visible`


def _finalize(value: Any) -> Any:
    if value is None:
        return ""
    return safe_text(value)


def _short(value: object, length: int = 12) -> str:
    return "" if value is None else str(value)[:length]


def _url(value: object) -> str:
    """One path segment, percent-encoded (repo names and ids in links)."""
    return quote(str(value), safe="")


def _gib(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def environment() -> Environment:
    """The Jinja environment of the app's templates: autoescaped, strict, every output finalized."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["short"] = _short
    env.filters["url"] = _url
    env.filters["gib"] = _gib
    return env
