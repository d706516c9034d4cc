"""Ranking a repo's files for a goal: goal words matched against paths, symbols and docstrings set the
restart weights of a PageRank over the import graph; imports resolved to the repo's files.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from orchestrator.agents.pyparse import FileEntry, ImportRef, module_name

_WORD_RE = re.compile(r"[A-Za-z][a-z]+|[A-Z]+(?![a-z])|[0-9]+")
_STOP = frozenset(
    {
        *("the", "and", "for", "with", "that", "this", "from", "into", "when", "then", "than", "are", "was"),
        *("were", "has", "have", "not", "but", "all", "any", "can", "should", "make", "add", "use", "using"),
        *("its", "our", "you", "your", "new", "def", "class", "self", "none", "true", "false", "file", "code"),
    }
)


def resolve(path: str, imp: ImportRef, modules: dict[str, str]) -> list[str]:
    """The in-repo files one import statement of ``path`` refers to."""
    if imp.level:
        own = module_name(path) or ""
        package = own.split(".") if path.endswith("__init__.py") else own.split(".")[:-1]
        if imp.level - 1 > len(package):
            return []
        base_parts = package[: len(package) - (imp.level - 1)]
        base = ".".join([*base_parts, imp.module] if imp.module else base_parts)
    else:
        base = imp.module
    found = []
    for name in imp.names:
        sub = modules.get(f"{base}.{name}" if base else name)
        if sub is not None:
            found.append(sub)
    if found:
        return found
    parts = base.split(".") if base else []
    while parts:
        hit = modules.get(".".join(parts))
        if hit is not None:
            return [hit]
        parts.pop()
    if not imp.level and imp.module:
        # a sibling module on sys.path (tests importing helpers beside them)
        folder = PurePosixPath(path).parent
        sibling = (folder / (imp.module.replace(".", "/") + ".py")).as_posix()
        if sibling in {p for p in modules.values()}:
            return [sibling]
    return []


def goal_words(text: str) -> set[str]:
    """Lower-case words of ``text`` (camelCase and snake_case split), minus stop words."""
    return {w.lower() for w in _WORD_RE.findall(text) if len(w) > 2 and w.lower() not in _STOP}


def _overlap(words: set[str], found: set[str]) -> int:
    """How many goal words occur in ``found``; a word of four letters or more also matches by prefix."""
    hits = 0
    for word in words:
        if word in found or (
            len(word) >= 4 and any(len(f) >= 4 and (f.startswith(word) or word.startswith(f)) for f in found)
        ):
            hits += 1
    return hits


def text_score(entry: FileEntry, words: set[str]) -> float:
    if not words:
        return 0.0
    score = 3.0 * _overlap(words, goal_words(entry.path))
    parsed = entry.parsed
    if parsed is not None:
        symbol_words: set[str] = set()
        for sym in parsed.symbols:
            symbol_words |= goal_words(sym.name)
        score += 2.0 * _overlap(words, symbol_words) + 1.0 * _overlap(words, goal_words(parsed.doc))
    return score / len(words)


def pagerank(
    graph: dict[str, list[str]], nodes: list[str], personal: dict[str, float], damping: float = 0.85, rounds: int = 30
) -> dict[str, float]:
    """Personalised PageRank: rank flows from importers to what they import, restarts by ``personal``."""
    if not nodes:
        return {}
    total = sum(personal.get(n, 0.0) for n in nodes) or 1.0
    restart = {n: personal.get(n, 0.0) / total for n in nodes}
    rank = dict(restart)
    for _ in range(rounds):
        nxt = {n: (1.0 - damping) * restart[n] for n in nodes}
        dangling = 0.0
        for n in nodes:
            out = [t for t in graph.get(n, []) if t in nxt]
            if out:
                share = damping * rank[n] / len(out)
                for t in out:
                    nxt[t] += share
            else:
                dangling += damping * rank[n]
        for n in nodes:
            nxt[n] += dangling * restart[n]
        rank = nxt
    return rank
