"""Python files as the repo map sees them: module docstring, classes, functions with signatures,
top-level names and imports (parsed with :mod:`ast`), module names and which files are tests.
"""

from __future__ import annotations

import ast
import hashlib
import math
from collections.abc import Callable
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


def parse_python(source: bytes) -> Parsed:
    """Symbols and imports of one Python source (a syntax error is recorded, not raised)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError) as exc:
        return Parsed(error=f"syntax error: {exc}")
    doc = (ast.get_docstring(tree) or "").strip().splitlines()
    symbols: list[Symbol] = []
    for node in tree.body:
        symbols.extend(_symbols(node))
    imports = [_import_ref(node) for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]
    return Parsed(doc=doc[0] if doc else "", symbols=symbols, imports=[i for imp in imports for i in imp])


def _symbols(node: ast.stmt) -> list[Symbol]:
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
                    Symbol(kind="method", name=f"{node.name}.{sub.name}", signature=_signature(sub), line=sub.lineno)
                )
        return found
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return [Symbol(kind="function", name=node.name, signature=_signature(node), line=node.lineno)]
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


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return _clip(f"{prefix} {node.name}({ast.unparse(node.args)}){returns}")


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
