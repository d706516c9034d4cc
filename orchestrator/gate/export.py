"""Export: the current generation of a repo pushed to its origin as a branch, never a checked-out one."""

from __future__ import annotations

import subprocess
from pathlib import Path

from orchestrator.errors import ConflictError, UsageError
from orchestrator.store import generations, gitops, keyfiles
from orchestrator.store.workspace import Workspace


def _checked_out_branches(remote: str, repo_path: Path) -> set[str]:
    """Branches checked out in the origin: its worktrees' for a local repo, its HEAD for a URL."""
    local = Path(remote).expanduser()
    if local.is_dir():
        out = gitops.run(local, "worktree", "list", "--porcelain", check=False)
        return {ln.removeprefix("branch refs/heads/") for ln in out.splitlines() if ln.startswith("branch refs/heads/")}
    out = gitops.run(repo_path, "ls-remote", "--symref", "origin", "HEAD", check=False)
    return {ln.split()[1].removeprefix("refs/heads/") for ln in out.splitlines() if ln.startswith("ref: ")}


def export(ws: Workspace, repo: str, branch: str | None = None) -> dict[str, object]:
    """Push the current generation of ``repo`` to its origin as ``branch`` (never a checked-out branch)."""
    path = ws.repo_path(repo)
    gen = generations.current(ws, repo)
    branch = branch or f"converge/gen-{gen.number}"
    if gitops.run(path, "check-ref-format", "--branch", branch, check=False).strip() != branch:
        raise UsageError(f"--branch {branch!r}: not a valid branch name")
    remote = gitops.run(path, "remote", "get-url", "origin", check=False).strip()
    if not remote:
        raise UsageError(f"repo {repo!r} has no origin remote to export to")
    if branch in _checked_out_branches(remote, path):
        raise UsageError(f"--branch {branch}: checked out in the origin {remote}; choose another branch name")
    proc = subprocess.run(
        ["git", "push", "--porcelain", "origin", f"{gen.commit}:refs/heads/{branch}"],
        cwd=path,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        said = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(("fatal:", "error:"))]
        reason = "; ".join(said) if said else (lines[-1] if lines else f"git push exited {proc.returncode}")
        raise ConflictError(f"export of {repo} to {remote} as {branch} refused: {reason}")
    allowed = keyfiles.allowed_signers_path(ws)
    verify = f"git -c gpg.ssh.allowedSignersFile={allowed} verify-commit {branch}"  # run in the origin
    return {
        "repo": repo,
        "remote": remote,
        "branch": branch,
        "commit": gen.commit,
        "generation": gen.number,
        "allowed_signers": str(allowed),
        "verify": verify,
    }
