"""A task's own workspace, made in a temporary directory: the user's repos and generations are never touched.

``init_workspace`` lays it out; then come the user's settings that shape a run (models,
sandbox, run budgets with the task's ``max_steps`` and ``timeout``, which policy files), the
user's own agent cards and policies (the setup being evaluated), and the task's ``repo/``,
made a git repository with one commit and registered as generation 0.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from orchestrator.config import CONFIG_FILE, dump_toml
from orchestrator.errors import GitError
from orchestrator.evals.suite import SKIPPED, Task
from orchestrator.store.setup import add_repo, init_workspace
from orchestrator.store.storage import atomic_write
from orchestrator.store.workspace import NAME_RE, Workspace

START_DATE = "2024-01-01T00:00:00+00:00"  # the start commit's id depends on the files only
_IDENTITY = {
    "GIT_AUTHOR_NAME": "Converge eval",
    "GIT_AUTHOR_EMAIL": "eval@converge.localhost",
    "GIT_COMMITTER_NAME": "Converge eval",
    "GIT_COMMITTER_EMAIL": "eval@converge.localhost",
    "GIT_AUTHOR_DATE": START_DATE,
    "GIT_COMMITTER_DATE": START_DATE,
}


def make(user: Workspace, task: Task, folder: Path) -> tuple[Workspace, str]:
    """A new workspace in ``folder`` holding ``task``'s start tree as its one repo; the workspace and repo name."""
    ws = init_workspace(folder / "ws")
    atomic_write(ws.state / CONFIG_FILE, _config_text(user, task))
    for part in ("agents", "policies"):
        for path in sorted((user.root / part).glob("*.toml")):
            (ws.root / part).mkdir(exist_ok=True)
            shutil.copy2(path, ws.root / part / path.name)
    name = task.name if NAME_RE.match(task.name) else "task"
    source = folder / "start" / name
    shutil.copytree(task.repo_dir, source, ignore=shutil.ignore_patterns(*SKIPPED, "*.pyc"))
    commit_start_tree(source)
    add_repo(ws, str(source), name=name)
    return ws, name


def _config_text(user: Workspace, task: Task) -> str:
    cfg = user.config()
    run = cfg.run.model_dump() | {"max_steps": task.spec.max_steps, "wall_time": task.spec.timeout}
    data = {
        "models": cfg.models.model_dump(exclude={"roles"}, exclude_none=True),
        "sandbox": cfg.sandbox.model_dump(exclude={"allow"}),
        "run": run,
        "policy": {"files": cfg.policy.files},
    }
    return "# An eval task's throwaway workspace: the user's settings, the task's budgets.\n" + dump_toml(data)


def commit_start_tree(path: Path) -> str:
    """Make ``path`` a git repository whose one commit holds its files; the commit id."""
    env = {**os.environ, **_IDENTITY}
    base = ["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "--no-verify", "-m", "start"], ["rev-parse", "HEAD"]):
        proc = subprocess.run([*base, *args], cwd=path, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            detail = proc.stderr.strip().splitlines()
            raise GitError(f"git {args[0]} in {path}: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return proc.stdout.strip()
