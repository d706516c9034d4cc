"""SIGKILL a promote or rollback at random moments: refs and tree are always the old or the new state."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.store import generations
from orchestrator.store.setup import add_repo
from orchestrator.store.workspace import Workspace
from tests.conftest import GIT_ENV, MakeRepo, git

DRIVER = """
import sys
from pathlib import Path
from orchestrator.store import generations
from orchestrator.store.workspace import Workspace
ws = Workspace(Path(sys.argv[1]))
if sys.argv[2] == "promote":
    base = generations.current(ws, "big").commit
    generations.promote(ws, "big", sys.argv[3], base)
else:
    generations.rollback(ws, "big")
"""

FILES = 1500


def _state(ws: Workspace) -> tuple[str, str]:
    path = ws.src / "big"
    head_ref = git(path, "rev-parse", "refs/converge/head")
    cur = generations.current(ws, "big")  # runs recovery of an interrupted operation
    assert cur.commit == git(path, "rev-parse", "refs/converge/head")
    assert git(path, "rev-parse", "HEAD") == cur.commit, "working tree HEAD is not the current generation"
    assert git(path, "status", "--porcelain", "--untracked-files=no") == "", "working tree is a mix"
    return head_ref, cur.commit


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_a_mix(ws: Workspace, make_repo: MakeRepo, tmp_path: Path) -> None:
    src = make_repo({f"d{i % 30}/f{i}.txt": f"old {i}\n" for i in range(FILES)}, name="big-src")
    for i in range(FILES):
        (src / f"d{i % 30}" / f"f{i}.txt").write_text(f"new {i}\n")
    git(src, "checkout", "-q", "-b", "next")
    git(src, "commit", "-qam", "everything changes")
    new_commit = git(src, "rev-parse", "HEAD")
    git(src, "checkout", "-q", "main")
    add_repo(ws, str(src), name="big")
    old_commit = generations.current(ws, "big").commit
    env = {**os.environ, **GIT_ENV}

    def start(op: str) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-c", DRIVER, str(ws.root), op, new_commit]
        return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    t0 = time.monotonic()
    assert start("promote").wait() == 0
    full = time.monotonic() - t0
    assert _state(ws)[1] == new_commit

    rng = random.Random(1234)
    outcomes = {"old": 0, "new": 0}
    for attempt in range(30):
        cur = generations.current(ws, "big").commit
        op = "rollback" if cur == new_commit else "promote"
        expected_after = old_commit if op == "rollback" else new_commit
        proc = start(op)
        time.sleep(rng.uniform(0, full * 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _, now = _state(ws)
        assert now in (cur, expected_after), f"attempt {attempt}: unexpected commit {now}"
        outcomes["new" if now == expected_after else "old"] += 1
    # The random moments must have landed on both sides of the transaction.
    assert outcomes["old"] > 0 and outcomes["new"] > 0, outcomes
