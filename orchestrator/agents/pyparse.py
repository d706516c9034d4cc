"""Python files as the repo map sees them: module docstring, classes, functions with signatures,
top-level names and imports (parsed with :mod:`ast`), module names and which files are tests.

Many files are parsed by worker processes (``python -m orchestrator.agents.parseworker``, sources in
and parses out as pickles on their pipes): plain subprocesses, not multiprocessing's, which would run the
calling program's main module again in each worker.
"""

from __future__ import annotations

import ast
import gc
import hashlib
import math
import pickle
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel

_SIG_MAX = 100
Tokenizer = Callable[[str], int]


def estimate_tokens(text: str) -> int:
    """A cheap token estimate: one token per four characters."""
    return math.ceil(len(text) / 4)


class Symbol(BaseModel):
    """A class, function, method or top-level name of a Python module."""

    kind: Literal["class", "function", "method", "name"]
    name: str
    signature: str
    line: int


class ImportRef(BaseModel):
    """One import statement: ``from <level dots><module> import <names>`` or ``import <module>``."""

    level: int = 0
    module: str = ""
    names: list[str] = []


class Parsed(BaseModel):
    """What one Python file's content yields; cached by content digest."""

    doc: str = ""
    symbols: list[Symbol] = []
    imports: list[ImportRef] = []
    error: str | None = None


@dataclass
class FileEntry:
    """A file of the repo with its digest and, for Python, its parse."""

    path: str
    digest: str
    parsed: Parsed | None = None

    @property
    def is_python(self) -> bool:
        return self.path.endswith(".py")


def blob_digest(data: bytes) -> str:
    """The git blob id of ``data`` (what ``git ls-files -s`` reports for committed content)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def parse_bounded(source: bytes, limit: int) -> Parsed:
    """:func:`parse_python`, or a note that the file is too large (over ``limit`` bytes) to parse."""
    return Parsed(error="too large to parse") if len(source) > limit else parse_python(source)


def parse_in_workers(chunks: list[list[bytes]], limit: int) -> list[list[Parsed]]:
    """Each chunk of sources parsed (:func:`parse_bounded`) by a worker process of its own, all at once."""
    argv = [sys.executable, "-m", "orchestrator.agents.parseworker", str(limit)]
    workers = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in chunks]

    def one(index: int) -> list[Parsed]:
        out, _ = workers[index].communicate(pickle.dumps(chunks[index]))
        if workers[index].returncode != 0:
            return [parse_bounded(data, limit) for data in chunks[index]]  # a worker that failed: parse here
        found: list[Parsed] = pickle.loads(out)
        return found

    paused = gc.isenabled()
    gc.disable()  # unpickling makes ~40 objects a function parsed: collections meanwhile would only slow it down
    try:
        with ThreadPoolExecutor(len(workers)) as pool:
            return list(pool.map(one, range(len(workers))))
    finally:
        if paused:
            gc.enable()


def parse_python(source: bytes) -> Parsed:
    """Symbols and imports of one Python source (a syntax error is recorded, not raised)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError) as exc:
        return Parsed(error=f"syntax error: {exc}")
    doc = (ast.get_docstring(tree) or "").strip().splitlines()
    lines = _Lines(source)
    symbols: list[Symbol] = []
    for node in tree.body:
        symbols.extend(_symbols(node, lines))
    imports = [_import_ref(node) for node in _import_statements(tree.body)]
    return Parsed(doc=doc[0] if doc else "", symbols=symbols, imports=[i for imp in imports for i in imp])


_BLOCKS = ("body", "orelse", "finalbody", "handlers", "cases")


def _import_statements(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Import statements at any depth of statements (expressions hold none: not walked, most of a tree)."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = list(reversed(body))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
            continue
        for name in _BLOCKS:
            block = getattr(node, name, None)
            if block:
                stack.extend(reversed(block))
    return found


class _Lines:
    """The source by byte offset of each line (ast positions count UTF-8 bytes)."""

    def __init__(self, source: bytes) -> None:
        self.source = source
        self.starts = [0]
        for line in source.splitlines(keepends=True):
            self.starts.append(self.starts[-1] + len(line))

    def between(self, start: ast.stmt, end: ast.stmt) -> str:
        first = self.starts[start.lineno - 1] + start.col_offset
        last = self.starts[end.lineno - 1] + end.col_offset
        return self.source[first:last].decode("utf-8", errors="replace")


def _symbols(node: ast.stmt, lines: _Lines) -> list[Symbol]:
    if isinstance(node, ast.ClassDef):
        bases = ", ".join(ast.unparse(b) for b in node.bases)
        found = [
            Symbol(
                kind="class",
                name=node.name,
                signature=_clip(f"class {node.name}({bases})" if bases else f"class {node.name}"),
                line=node.lineno,
            )
        ]
        for sub in node.body:
            if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef) and (
                not sub.name.startswith("_") or sub.name == "__init__"
            ):
                found.append(
                    Symbol(
                        kind="method",
                        name=f"{node.name}.{sub.name}",
                        signature=_signature(sub, lines),
                        line=sub.lineno,
                    )
                )
        return found
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return [Symbol(kind="function", name=node.name, signature=_signature(node, lines), line=node.lineno)]
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AnnAssign):
        targets = [node.target]
    return [
        Symbol(kind="name", name=t.id, signature=t.id, line=node.lineno)
        for t in targets
        if isinstance(t, ast.Name) and t.id != "__all__"
    ]


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: _Lines) -> str:
    """The ``def`` line as written (comments out, whitespace folded): unparsing every argument costs a third
    of a large repo's first map."""
    text = " ".join(_code(line) for line in lines.between(node, node.body[0]).splitlines())
    text = " ".join(text.split()).rstrip().removesuffix(":").rstrip()
    text = text.replace("( ", "(").replace(" )", ")").replace(",)", ")").replace("[ ", "[").replace(" ]", "]")
    return _clip(text)


def _code(line: str) -> str:
    """``line`` without its comment (a ``#`` outside string quotes)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#":
            return line[:i]
    return line


def _clip(text: str) -> str:
    return text if len(text) <= _SIG_MAX else text[: _SIG_MAX - 1] + "…"


def _import_ref(node: ast.Import | ast.ImportFrom) -> list[ImportRef]:
    if isinstance(node, ast.Import):
        return [ImportRef(module=alias.name) for alias in node.names]
    return [ImportRef(level=node.level, module=node.module or "", names=[a.name for a in node.names if a.name != "*"])]


def module_name(path: str) -> str | None:
    """The dotted module a Python file defines (``src/`` layouts unwrapped), or None."""
    if not path.endswith(".py"):
        return None
    parts = list(PurePosixPath(path).with_suffix("").parts)
    if len(parts) > 1 and parts[0] in ("src", "lib"):
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts or not all(p.isidentifier() for p in parts):
        return None
    return ".".join(parts)


def is_test_file(path: str) -> bool:
    """A pytest-style test module: ``test_*.py`` or ``*_test.py``."""
    name = PurePosixPath(path).name
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))
