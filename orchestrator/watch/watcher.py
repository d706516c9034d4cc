"""Watching the workspace: repo maps kept fresh on file changes, and the task inbox worked (:class:`Watcher`).

Changed paths reach the repo maps after a quiet period (the debounce); the inbox of ``spec/inbox/`` is
worked by a thread of its own, one task at a time. One watcher per workspace (a lock).
"""

from __future__ import annotations

import threading
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import BaseModel, Field
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from orchestrator.agents.pyparse import FileEntry
from orchestrator.agents.repomap import RepoMap, repo_map_for
from orchestrator.errors import ConvergeError
from orchestrator.loop.factory import model_factory
from orchestrator.loop.state import Deps
from orchestrator.store.workspace import Workspace
from orchestrator.watch.files import RepoEvents, git_ignored, walk_files
from orchestrator.watch.inbox import DepsFactory, Inbox, Log, TaskOutcome

DEBOUNCE = 0.2
MAX_DELAY = 2.0  # a burst of changes longer than this is applied anyway, not postponed forever
REPO_SYNC = 2.0  # how often newly registered repos are picked up
STOP_GRACE = 5.0  # how long a stop waits for the run in progress to reach its next checkpoint
PERSIST_IDLE = 5.0  # refreshed parses are written to the map cache once changes pause this long


class WatchReport(BaseModel):
    """What one pass (or a whole watch session) did, for ``converge watch --json``."""

    observer: str
    maps: dict[str, int]
    refreshed: dict[str, list[str]] = Field(default_factory=dict)
    tasks: list[TaskOutcome] = Field(default_factory=list)


# --- repo map changes ----------------------------------------------------------------------------


@dataclass
class _Pending:
    paths: set[str] = field(default_factory=set)
    dirs: set[str] = field(default_factory=set)
    first: float = 0.0
    last: float = 0.0


