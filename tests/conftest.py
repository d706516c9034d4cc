"""Shared fixtures: real git repos and real workspaces in temporary directories."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.store.setup import add_repo, init_workspace
from orchestrator.store.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "sample-repo"

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test User",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test User",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd`` and return stdout (tests only)."""
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env={**os.environ, **GIT_ENV}
    ).stdout.strip()


MakeRepo = Callable[..., Path]


@pytest.fixture
def make_repo(tmp_path: Path) -> MakeRepo:
    """Build a real git repo from a mapping of path -> content (default: a copy of the sample repo)."""
    counter = {"n": 0}

    def factory(files: dict[str, str] | None = None, name: str | None = None) -> Path:
        counter["n"] += 1
        path = tmp_path / (name or f"repo{counter['n']}")
        path.mkdir(parents=True)
        if files is None:
            subprocess.run(["cp", "-r", f"{SAMPLE}/.", str(path)], check=True)
        else:
            for rel, text in files.items():
                target = path / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
        git(path, "init", "-q", "-b", "main")
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", "initial")
        return path

    return factory


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """A fresh workspace."""
    return init_workspace(tmp_path / "ws")


@pytest.fixture
def sample_ws(ws: Workspace, make_repo: MakeRepo) -> Workspace:
    """A workspace with the sample repo registered as `sample`."""
    add_repo(ws, str(make_repo(name="sample-src")), name="sample")
    return ws


def converge(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the real `converge` command as a subprocess (end-to-end tests)."""
    full_env = {k: v for k, v in os.environ.items() if k != "CONVERGE_WORKSPACE"}  # only what the test gives
    full_env |= GIT_ENV | (env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"converge {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc
