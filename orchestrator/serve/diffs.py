"""A unified diff as highlighted HTML, file by file, built on the server with pygments.

Each file's changed and context lines are lexed together by the lexer its name suggests, then
split back into table rows with old/new line numbers and a +/- marker. Every token is
escaped and its hidden characters made visible (``render.visible``); file names are read
from the ``---``/``+++`` headers, with git's C-style quoting undone, and shown as text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import TextLexer, get_lexer_for_filename
from pygments.token import STANDARD_TYPES, _TokenType
from pygments.util import ClassNotFound

from orchestrator.serve.render import visible

MAX_LINES = 20_000  # past this the page shows a note and the raw diff link instead of more rows
CSS_SCOPE = ".code"
_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")
_ESCAPES = {"a": "\a", "b": "\b", "t": "\t", "n": "\n", "v": "\v", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


@dataclass(frozen=True)
class DiffFile:
    """One file of a diff: its names, counts, and its rows as HTML."""

    old: str
    new: str
    added: int
    removed: int
    rows: Markup

    @property
    def name(self) -> str:
        return self.old if self.new == "/dev/null" else self.new


@dataclass(frozen=True)
class Diff:
    """A highlighted diff; ``truncated`` when it had more than MAX_LINES lines."""

    files: tuple[DiffFile, ...]
    lines: int
    truncated: bool


def stylesheet() -> str:
    """The pygments colours, scoped to the diff tables."""
    formatter: Any = HtmlFormatter(style="default")  # pygments' stubs leave get_style_defs untyped
    return str(formatter.get_style_defs(CSS_SCOPE))


def unquote(name: str) -> str:
    """A path as git prints it in a header, unquoted (``"a/\\342\\200\\256x"`` -> ``a/\u202ex``)."""
    if not (len(name) >= 2 and name[0] == name[-1] == '"'):
        return name
    out = bytearray()
    body, i = name[1:-1], 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            digits = body[i + 1 : i + 4]
            if len(digits) == 3 and all(d in "01234567" for d in digits):
                out.append(int(digits, 8) & 0xFF)
                i += 4
                continue
            out += _ESCAPES.get(nxt, nxt).encode()
            i += 2
            continue
        out += char.encode()
        i += 1
    return out.decode("utf-8", errors="replace")


def _path(header: str) -> str:
    name = unquote(header.split("\t", 1)[0].strip())
    return name[2:] if name[:2] in ("a/", "b/") else name


@functools.lru_cache(maxsize=256)
def _lexer(name: str) -> Lexer:
    try:
        found: Lexer = get_lexer_for_filename(name, stripnl=False, ensurenl=False)
        return found
    except ClassNotFound:
        plain: Lexer = TextLexer(stripnl=False, ensurenl=False)
        return plain


def _css_class(ttype: _TokenType) -> str:
    while ttype not in STANDARD_TYPES and ttype.parent is not None:
        ttype = ttype.parent
    return STANDARD_TYPES.get(ttype, "")


def _highlighted_lines(name: str, code: list[str]) -> list[str]:
    """``code`` lexed as one text, then cut back into one HTML string per line."""
    lines: list[list[str]] = [[]]
    for ttype, value in _lexer(name).get_tokens("\n".join(code)):
        css = _css_class(ttype)
        for n, part in enumerate(value.split("\n")):
            if n:
                lines.append([])
            if part:
                text = visible(str(escape(part)))
                lines[-1].append(f'<span class="{css}">{text}</span>' if css else text)
    return ["".join(parts) for parts in lines[: len(code)]]


def _split(diff: str) -> Iterator[list[str]]:
    """The diff's lines, one list per file (git starts each file with ``diff --git``)."""
    chunk: list[str] = []
    for line in diff.splitlines():
        if line.startswith("diff --git ") and chunk:
            yield chunk
            chunk = []
        chunk.append(line)
    if chunk:
        yield chunk


def _render_file(chunk: list[str]) -> DiffFile:
    old = new = ""
    body_at = len(chunk)
    for i, line in enumerate(chunk):
        if line.startswith("@@"):
            body_at = i
            break
        if line.startswith("--- "):
            old = _path(line[4:])
        elif line.startswith("+++ "):
            new = _path(line[4:])
    if not (old or new) and chunk and chunk[0].startswith("diff --git "):
        new = old = chunk[0].removeprefix("diff --git ")  # binary or mode-only change: no ---/+++ lines
    body = chunk[body_at:]
    code = [line[1:] for line in body if line[:1] in ("+", "-", " ")]
    highlighted = iter(_highlighted_lines(new if new != "/dev/null" else old, code))
    rows: list[str] = []
    left = right = 0
    added = removed = 0
    for line in body:
        mark = line[:1]
        hunk = _HUNK.match(line)
        if hunk:
            left, right = int(hunk[1]), int(hunk[2])
            rows.append(f'<tr class="hunk"><td></td><td></td><td colspan="2">{visible(str(escape(line)))}</td></tr>')
        elif mark in ("+", "-", " "):
            html = next(highlighted, "")
            kind = {"+": "add", "-": "del", " ": "ctx"}[mark]
            old_no = "" if mark == "+" else str(left)
            new_no = "" if mark == "-" else str(right)
            left += mark != "+"
            right += mark != "-"
            added += mark == "+"
            removed += mark == "-"
            rows.append(
                f'<tr class="{kind}"><td class="ln">{old_no}</td><td class="ln">{new_no}</td>'
                f'<td class="mk">{mark}</td><td class="src">{html}</td></tr>'
            )
        elif line:
            rows.append(f'<tr class="meta"><td></td><td></td><td colspan="2">{visible(str(escape(line)))}</td></tr>')
    return DiffFile(old=old, new=new, added=added, removed=removed, rows=Markup("".join(rows)))


def highlight(diff: str) -> Diff:
    """``diff`` (unified, as git writes it) as highlighted files."""
    lines = diff.splitlines()
    truncated = len(lines) > MAX_LINES
    if truncated:
        diff = "\n".join(lines[:MAX_LINES])
    return Diff(files=tuple(_render_file(chunk) for chunk in _split(diff)), lines=len(lines), truncated=truncated)
