"""Small git helpers for tests that need commits made behind Converge's back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import GIT_ENV


def commit_on(repo: Path, base: str, files: dict[str, str | None], message: str = "change") -> str:
    """Make a commit on top of ``base`` with ``files`` written (None deletes), without touching the work tree."""
    index = repo / ".git" / f"test-index-{os.getpid()}"
    env = {**os.environ, **GIT_ENV, "GIT_INDEX_FILE": str(index)}

    def g(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, env=env, input=stdin, check=True, capture_output=True, text=True
        ).stdout.strip()

    try:
        g("read-tree", base)
        for rel, text in files.items():
            if text is None:
                g("update-index", "--remove", "--force-remove", rel)
            else:
                blob = g("hash-object", "-w", "--stdin", stdin=text)
                g("update-index", "--add", "--cacheinfo", f"100644,{blob},{rel}")
        tree = g("write-tree")
        return g("commit-tree", tree, "-p", base, "-m", message)
    finally:
        index.unlink(missing_ok=True)
