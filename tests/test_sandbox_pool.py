"""Sandboxes started ahead (the run's pool), against the real Docker engine."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from orchestrator.sandbox.env import declared_requirements, requirements_at
from orchestrator.sandbox.pool import SandboxPool
from orchestrator.store import gitops
from orchestrator.store.workspace import Workspace
from orchestrator.store.worktrees import generation_worktree
from tests.conftest import git

pytestmark = pytest.mark.docker


def _containers(ws: Workspace, within: float = 10.0) -> list[str]:
    """The workspace's containers once the engine has removed the closed ones (it does so by itself)."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.closing(docker.from_env()) as engine:
            found = [
                c.id
                for c in engine.containers.list(
                    all=True, ignore_removed=True, filters={"label": [f"converge.workspace={ws.root}"]}
                )
            ]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _worktrees(ws: Workspace) -> list[str]:
    out = git(ws.repo_path("sample"), "worktree", "list", "--porcelain")
    return [line.removeprefix("worktree ") for line in out.splitlines() if line.startswith("worktree ")][1:]


def _commit(ws: Workspace, message: str, changes: dict[str, str | None]) -> str:
    """A commit on top of the repo's HEAD making ``changes`` (None deletes), without touching HEAD."""
    repo = ws.repo_path("sample")
    tree = ws.cache / "worktrees" / "edit"
    git(repo, "worktree", "add", "-q", "--detach", str(tree), "HEAD")
    try:
        for rel, text in changes.items():
            if text is None:
                (tree / rel).unlink()
            else:
                (tree / rel).parent.mkdir(parents=True, exist_ok=True)
                (tree / rel).write_text(text)
        git(tree, "add", "-A")
        git(tree, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message)
        return git(tree, "rev-parse", "HEAD").strip()
    finally:
        git(repo, "worktree", "remove", "--force", str(tree))


def _tracked(tree: Path) -> dict[str, bytes]:
    names = gitops.run(tree, "ls-files", "-z").split("\0")
    return {n: (tree / n).read_bytes() for n in names if n}