class Watcher:
    """Keeps repo maps fresh and runs the task inbox of one workspace; a context manager.

    Used as::

        with Watcher(ws, deps_factory, log=print) as watcher:
            watcher.run_forever()            # until stop(); the CLI calls it on SIGINT/SIGTERM
        with Watcher(ws, deps_factory) as watcher:
            report = watcher.run_once()      # resume in-flight tasks, run the inbox, refresh maps

    Repo maps: a watchdog observer watches each registered repo's working tree (``src/<repo>/``);
    changed paths collect per repo and, after a quiet period (the debounce), go to
    :meth:`RepoMap.update`, so only changed files are re-read. ``.git/``, ``cache/`` and build
    outputs (``__pycache__``, ``*.pyc``, ``build/``, ``dist/``, ``node_modules`` ...) never count.
    If inotify cannot watch (its per-user limit), the watcher falls back to polling and says so.

    Tasks: the :class:`~orchestrator.watch.inbox.Inbox` of ``spec/inbox/``, worked by a thread of its
    own, one task at a time, beside the maps. One watcher per workspace (a lock).
    """

    def __init__(
        self,
        ws: Workspace,
        deps_factory: DepsFactory,
        *,
        debounce: float = DEBOUNCE,
        log: Log | None = None,
        polling: bool = False,
    ) -> None:
        self.ws = ws
        self.deps_factory = deps_factory
        self.debounce = debounce
        self.log: Log = log or (lambda _text: None)
        self.inbox = Inbox(ws, self._deps, self.log)
        self.refreshed: dict[str, list[str]] = {}
        self._polling = polling
        self._maps: dict[str, RepoMap] = {}
        self._unsaved: dict[str, float] = {}
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._observer: Any = None
        self._stack = ExitStack()

    # --- lifecycle

    def __enter__(self) -> Watcher:
        self._stack.enter_context(self.ws.lock("watch", "the task inbox (another `converge watch` runs)"))
        self.inbox.prepare()
        self._sync_repos()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
            self._observer = None
        self._stack.close()

    def stop(self) -> None:
        """Ask :meth:`run_forever` to return: the run in progress stops at its next node, checkpointed."""
        self._stop.set()

    def _deps(self, ws: Workspace) -> Deps:
        return replace(self.deps_factory(ws), stop_requested=self._stop.is_set)

    @property
    def observer_kind(self) -> str:
        """``inotify``, ``polling`` (or another native backend), or ``none`` before it starts."""
        if self._observer is None:
            return "none"
        return "polling" if self._polling else type(self._observer).__name__.removesuffix("Observer").lower()

    def start_observer(self) -> None:
        """Start watching every registered repo's working tree (idempotent); watches are in place on return."""
        if self._observer is not None:
            return
        observer = self._new_observer()
        try:
            for repo in list(self._maps):
                self._schedule(observer, repo)
            observer.start()
        except OSError as exc:
            if self._polling:
                raise
            observer.unschedule_all()
            self._fall_back(exc)
            return
        self._observer = observer

    def _new_observer(self) -> Any:
        if self._polling:
            return PollingObserver(timeout=max(self.debounce, 0.1))
        # inotify: directories made in quick succession (a checkout, a worktree's git records) can
        # be watched twice, once from each event; watchdog keeps one and warns. Harmless, not news.
        twice = "Callback with id .* already exists for watch"
        warnings.filterwarnings("ignore", message=twice, category=RuntimeWarning)
        return Observer(timeout=0.1)

    def _fall_back(self, exc: OSError) -> None:
        """inotify refused (usually fs.inotify.max_user_watches): poll instead, and say so."""
        limit = inotify_watch_limit()
        self.log(
            f"watch: warning: native file watching failed ({exc}); falling back to polling (slower). "
            f"Raise fs.inotify.max_user_watches (now {limit}) to watch natively."
        )
        self._polling = True
        self.start_observer()

    def _schedule(self, observer: Any, repo: str) -> None:
        root = self.ws.src / repo
        observer.schedule(RepoEvents(self._note, repo, root), str(root), recursive=True)

    def _sync_repos(self) -> None:
        """Build the map of each registered repo not yet known (from its cache) and watch it."""
        for record in self.ws.repos():
            if record.name in self._maps or not (self.ws.src / record.name).is_dir():
                continue
            rmap = _live(repo_map_for(self.ws, record.name))
            with self._lock:
                self._maps[record.name] = rmap
            self.log(f"watch: {record.name}: map of {len(rmap.files)} files")
            if self._observer is not None:
                try:
                    self._schedule(self._observer, record.name)
                except OSError as exc:
                    if self._polling:
                        raise
                    self._observer.unschedule_all()
                    self._observer.stop()
                    self._observer.join()
                    self._observer = None
                    self._fall_back(exc)

    # --- repo maps

    def _note(self, repo: str, rel: str, is_dir: bool) -> None:
        now = time.monotonic()
        with self._lock:
            pending = self._pending.setdefault(repo, _Pending(first=now))
            (pending.dirs if is_dir else pending.paths).add(rel)
            pending.last = now

    def entry(self, repo: str, path: str) -> FileEntry | None:
        """The map's current entry for ``path`` of ``repo`` (None: not in the map)."""
        with self._lock:
            return self._maps[repo].files.get(path)

    def map_of(self, repo: str) -> RepoMap:
        """The live map of ``repo``; read it from the thread that calls :meth:`flush`."""
        return self._maps[repo]

    def flush(self, force: bool = False) -> dict[str, list[str]]:
        """Apply noted changes whose burst has settled (all, with ``force``); returns changed paths per repo."""
        now = time.monotonic()
        with self._lock:
            ready = [
                repo
                for repo, p in self._pending.items()
                if force or now - p.last >= self.debounce or now - p.first >= MAX_DELAY
            ]
            batches = {repo: self._pending.pop(repo) for repo in ready}
        changed: dict[str, list[str]] = {}
        for repo, pending in batches.items():
            try:
                found = self._apply(repo, pending)
            except (OSError, ConvergeError) as exc:  # a vanished or unreadable file must not stop the watcher
                self.log(f"watch: {repo}: map update failed: {exc}")
                continue
            if found:
                changed[repo] = found
                self.refreshed.setdefault(repo, [])
                self.refreshed[repo] = sorted({*self.refreshed[repo], *found})
                self.log(f"watch: {repo}: map refreshed ({len(found)} changed: {', '.join(found[:3])})")
        return changed

    def _apply(self, repo: str, pending: _Pending) -> list[str]:
        root = self.ws.src / repo
        rmap = self._maps[repo]
        paths = set(pending.paths)
        for rel_dir in pending.dirs:
            paths.update(p for p in rmap.files if p.startswith(rel_dir + "/"))
            if (root / rel_dir).is_dir():
                paths.update(walk_files(root, rel_dir))
        fresh = sorted(p for p in paths if p not in rmap.files and (root / p).is_file())
        paths -= git_ignored(root, fresh)
        with self._lock:
            found = rmap.update(sorted(paths))
        if found:
            self._unsaved[repo] = time.monotonic()
        return found

    def persist(self, force: bool = False) -> None:
        """Write refreshed parses to ``cache/repomap/<repo>/`` once changes pause (all now, with ``force``).

        Live maps update in memory only: saving the cache means serialising every parse of the repo,
        seconds on a 100,000-file repo, so it is kept off the path from a file change to a fresh map.
        """
        now = time.monotonic()
        for repo, last in list(self._unsaved.items()):
            if not force and now - last < PERSIST_IDLE:
                continue
            del self._unsaved[repo]
            with self._lock:
                rmap = self._maps[repo]
                if not rmap.files:
                    continue
                # RepoMap.update saves its cache when it changes something: re-adding one entry does
                path = next(iter(rmap.files))
                entry = rmap.files.pop(path)
                rmap.cache_dir = self.ws.cache / "repomap" / repo
                try:
                    if not rmap.update([path]):
                        rmap.files[path] = entry
                except OSError as exc:
                    rmap.files[path] = entry
                    self.log(f"watch: {repo}: saving the map cache failed: {exc}")
                finally:
                    rmap.cache_dir = None

    # --- driving

    def run_once(self) -> WatchReport:
        """Resume in-flight tasks, run every inbox task, refresh the maps; then return what happened."""
        self.inbox.resume_in_flight()
        for path in self.inbox.waiting():
            self.inbox.take(path)
        self._sync_repos()
        for repo in list(self._maps):  # tasks may have promoted changes: re-list from git, parse only what changed
            fresh = _live(repo_map_for(self.ws, repo))
            with self._lock:
                self._maps[repo] = fresh
        self.flush(force=True)
        self.persist(force=True)
        return self.report()

    def report(self) -> WatchReport:
        """Maps, refreshed paths and task outcomes so far."""
        with self._lock:
            sizes = {repo: len(m.files) for repo, m in self._maps.items()}
        return WatchReport(observer=self.observer_kind, maps=sizes, refreshed=self.refreshed, tasks=self.inbox.tasks)

    def run_forever(self, tick: float = 0.1) -> WatchReport:
        """Watch and run tasks until :meth:`stop`; the task in progress finishes first."""
        self._stop.clear()
        self.start_observer()
        worker = threading.Thread(target=self._work_inbox, name="converge-watch-tasks", daemon=True)
        worker.start()
        self.log(f"watch: watching {len(self._maps)} repos ({self.observer_kind}) and {self.inbox.folder}")
        next_sync = time.monotonic() + REPO_SYNC
        while not self._stop.wait(tick):
            self.flush()
            self.persist()
            if time.monotonic() >= next_sync:
                self._sync_repos()
                next_sync = time.monotonic() + REPO_SYNC
        worker.join(STOP_GRACE)  # a node still in flight after this is redone when the run resumes
        if worker.is_alive():
            self.log(
                f"watch: the task in progress did not reach a checkpoint in {STOP_GRACE:.0f}s; it resumes next start"
            )
        self.flush(force=True)
        self.persist(force=True)
        return self.report()

    def _work_inbox(self) -> None:
        try:
            self.inbox.resume_in_flight()
        except Exception as exc:  # e.g. a full disk: say so, keep watching
            self.log(f"watch: resuming tasks failed: {exc}")
        while not self._stop.is_set():
            ready = self.inbox.waiting(settled=self.debounce)
            if not ready:
                self._stop.wait(self.debounce)
                continue
            try:
                self.inbox.take(ready[0])
            except Exception as exc:  # moving a task file failed; retried after a pause
                self.log(f"watch: task {ready[0].name}: {exc}")
                self._stop.wait(1.0)


def _live(rmap: RepoMap) -> RepoMap:
    """A map for in-memory updates (its cache was just written by the build; see Watcher.persist)."""
    rmap.cache_dir = None
    return rmap


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def inotify_watch_limit() -> int | None:
    """``fs.inotify.max_user_watches`` on Linux (one watch per watched directory), else None."""
    return _read_int(Path("/proc/sys/fs/inotify/max_user_watches"))


def default_deps_factory(log: Log) -> DepsFactory:
    """Deps with the workspace's real models, loaded once and reused by every task."""
    made: dict[Path, Any] = {}

    def make(ws: Workspace) -> Deps:
        if ws.root not in made:
            made[ws.root] = model_factory(ws)
        return Deps(ws=ws, model_for=made[ws.root], on_event=log)

    return make
