"""Rollback cost on a 100,000-file repo, measured side by side with `git reset --hard`.

Prints `name: value` lines:
  rollback_ref_ms     moving refs only (the CAS transaction), median
  rollback_full_ms    `generations.rollback` end to end: lock, dirty check, refs, working tree
  git_reset_hard_ms   plain `git reset --hard` between the same two commits
  full_over_reset     rollback_full_ms / git_reset_hard_ms (target <= 1.2)
Usage: python bench/rollback.py [--files N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.store import generations
from orchestrator.store.gitops import RefUpdate, update_refs
from orchestrator.store.setup import add_repo, init_workspace

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "b",
    "GIT_AUTHOR_EMAIL": "b@b",
    "GIT_COMMITTER_NAME": "b",
    "GIT_COMMITTER_EMAIL": "b@b",
}


def sh(cwd: Path, *args: str) -> str:
    return subprocess.run(args, cwd=cwd, env=ENV, check=True, capture_output=True, text=True).stdout.strip()


def make_big_repo(root: Path, files: int) -> Path:
    src = root / "big"
    src.mkdir()
    per_dir = 500
    for i in range(files):
        d = src / f"pkg{i // per_dir}"
        if i % per_dir == 0:
            d.mkdir()
        (d / f"m{i}.py").write_text(f"VALUE = {i}\n")
    sh(src, "git", "init", "-q", "-b", "main")
    sh(src, "git", "add", "-A")
    sh(src, "git", "commit", "-q", "-m", "generation 0")
    return src


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = make_big_repo(root, args.files)
        ws = init_workspace(root / "ws")
        add_repo(ws, str(src), name="big")
        path = ws.src / "big"
        commits = [generations.current(ws, "big").commit]
        for n in range(1, 4):  # a few generations, each touching a handful of files
            for k in range(10):
                (path / f"pkg{k}" / f"m{k * 500}.py").write_text(f"VALUE = {n * 1000 + k}\n")
            sh(path, "git", "commit", "-q", "-am", f"generation {n}")
            commit = sh(path, "git", "rev-parse", "HEAD")
            sh(path, "git", "reset", "-q", "--hard", commits[-1])
            generations.promote(ws, "big", commit, commits[-1])
            commits.append(commit)
        top, prev = commits[-1], commits[-2]

        ref_times, full_times, reset_times = [], [], []
        for _ in range(args.rounds):
            # refs only: the same transaction rollback commits, and back
            t = time.perf_counter()
            update_refs(path, [RefUpdate("refs/converge/bench", prev, top if ref_times else "0" * 40)], "bench")
            ref_times.append(time.perf_counter() - t)
            update_refs(path, [RefUpdate("refs/converge/bench", top, prev)], "bench")
            # full: rollback from the top generation to its parent
            t = time.perf_counter()
            generations.rollback(ws, "big")
            full_times.append(time.perf_counter() - t)
            # put the top generation back as a new generation (not timed)
            generations.promote(ws, "big", top, prev)
            # git reset --hard between the same two commits, both directions as rollback does one
            t = time.perf_counter()
            sh(path, "git", "reset", "-q", "--hard", prev)
            reset_times.append(time.perf_counter() - t)
            sh(path, "git", "reset", "-q", "--hard", top)
        ref_ms = ms(statistics.median(ref_times))
        full_ms = ms(statistics.median(full_times))
        reset_ms = ms(statistics.median(reset_times))
        print(f"files: {args.files}")
        print(f"rollback_ref_ms: {ref_ms}")
        print(f"rollback_full_ms: {full_ms}")
        print(f"git_reset_hard_ms: {reset_ms}")
        print(f"full_over_reset: {round(full_ms / reset_ms, 2)}")


if __name__ == "__main__":
    main()
