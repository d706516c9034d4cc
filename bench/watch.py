"""`converge watch` on a generated 100,000-file workspace repo. Prints `name: value` lines:

  files, dirs                    size of the generated repo (dirs: what inotify needs one watch each for)
  inotify_max_user_watches       the kernel limit (fs.inotify.max_user_watches); a warning when too low
  observer                       the observer in use (inotify, or polling after a fallback)
  map_build_s                    building the repo map when the watcher starts (cold: every file parsed)
  observer_start_s               starting the observer (inotify adds one watch per directory)
  rss_before_mb ...              VmRSS of this process before the watcher, after the map, after the observer
  observer_rss_mb                what starting the observer added
  watch_latency_ms               median time from a file write to the map showing it (target < 1000)
  watch_latency_max_ms           the slowest of those writes
Usage: python bench/watch.py [--files N] [--samples K]

Measured on 2 cores, 100,000 files in 1,282 directories: map_build_s 32 (cold), observer_start_s 0.6,
observer_rss_mb 0.2 (the map itself: ~137 MB), watch_latency_ms 270 (max 353; 200 of it is the debounce).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.loop.state import Deps
from orchestrator.store import runs
from orchestrator.store.generations import record_initial
from orchestrator.store.setup import init_workspace
from orchestrator.store.workspace import RepoRecord, Workspace
from orchestrator.watch.watcher import Watcher, inotify_watch_limit

PER_DIR = 100
GIT_ENV = {"GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "b@localhost"}
GIT_ENV |= {"GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "b@localhost"}


def generate(root: Path, files: int) -> None:
    """``files`` files, ``PER_DIR`` a directory, three in five Python; one commit."""
    for n in range(files):
        folder = root / f"pkg{n // (PER_DIR * 100):02d}" / f"sub{(n // PER_DIR) % 100:02d}"
        if n % PER_DIR == 0:
            folder.mkdir(parents=True)
            (folder / "__init__.py").write_text("")
        if n % 5 < 3:
            (folder / f"mod{n}.py").write_text(
                f'"""Module {n}."""\n\n\ndef value{n}(x: int) -> int:\n    return x + {n}\n'
            )
        else:
            (folder / f"note{n}.md").write_text(f"# Note {n}\n\nGenerated.\n")
    env = {**os.environ, **GIT_ENV}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "generated"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)


def register(ws: Workspace, repo: Path) -> None:
    """Register the repo generated in place (`add_repo` would clone all of it a second time)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True)
    record_initial(ws, repo.name, repo, head.stdout.strip())
    ws._save_repos([*ws.repos(), RepoRecord(name=repo.name, source=str(repo), added=runs.now())])


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def count_dirs(root: Path) -> int:
    return sum(len(dirnames) for _path, dirnames, _files in os.walk(root)) + 1


def no_tasks(_ws: Workspace) -> Deps:
    raise RuntimeError("the watch bench runs no tasks")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        ws = init_workspace(Path(tmp) / "ws")
        repo = ws.src / "big"
        generate(repo, args.files)
        register(ws, repo)
        print(f"generate_s: {time.perf_counter() - start:.1f}", flush=True)
        print(f"files: {args.files}")
        dirs = count_dirs(repo)
        print(f"dirs: {dirs}")
        limit = inotify_watch_limit()
        print(f"inotify_max_user_watches: {limit}")
        if limit is not None and limit < dirs * 2:
            print(f"warning: fs.inotify.max_user_watches={limit} is low for {dirs} directories; raise it", flush=True)

        before = rss_mb()
        start = time.perf_counter()
        with Watcher(ws, no_tasks, log=lambda text: print(f"# {text}", file=sys.stderr)) as watcher:
            print(f"map_build_s: {time.perf_counter() - start:.2f}")
            after_map = rss_mb()
            start = time.perf_counter()
            watcher.start_observer()
            print(f"observer_start_s: {time.perf_counter() - start:.2f}")
            after_observer = rss_mb()
            print(f"observer: {watcher.observer_kind}")
            if watcher.observer_kind == "polling":
                print("warning: inotify failed; the polling observer is in use (see the log above)")
            print(f"rss_before_mb: {before:.1f}")
            print(f"rss_after_map_mb: {after_map:.1f}")
            print(f"rss_after_observer_mb: {after_observer:.1f}")
            print(f"observer_rss_mb: {after_observer - after_map:.1f}", flush=True)

            thread = threading.Thread(target=watcher.run_forever, daemon=True)
            thread.start()
            latencies = [probe(watcher, repo, args.files, i) for i in range(args.samples)]
            watcher.stop()
            thread.join()
        median = statistics.median(latencies)
        print(f"watch_latency_ms: {median:.0f}")
        print(f"watch_latency_max_ms: {max(latencies):.0f}")
        print(f"watch_latency_target_met: {median < 1000}")


def probe(watcher: Watcher, repo: Path, files: int, i: int) -> float:
    """Append a function to one module and time until the map lists it."""
    n = (i * 7919 * 5) % files // 5 * 5  # a Python module (n % 5 == 0), spread over the tree
    rel = f"pkg{n // (PER_DIR * 100):02d}/sub{(n // PER_DIR) % 100:02d}/mod{n}.py"
    name = f"probe_{i}"
    time.sleep(0.3)
    start = time.perf_counter()
    with (repo / rel).open("a") as handle:
        handle.write(f"\n\ndef {name}() -> None:\n    pass\n")
    deadline = start + 10
    while time.perf_counter() < deadline:
        entry = watcher.entry("big", rel)
        if entry and entry.parsed and any(s.name == name for s in entry.parsed.symbols):
            return (time.perf_counter() - start) * 1000
        time.sleep(0.002)
    return float("inf")


if __name__ == "__main__":
    main()