def test_a_warmed_sandbox_is_moved_to_the_commit_asked_for(sample_ws: Workspace) -> None:
    base = gitops.resolve(sample_ws.repo_path("sample"), "HEAD")
    assert base is not None
    later = _commit(
        sample_ws,
        "change, add, delete",
        {
            "README.md": "changed\n",
            "inventory/extra/new.py": "VALUE = 1\n",
            "tests/test_report.py": None,
        },
    )
    with SandboxPool(sample_ws, "sample") as pool:
        pool.warm(base)
        with pool.at(later) as (tree, box):
            assert gitops.run(tree, "rev-parse", "HEAD").strip() == later
            assert gitops.run(tree, "status", "--porcelain", "--untracked-files=all") == ""
            assert _tracked(tree)["README.md"] == b"changed\n" and not (tree / "tests" / "test_report.py").exists()
            # what the checkout brought is the sandbox user's to write, like the rest of the worktree
            wrote = box.run(
                ["sh", "-c", "cat README.md && echo more >> inventory/extra/new.py && touch inventory/extra/t"]
            )
            assert wrote.ok, wrote.stderr_tail
            assert wrote.stdout_tail == "changed\n"
            assert (tree / "inventory" / "extra" / "new.py").read_text() == "VALUE = 1\nmore\n"
            assert box.run(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"]).ok
            used = tree
    assert _worktrees(sample_ws) == [] and not used.exists()
    assert _containers(sample_ws) == []


def test_a_standby_for_other_requirements_is_not_used(sample_ws: Workspace) -> None:
    """The candidate declares a dependency: its sandbox needs another test environment than the standby's."""
    base = gitops.resolve(sample_ws.repo_path("sample"), "HEAD")
    assert base is not None
    later = _commit(sample_ws, "needs packaging", {"requirements.txt": "packaging\n"})
    with SandboxPool(sample_ws, "sample") as pool:
        pool.warm(base)
        with pool.at(base) as (_tree, box):
            env_before = box.spec.env_dir
        pool.warm(base)
        with pool.at(later) as (_tree, box):
            assert box.spec.env_dir != env_before
            assert box.run(["python", "-c", "import packaging"]).ok
    assert _worktrees(sample_ws) == [] and _containers(sample_ws) == []


def test_requirements_read_from_a_commit_match_its_checkout(sample_ws: Workspace) -> None:
    pyproject = (
        '[project]\nname = "sample"\nversion = "1"\ndependencies = ["packaging>=20", "sample[dev]"]\n'
        '[project.optional-dependencies]\ntest = ["pydantic"]\ndocs = ["sphinx"]\n'
    )
    files = {"pyproject.toml": pyproject, "requirements-dev.txt": "# x\nruff  # lint\n"}
    commit = _commit(sample_ws, "declares", files)
    with generation_worktree(sample_ws, "sample", commit) as tree:
        assert declared_requirements(tree) == ["packaging>=20", "pydantic", "ruff"]
        assert requirements_at(sample_ws.repo_path("sample"), commit) == declared_requirements(tree)


def test_a_sandbox_started_on_a_guess_the_checkout_contradicts_is_started_again(sample_ws: Workspace) -> None:
    """A symlinked requirements file: git's blob is the link, the checkout's file is what it points to."""
    repo = sample_ws.repo_path("sample")
    base = gitops.resolve(repo, "HEAD")
    assert base is not None
    later = _commit(sample_ws, "linked requirements", {"deps/base.txt": "packaging\n"})
    tree_edit = sample_ws.cache / "worktrees" / "link"
    git(repo, "worktree", "add", "-q", "--detach", str(tree_edit), later)
    (tree_edit / "requirements.txt").symlink_to("deps/base.txt")
    git(tree_edit, "add", "-A")
    git(tree_edit, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "link")
    linked = git(tree_edit, "rev-parse", "HEAD").strip()
    git(repo, "worktree", "remove", "--force", str(tree_edit))
    assert requirements_at(repo, linked) == []
    with SandboxPool(sample_ws, "sample") as pool:
        with pool.at(base) as (_tree, box):
            plain_env = box.spec.env_dir
        pool.warm(linked)
        with pool.at(linked) as (tree, box):
            assert declared_requirements(tree) == ["packaging"]
            assert box.spec.env_dir != plain_env
            assert box.run(["python", "-c", "import packaging"]).ok
    assert _worktrees(sample_ws) == [] and _containers(sample_ws) == []


def test_without_a_standby_a_sandbox_starts_there_and_then(sample_ws: Workspace) -> None:
    head = gitops.resolve(sample_ws.repo_path("sample"), "HEAD")
    assert head is not None
    with SandboxPool(sample_ws, "sample") as pool, pool.at(head) as (tree, box):
        assert box.run(["test", "-f", "pyproject.toml"]).ok and (tree / "pyproject.toml").is_file()
    assert _worktrees(sample_ws) == [] and _containers(sample_ws) == []


def test_a_killed_owner_leaves_no_container_and_its_worktrees_are_swept(sample_ws: Workspace) -> None:
    head = gitops.resolve(sample_ws.repo_path("sample"), "HEAD")
    script = f"""
from pathlib import Path
from orchestrator.store.worktrees import generation_worktree
from orchestrator.sandbox.env import declared_requirements, requirements_at
from orchestrator.sandbox.pool import SandboxPool
from orchestrator.store.workspace import Workspace
pool = SandboxPool(Workspace(Path({str(sample_ws.root)!r})), "sample")
with pool.at({head!r}) as (tree, box):
    pool.warm({head!r})
    print("ready", flush=True)
    box.run(["sleep", "600"])
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.0)  # the standby's container is up too
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert _containers(sample_ws) == []  # their streams closed: the runners exited, the engine removed them
    left = _worktrees(sample_ws)
    assert left and all(f"-{proc.pid}-" in p for p in left)
    with SandboxPool(sample_ws, "sample") as pool, pool.at(head or "HEAD"):
        pass
    assert _worktrees(sample_ws) == [] and _containers(sample_ws) == []
