"""GBNF plumbing: grammars llama.cpp samples under, written as text with a few typed helpers.

    g = Grammar()
    g.rule("root", obj([("path", json_literal("a.py")), ("search", g.line_run("a", text))]))
    g.text()          -> the GBNF llama.cpp compiles (``CompletionRequest.grammar``)

:meth:`Grammar.line_run` is the grammar of a JSON string that can only be a run of whole,
consecutive lines of one text, long enough to occur once in it (as whole lines): a search
text that cannot miss. :func:`schema_grammar` turns a plain JSON schema into GBNF, as the
in-process backend does for schema-constrained answers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring
from typing import Any

# Whitespace between JSON tokens: at most one space, so a model cannot pad an answer forever.
SPACE = '" "?'
# One character of a JSON string, escapes included (llama.cpp's own JSON grammar).
CHAR = r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
MAX_UNIQUE_LINES = 6  # a start that needs more lines than this to be unique is not offered

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPE_RE = re.compile(r'["\\\n\r\t]')
_NAME_RE = re.compile(r"[^A-Za-z0-9-]")


def literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    return '"' + _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], text) + '"'


def json_literal(value: str) -> str:
    """The JSON encoding of ``value`` (quotes included) as a GBNF literal: a string that can only be ``value``."""
    return literal(json.dumps(value, ensure_ascii=False)) + " space"


def _json_inner(text: str) -> str:
    """``text`` as it appears inside a JSON string (its escapes as characters)."""
    return encode_basestring(text)[1:-1]


def _gbnf(inner: str) -> str:
    """Characters of a JSON string's inside as a GBNF literal."""
    return '"' + inner.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _common_prefix(texts: Sequence[str]) -> str:
    first, last = min(texts), max(texts)
    n = 0
    while n < len(first) and first[n] == last[n]:
        n += 1
    return first[:n]


def _in_json(text: str) -> str:
    """``text`` as it appears inside a JSON string, as a GBNF literal (no quotes around it).

    JSON leaves no control character unescaped, so only backslashes and quotes need GBNF's escapes.
    """
    return _gbnf(_json_inner(text))


def obj(fields: Sequence[tuple[str, str]]) -> str:
    """A JSON object with exactly ``fields`` (key, rule of the value) in this order."""
    parts = [f'{json_literal(key)} ":" space {value}' for key, value in fields]
    return '"{" space ' + ' "," space '.join(parts) + ' "}" space'


def array(item: str, min_items: int, max_items: int) -> str:
    """A JSON array of ``min_items`` to ``max_items`` of ``item``."""
    if max_items == 1:
        return f'"[" space {item} "]" space' if min_items else f'"[" space {item}? "]" space'
    more = f'("," space {item}){{0,{max_items - 1}}}'
    if min_items == 0:
        return f'"[" space ({item} {more})? "]" space'
    return f'"[" space {item} {more} "]" space'


def alternatives(rules: Sequence[str]) -> str:
    """Any one of ``rules``."""
    return " | ".join(f"( {r} )" for r in rules)


class Grammar:
    """Named GBNF rules, with the JSON primitives every answer uses; :meth:`text` is what llama.cpp reads."""

    def __init__(self) -> None:
        self.rules: dict[str, str] = {"space": SPACE, "char": CHAR, "string": '"\\"" char* "\\"" space'}

    def rule(self, name: str, body: str) -> str:
        """Define ``name`` (made a valid rule name, unique) as ``body``; returns the name to refer to it."""
        base = _NAME_RE.sub("-", name) or "r"
        key, n = base, 0
        while key in self.rules and self.rules[key] != body:
            n += 1
            key = f"{base}-{n}"
        self.rules[key] = body
        return key

    def text(self) -> str:
        """The grammar, ``root`` first."""
        if "root" not in self.rules:
            raise ValueError("a grammar needs a root rule")
        order = ["root", *(k for k in self.rules if k != "root")]
        return "\n".join(f"{k} ::= {self.rules[k]}" for k in order) + "\n"

    def line_run(self, name: str, text: str) -> str:
        """A JSON string (with its quotes) that is a run of whole consecutive lines of ``text``, found once.

        Every line of the run ends with its newline (the file's last line only if it has one). A run
        may start at line ``i`` only with at least the lines that make it unique as whole lines (at
        most :data:`MAX_UNIQUE_LINES`); after those it may go on line by line. Rules: one tail per
        line (``<name>-t<i>``: the lines from ``i`` on, any number of them) and one alternative per start.
        """
        lines = text.splitlines(keepends=True)
        if not lines:
            return self.rule(f"{name}-search", '"\\"\\"" space')
        pieces = [_in_json(line) for line in lines]
        for i in range(len(lines) - 1, 0, -1):  # the tail from line 0 is no start's tail
            follow = f" {name}-t{i + 1}" if i + 1 < len(lines) else ""
            self.rules[f"{name}-t{i}"] = f"({pieces[i]}{follow})?"
        starts: list[tuple[str, str]] = []
        for i, need in enumerate(unique_run_lengths(lines)):
            if need == 0:
                continue
            follow = f"{name}-t{i + need}" if i + need < len(lines) else ""
            starts.append(("".join(_json_inner(line) for line in lines[i : i + need]), follow))
        if not starts:
            return self.rule(f"{name}-search", '"\\"\\"" space')  # nothing in the file is unique: nothing to search
        body = self._prefix_tree(f"{name}-n", sorted(starts), 0)
        return self.rule(f"{name}-search", f'"\\"" {body} "\\"" space')

    def _prefix_tree(self, name: str, starts: Sequence[tuple[str, str]], depth: int) -> str:
        """The starts (JSON text, rule that may follow) from character ``depth`` on, sharing their prefixes.

        llama.cpp keeps one stack per alternative it is inside: a flat choice of a 2,000-line file's starts
        holds 2,000 stacks through the first characters of every search text, and checking a token against
        them costs that much; sharing prefixes leaves one stack per distinct next character."""
        text, follow = starts[0]
        if len(starts) == 1:
            rest = text[depth:]
            return " ".join(p for p in (_gbnf(rest) if rest else "", follow) if p) or '""'
        shared = _common_prefix([t[depth:] for t, _ in starts])
        if shared:
            return f"{_gbnf(shared)} {self._prefix_tree(name, starts, depth + len(shared))}"
        ended = [f for t, f in starts if len(t) == depth]
        groups: dict[str, list[tuple[str, str]]] = {}
        for start in starts:
            if len(start[0]) > depth:
                groups.setdefault(start[0][depth], []).append(start)
        alts = [self._prefix_tree(name, group, depth) for _, group in sorted(groups.items())]
        alts += [f for f in ended if f]
        body = " | ".join(f"( {a} )" for a in alts)
        if any(not f for f in ended):
            body = f"( {body} )?"  # a start that is the file's last line, without its newline, ends here
        return self.rule(f"{name}{len(self.rules)}", body)


def unique_run_lengths(lines: Sequence[str], limit: int = MAX_UNIQUE_LINES) -> list[int]:
    """For each line, how many lines from it on occur only there as whole lines (0: none within ``limit``).

    Runs are compared by ids, one pass per length over the starts not yet unique: linear for most files.
    """
    n = len(lines)
    ids: dict[str, int] = {}
    # a last line without its newline still matches that line elsewhere (apply matches whole lines)
    line_id = [ids.setdefault(line if line.endswith("\n") else line + "\n", len(ids)) for line in lines]
    found = [0] * n
    key: list[int] = list(line_id)  # the id of the run of length k starting at i
    open_starts = list(range(n))
    for k in range(1, limit + 1):
        if k > 1:
            runs: dict[tuple[int, int], int] = {}
            open_starts = [i for i in open_starts if i + k <= n]
            for i in open_starts:
                key[i] = runs.setdefault((key[i], line_id[i + k - 1]), len(runs))
        counts: dict[int, int] = {}
        for i in open_starts:
            counts[key[i]] = counts.get(key[i], 0) + 1
        still = []
        for i in open_starts:
            if counts[key[i]] == 1:
                found[i] = k
            else:
                still.append(i)
        open_starts = still
        if not open_starts:
            break
    return found


def schema_grammar(schema: Mapping[str, Any]) -> str:
    """GBNF for a plain JSON schema (what the in-process backend samples a schema-constrained answer under)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf  # noqa: PLC0415  lazy: llama.cpp only when a model runs

    return str(json_schema_to_gbnf(json.dumps(schema)))
