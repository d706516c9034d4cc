"""The repo map: files, symbols, imports and tests of a repo, ranked for a goal and cut to a budget.

    rmap = build_repo_map(repo_path, ws.cache / "repomap" / name)
    text = rmap.render("make sku formatting strict", token_budget=1500)
    first = rmap.tests_for(["inventory/stock.py"])

Python files are parsed with :mod:`ast` (module docstring, classes, functions with their
signatures, top-level names, imports); other files are listed by path. Parses are cached
by content digest (the git blob id, free from ``git ls-files -s``) in one JSON file under
``cache_dir``, so a rebuild or :meth:`RepoMap.update` re-parses only changed files; many files
at once are parsed by one worker process per core, and ``converge add`` starts the first map.
Ranking is deterministic: goal words matched against paths, symbols and docstrings set the
restart weights of a PageRank over the import graph, so files the goal names and the files
they lean on come first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pydantic import ValidationError

from orchestrator.agents.pyparse import (
    FileEntry,
    ImportRef,
    Parsed,
    Tokenizer,
    blob_digest,
    estimate_tokens,
    is_test_file,
    module_name,
    parse_in_workers,
    parse_python,
)
from orchestrator.agents.ranking import goal_words, pagerank, resolve, text_score
from orchestrator.store import gitops
from orchestrator.store.storage import atomic_write, file_lock, file_stamp
from orchestrator.store.workspace import Workspace

CACHE_NAME = "repomap-v2.json"  # v2: signatures as written in the source
MAX_PARSE_BYTES = 1_000_000
PARALLEL_FROM = 200  # fewer files parse faster here than worker processes start
# --- the map ---------------------------------------------------------------------------------


@dataclass
class RepoMap:
    """Files, symbols and imports of one repo; render it for a goal, ask it which tests to run."""

    repo: Path
    cache_dir: Path | None
    files: dict[str, FileEntry]
    _graph: dict[str, list[str]] | None = field(default=None, repr=False)

    # --- the import graph

    @property
    def modules(self) -> dict[str, str]:
        """Dotted module name -> path, for every Python file."""
        found: dict[str, str] = {}
        for path in sorted(self.files):
            name = module_name(path)
            if name is not None:
                found.setdefault(name, path)
        return found

    def import_graph(self) -> dict[str, list[str]]:
        """Each Python file -> the in-repo files it imports (sorted, no self edges)."""
        if self._graph is None:
            modules = self.modules
            graph: dict[str, list[str]] = {}
            for path, entry in sorted(self.files.items()):
                if entry.parsed is None:
                    continue
                targets = {t for imp in entry.parsed.imports for t in self._targets(path, imp, modules)}
                targets.discard(path)
                graph[path] = sorted(targets)
            self._graph = graph
        return self._graph

    def _targets(self, path: str, imp: ImportRef, modules: dict[str, str]) -> list[str]:
        """What an import refers to, following names a package ``__init__`` re-exports one level down."""
        found = resolve(path, imp, modules)
        if len(found) != 1 or not found[0].endswith("__init__.py") or not imp.names:
            return found
        package = self.files.get(found[0])
        if package is None or package.parsed is None:
            return found
        for inner in package.parsed.imports:
            wanted = [n for n in imp.names if n in inner.names]
            if wanted:
                inner_ref = ImportRef(level=inner.level, module=inner.module, names=wanted)
                found += resolve(found[0], inner_ref, modules)
        return found

    def importers(self) -> dict[str, list[str]]:
        """Each file -> the files that import it."""
        reverse: dict[str, list[str]] = {}
        for src, targets in self.import_graph().items():
            for target in targets:
                reverse.setdefault(target, []).append(src)
        return reverse

    def tests_for(self, changed_paths: Iterable[str], depth: int = 2) -> list[str]:
        """Test files to run first for a change: changed tests, then importers up to ``depth`` hops away.

        An empty list means the map knows no test for the change; run the whole suite.
        """
        reverse = self.importers()
        distance: dict[str, int] = {}
        frontier = [p for p in changed_paths if p in self.files]
        for path in frontier:
            distance[path] = 0
        for hop in range(1, depth + 1):
            frontier = [imp for path in frontier for imp in reverse.get(path, []) if imp not in distance]
            for path in frontier:
                distance.setdefault(path, hop)
        for path in changed_paths:
            if PurePosixPath(path).name == "conftest.py":
                folder = str(PurePosixPath(path).parent)
                for test in self.files:
                    if folder in (".", "") or test.startswith(folder + "/"):
                        distance.setdefault(test, 1)
        tests = [p for p in distance if is_test_file(p) and p in self.files]
        return sorted(tests, key=lambda p: (distance[p], p))

    # --- ranking and rendering

    def rank(self, goal: str) -> list[tuple[str, float]]:
        """Every file with its score for ``goal``, best first (ties by path)."""
        words = goal_words(goal)
        text = {path: text_score(entry, words) for path, entry in self.files.items()}
        scores = pagerank(self.import_graph(), list(self.files), {p: 1.0 + 10.0 * s for p, s in text.items()})
        ranked = [(p, scores[p] * (1.0 + text[p])) for p in self.files]
        return sorted(ranked, key=lambda item: (-item[1], item[0]))

    def render(self, goal: str, token_budget: int, tokens: Tokenizer = estimate_tokens) -> str:
        """The map as text for a prompt: ranked for ``goal``, at most ``token_budget`` tokens."""
        return self.render_shown(goal, token_budget, tokens)[0]

    def render_shown(self, goal: str, token_budget: int, tokens: Tokenizer = estimate_tokens) -> tuple[str, list[str]]:
        """:meth:`render`'s text and the paths it shows, most relevant first (what a model may name)."""
        tests_of = self._tests_by_module()
        header = f"Repository map ({len(self.files)} files, most relevant first):\n"
        more = f"... and {len(self.files)} more files\n"  # the longest tail line, reserved up front
        room = token_budget - tokens(header) - tokens(more)
        if room <= 0:
            return "", []
        out, shown = [header], []
        for path, _score in self.rank(goal):
            block = self._block(path, tests_of.get(path, []))
            if tokens(block) > room:
                block = path + "\n"  # no room for its symbols: the path alone still helps
                if tokens(block) > room:
                    break
            out.append(block)
            shown.append(path)
            room -= tokens(block)
        rest = len(self.files) - len(shown)
        if rest:
            out.append(f"... and {rest} more files\n")
        return "".join(out), shown

    def _block(self, path: str, tests: list[str]) -> str:
        entry = self.files[path]
        parsed = entry.parsed
        if parsed is None:
            return path + "\n"
        lines = [f"{path}" + (f" — {parsed.doc}" if parsed.doc else "")]
        if parsed.error:
            lines.append(f"  ({parsed.error})")
        for sym in parsed.symbols:
            indent = "    " if sym.kind == "method" else "  "
            lines.append(f"{indent}{sym.signature}")
        imports = self.import_graph().get(path, [])
        if imports:
            lines.append("  imports: " + ", ".join(imports))
        if tests:
            lines.append("  tests: " + ", ".join(tests))
        return "\n".join(lines) + "\n"

    def _tests_by_module(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for src, targets in self.import_graph().items():
            if is_test_file(src):
                for target in targets:
                    found.setdefault(target, []).append(src)
        return found

    # --- keeping it fresh

    def update(self, changed_paths: Iterable[str]) -> list[str]:
        """Re-read ``changed_paths`` from the working tree; returns the paths whose content changed."""
        cache = {e.digest: e.parsed for e in self.files.values() if e.parsed is not None}
        changed = []
        for path in changed_paths:
            rel = PurePosixPath(path).as_posix()
            target = self.repo / rel
            if not target.is_file() or target.is_symlink():
                if self.files.pop(rel, None) is not None:
                    changed.append(rel)
                continue
            data = target.read_bytes()
            digest = blob_digest(data)
            old = self.files.get(rel)
            if old is not None and old.digest == digest:
                continue
            self.files[rel] = _entry(rel, digest, data, cache)
            changed.append(rel)
        if changed:
            self._graph = None
            _save_cache(self.cache_dir, self.files, cache)
        return sorted(changed)


def build_repo_map(repo: Path, cache_dir: Path | None = None) -> RepoMap:
    """The map of ``repo``'s working tree (tracked and untracked, not ignored), using and refreshing the cache."""
    return _mapped(repo, cache_dir, _listing(repo), lambda unparsed: {path: repo / path for path in unparsed})


def build_repo_map_at(repo: Path, commit: str, cache_dir: Path | None = None) -> RepoMap:
    """The map of ``commit`` (a full id) as committed in ``repo``, read from git, using and refreshing the cache.

    What a candidate is built on or is: the files the model sees and the edits apply to. A
    commit never changes, so its listing is remembered (:func:`gitops.read_objects`) and the
    next step, whose base is this step's candidate, lists nothing again.
    """

    def blobs(unparsed: list[str]) -> dict[str, Path | bytes]:
        found = gitops.read_batch(repo, commit, [f"{commit}:{path}" for path in unparsed]) if unparsed else {}
        return {path: found.get(f"{commit}:{path}") or b"" for path in unparsed}

    return _mapped(repo, cache_dir, _listing_at(repo, commit), blobs)


def _mapped(
    repo: Path,
    cache_dir: Path | None,
    listed: dict[str, str],
    sources: Callable[[list[str]], dict[str, Path | bytes]],
) -> RepoMap:
    """The map of the files ``listed`` (path -> digest); ``sources`` gives the content of those the cache lacks."""
    cache = _load_cache(cache_dir)
    known = len(cache)
    unparsed = sorted(path for path, digest in listed.items() if path.endswith(".py") and digest not in cache)
    found = sources(unparsed)
    contents = {listed[p]: data if isinstance(data, bytes) else data.read_bytes() for p, data in found.items()}
    cache.update(parse_all(contents))
    files: dict[str, FileEntry] = {}
    for path, digest in sorted(listed.items()):
        files[path] = _entry(path, digest, found.get(path, b""), cache)
    if len(cache) != known:  # something was parsed: the cache file learns it
        _save_cache(cache_dir, files, cache)
    return RepoMap(repo=repo, cache_dir=cache_dir, files=files)


def parse_all(contents: dict[str, bytes]) -> dict[str, Parsed]:
    """Each content's parse, by its key; many files are parsed in parallel, one worker process per core."""
    keys = sorted(contents, key=lambda k: -len(contents[k]))  # largest first: the chunks come out even
    cores = len(os.sched_getaffinity(0))
    if len(keys) < PARALLEL_FROM or cores < 2:
        return {k: _parse(contents[k]) for k in keys}
    chunks: list[list[str]] = [[] for _ in range(cores)]
    sizes = [0] * cores
    for key in keys:
        smallest = sizes.index(min(sizes))
        chunks[smallest].append(key)
        sizes[smallest] += len(contents[key])
    done = parse_in_workers([[contents[k] for k in chunk] for chunk in chunks], MAX_PARSE_BYTES)
    return {
        k: parsed for chunk, found in zip(chunks, done, strict=True) for k, parsed in zip(chunk, found, strict=True)
    }


def _parse(data: bytes) -> Parsed:
    return Parsed(error="too large to parse") if len(data) > MAX_PARSE_BYTES else parse_python(data)


def repo_map_for(ws: Workspace, repo: str, tree: Path | None = None) -> RepoMap:
    """The map of registered ``repo``'s checkout (or of ``tree``), cached in ``cache/repomap/<repo>/``."""
    return build_repo_map(tree or ws.repo_path(repo), ws.cache / "repomap" / repo)


def repo_map_at(ws: Workspace, repo: str, commit: str) -> RepoMap:
    """The map of ``commit`` of registered ``repo`` (a generation or a candidate), cached as :func:`repo_map_for`.

    Built under the repo's map lock: a build already under way (the one ``converge add`` starts) is waited
    for and its cache used, rather than every file parsed twice at once.
    """
    cache_dir = ws.cache / "repomap" / repo
    with file_lock(cache_dir / "build.lock", f"the repo map of {repo}", wait=True):
        return build_repo_map_at(ws.repo_path(repo), commit, cache_dir)


def _listing_at(repo: Path, commit: str) -> dict[str, str]:
    """Path -> blob id of the regular files of ``commit`` (as :func:`_listing`: no links, no submodules)."""
    out = gitops.read_objects(repo, "ls-tree", "-r", "-z", "--full-tree", commit, ids=[commit])
    listed: dict[str, str] = {}
    for record in out.split(b"\0"):
        meta, _, path = record.partition(b"\t")
        fields = meta.split()
        if len(fields) == 3 and fields[0] in (b"100644", b"100755") and fields[1] == b"blob":
            listed[path.decode("utf-8", "surrogateescape")] = fields[2].decode()
    return listed


def _listing(repo: Path) -> dict[str, str]:
    """Path -> content digest: index blob ids, re-hashed for files that differ from the index.

    One ``ls-files`` answers it all: ``H`` (``S``: skip-worktree) lines carry the staged mode and blob id, ``R`` marks
    a deleted file, ``C`` a changed one and ``?`` an untracked one (not ignored).
    """
    listed: dict[str, str] = {}
    deleted: set[str] = set()
    dirty: list[str] = []
    out = gitops.run(repo, "ls-files", "-s", "-t", "-c", "-d", "-m", "-o", "--exclude-standard", "-z")
    for record in out.split("\0"):
        tag, _, rest = record.partition(" ")
        if tag == "?":
            dirty.append(rest)
            continue
        meta, _, path = rest.partition("\t")
        fields = meta.split()
        if tag in ("H", "S") and len(fields) == 3 and fields[0] in ("100644", "100755"):
            listed[path] = fields[1]
        elif tag == "R":
            deleted.add(path)
        elif tag == "C":
            dirty.append(path)
    for path in deleted:
        listed.pop(path, None)
    for path in dirty:
        target = repo / path
        if path and path not in deleted and target.is_file() and not target.is_symlink():
            listed[path] = blob_digest(target.read_bytes())
    return listed


def _entry(path: str, digest: str, source: Path | bytes, cache: dict[str, Parsed]) -> FileEntry:
    """A file's entry; Python content is parsed only when its digest is not in the cache."""
    if not path.endswith(".py"):
        return FileEntry(path, digest)
    parsed = cache.get(digest)
    if parsed is None:
        parsed = cache[digest] = _parse(source if isinstance(source, bytes) else source.read_bytes())
    return FileEntry(path, digest, parsed)


def _load_cache(cache_dir: Path | None) -> dict[str, Parsed]:
    """The cache's entries (a copy to add to): read from the file once per version of it in this process."""
    if cache_dir is None:
        return {}
    path = cache_dir / CACHE_NAME
    stamp = file_stamp(path)
    if stamp is None:
        return {}
    held = _HELD.get(path)
    if held is not None and held[0] == stamp:
        return dict(held[1])
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        entries = {digest: Parsed.model_validate(value) for digest, value in raw["entries"].items()}
    except (OSError, ValueError, KeyError, TypeError, ValidationError):
        return {}  # a damaged cache is rebuilt, never trusted
    _HELD[path] = (stamp, entries)
    return dict(entries)


def _save_cache(cache_dir: Path | None, files: dict[str, FileEntry], cache: dict[str, Parsed]) -> None:
    """Write the entries of ``files`` (others are dropped: the cache follows the tree, not its history)."""
    if cache_dir is None:
        return
    live = {e.digest: cache[e.digest] for e in files.values() if e.digest in cache}
    payload = {"version": 1, "entries": {d: p.model_dump(exclude_defaults=True) for d, p in sorted(live.items())}}
    path = cache_dir / CACHE_NAME
    atomic_write(path, json.dumps(payload, sort_keys=True, separators=(",", ":")), durable=False)  # a cache
    stamp = file_stamp(path)
    if stamp is not None:
        _HELD[path] = (stamp, live)


# the cache files this process read or wrote, by path: (their inode, size and mtime then, the entries)
_HELD: dict[Path, tuple[tuple[int, int, int], dict[str, Parsed]]] = {}
