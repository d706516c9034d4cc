"""``converge policy check``: judge a patch, a commit or a working tree of a registered repo.

A patch is applied to the repo's current generation in a scratch worktree under
``<ws>/cache/worktrees/`` and committed with a fixed identity (hooks off); the working tree
is snapshotted through a temporary index. Either way the policy then judges ``base..result``
as git computes it, and the scratch worktree is removed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from orchestrator.errors import UsageError
from orchestrator.policy.baseline import TestComparison
from orchestrator.policy.change import Author, change_from_commits
from orchestrator.policy.engine import evaluate
from orchestrator.policy.model import load_policies
from orchestrator.policy.verdict import Verdict
from orchestrator.store import changesets, generations, gitops, worktrees
from orchestrator.store.reports import TestReport
from orchestrator.store.storage import read_json, read_model
from orchestrator.store.workspace import Workspace

IDENTITY = {
    "GIT_AUTHOR_NAME": "Converge policy check",
    "GIT_AUTHOR_EMAIL": "policy-check@converge.invalid",
    "GIT_COMMITTER_NAME": "Converge policy check",
    "GIT_COMMITTER_EMAIL": "policy-check@converge.invalid",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00Z",
}
_NO_HOOKS = ("-c", "core.hooksPath=/dev/null", "-c", "commit.gpgsign=false")


@dataclass(frozen=True)
class CheckResult:
    """A verdict with the commits it judged."""

    verdict: Verdict
    base: str
    result: str

    def to_json(self) -> dict[str, object]:
        return {**self.verdict.to_json(), "base": self.base, "result": self.result}


def _git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *_NO_HOOKS, *args],
        cwd=cwd,
        env={**os.environ, **IDENTITY, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )


def judge(
    ws: Workspace,
    repo: str,
    base: str,
    result: str,
    tests: TestReport | None = None,
    *,
    baseline: TestComparison | None = None,
    author: Author | None = None,
) -> CheckResult:
    """The policy's verdict on ``base..result`` in registered repo ``repo`` (with what verify found, if given)."""
    record = ws.repo(repo)
    change = change_from_commits(ws.src / repo, base, result, repo, record.is_self, tests, author)
    change = replace(change, baseline=baseline)
    return CheckResult(evaluate(change, load_policies(ws, repo)), change.base, change.result)


def check_changeset(ws: Workspace, repo: str, cs_id: str, tests: TestReport | None = None) -> CheckResult:
    """Judge a changeset again: with its stored test report (or ``tests``), its base comparison and its author."""

    cs = changesets.load(ws, cs_id)
    if cs.repo != repo:
        raise UsageError(f"--changeset {cs_id}: belongs to repo {cs.repo!r}, not {repo!r}")
    if tests is None:
        tests = read_model(changesets.artifact_path(ws, cs.id, changesets.REPORT), TestReport)
    verdict_file = changesets.artifact_path(ws, cs.id, changesets.VERDICT)
    found = read_json(verdict_file).get("baseline") if verdict_file.is_file() else None
    baseline = TestComparison.model_validate(found) if found else None
    author = Author(agent=None if cs.author in ("", "human") else cs.author)
    return judge(ws, repo, cs.base, cs.commit, tests, baseline=baseline, author=author)


@contextlib.contextmanager
def scratch_worktree(ws: Workspace, repo_path: Path, commit: str) -> Iterator[Path]:
    """A detached worktree of ``commit`` under ``<ws>/cache/worktrees/``, removed afterwards."""
    path = ws.cache / "worktrees" / f"policy-check-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    worktrees.add_worktree(repo_path, path, commit)
    try:
        yield path
    finally:
        worktrees.remove_worktree(repo_path, path)


def check_patch(ws: Workspace, repo: str, patch: Path, tests: TestReport | None = None) -> CheckResult:
    """Apply ``patch`` to the current generation of ``repo`` in a scratch worktree and judge it."""
    if not patch.is_file():
        raise UsageError(f"{patch}: no such patch file")
    repo_path = ws.repo_path(repo)
    base = generations.current(ws, repo).commit
    with scratch_worktree(ws, repo_path, base) as tree:
        applied = _git(tree, "apply", "--index", "--whitespace=nowarn", str(patch.absolute()))
        if applied.returncode != 0:
            errors = [ln for ln in applied.stderr.splitlines() if ln.strip()] or ["git apply failed"]
            detail = next((ln for ln in errors if "does not apply" in ln or "No valid patches" in ln), errors[-1])
            raise UsageError(f"{patch}: does not apply to the current generation of {repo!r}: {detail}")
        made = _git(tree, "commit", "--quiet", "--no-verify", "--allow-empty", "-m", f"policy check of {patch.name}")
        if made.returncode != 0:
            raise UsageError(f"{patch}: cannot commit the applied patch: {made.stderr.strip()}")
        result = gitops.run(tree, "rev-parse", "HEAD").strip()
    return judge(ws, repo, base, result, tests)


def check_commit(ws: Workspace, repo: str, commit: str, tests: TestReport | None = None) -> CheckResult:
    """Judge an existing commit of ``repo`` against its first parent."""
    repo_path = ws.repo_path(repo)
    sha = gitops.resolve(repo_path, commit)
    if sha is None:
        raise UsageError(f"--commit {commit}: no such commit in {repo!r}")
    parent = gitops.resolve(repo_path, f"{sha}^")
    if parent is None:
        raise UsageError(f"--commit {commit}: a root commit has no parent to judge it against")
    return judge(ws, repo, parent, sha, tests)


def check_worktree(ws: Workspace, repo: str, tests: TestReport | None = None) -> CheckResult:
    """Judge the uncommitted changes of ``src/<repo>`` against its current generation."""
    repo_path = ws.repo_path(repo)
    head = gitops.resolve(repo_path, generations.HEAD)
    if head is None:
        raise UsageError(f"repo {repo!r} has no {generations.HEAD}; register it again with `converge add`")
    with tempfile.TemporaryDirectory(prefix="converge-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        for args in (("read-tree", head), ("add", "-A")):
            done = _git(repo_path, *args, env=env)
            if done.returncode != 0:
                raise UsageError(f"{repo_path}: cannot snapshot the working tree: {done.stderr.strip()}")
        tree = _git(repo_path, "write-tree", env=env).stdout.strip()
    snap = _git(repo_path, "commit-tree", tree, "-p", head, "-m", "converge policy check: working tree")
    if snap.returncode != 0:
        raise UsageError(f"{repo_path}: cannot snapshot the working tree: {snap.stderr.strip()}")
    return judge(ws, repo, head, snap.stdout.strip(), tests)
