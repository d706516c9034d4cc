"""Apply: a proposal or a patch on the current generation, committed and signed by the workspace key.

Edits are committed in the repository's objects when it allows (no worktree is written), else
in the attempt's candidate worktree; a patch always goes through ``git apply`` in a worktree.
EditError, written for the model or the person, when a change does not apply.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from orchestrator.agents.edits import AppliedEdits, EditProposal, apply_edits
from orchestrator.errors import EditError
from orchestrator.gate.candidates import Candidate, Signature
from orchestrator.gate.provenance import AttemptKey
from orchestrator.signing import keys
from orchestrator.store import gitops, keyfiles
from orchestrator.store.workspace import Workspace


def candidate(ws: Workspace, repo: str, key: AttemptKey, base: str, purpose: str = "") -> Candidate:
    """The worktree of attempt ``key`` at ``base`` (enter it to create); ``purpose`` keys a separate one."""
    return Candidate(
        ws.repo_path(repo),
        ws.cache / "worktrees" / repo,
        run=key.run,
        step=f"{key.step}{purpose}",
        attempt=key.attempt,
        base=base,
    )


def apply_patch(cand: Candidate, patch: bytes, source: str = "patch") -> list[str]:
    """Apply a unified diff in the candidate worktree; returns the paths it touches."""
    if not patch.decode("utf-8", "replace").strip():
        raise EditError(f"{source}: the patch is empty")
    numstat = _git_apply(cand.path, patch, source, "--numstat")
    paths = [line.split("\t", 2)[-1] for line in numstat.splitlines() if line.strip()]
    for path in paths:
        if path == ".git" or path.startswith(".git/") or "/.git/" in path:
            raise EditError(f"{source}: the patch touches {path!r}; changes inside .git/ are not allowed")
    _git_apply(cand.path, patch, source, "--check")
    _git_apply(cand.path, patch, source)
    return paths


def _git_apply(cwd: Path, patch: bytes, source: str, *flags: str) -> str:
    proc = subprocess.run(
        ["git", "apply", "--whitespace=nowarn", *flags, "-"], cwd=cwd, input=patch, capture_output=True, check=False
    )
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise EditError(
            f"{source}: does not apply to the current generation: {detail[0] if detail else 'git apply failed'}"
        )
    return proc.stdout.decode(errors="replace")


def commit_signed(
    ws: Workspace,
    cand: Candidate,
    message: str,
    cs_id: str | None = None,
    paths: Sequence[str] | None = None,
    author: str | None = None,
) -> str:
    """Commit the worktree (only ``paths``, when given), SSH-signed by the workspace key."""
    sign, body = _signed_message(ws, cand.repo, message, cs_id)
    return cand.commit(body, sign=sign, paths=paths, author=author)


def person() -> str | None:
    """The person's git identity (``Name <email>``: their environment, then their git configuration), if any.

    Read outside any registered repo: Converge's clones carry its own identity in their configuration.
    """
    proc = subprocess.run(
        ["git", "var", "GIT_AUTHOR_IDENT"],
        cwd=Path.home() if Path.home().is_dir() else "/",
        capture_output=True,
        text=True,
        check=False,
    )
    ident = proc.stdout.strip()
    if proc.returncode != 0 or "<" not in ident:
        return None
    return ident[: ident.rindex(">") + 1]


def commit_proposal(
    ws: Workspace, cand: Candidate, proposal: EditProposal, message: str, cs_id: str | None = None
) -> tuple[str, AppliedEdits]:
    """Apply ``proposal`` on the candidate's base and commit it, signed: the commit and what was applied.

    The caller keeps the commit under a ref; a worktree made on the way is removed.
    """
    sign, body = _signed_message(ws, cand.repo, message, cs_id)
    done = cand.commit_edits(proposal, body, sign=sign)
    if done is not None:
        return done
    try:
        cand.create()
        applied = apply_edits(cand.path, proposal)
        commit = cand.commit(body, sign=sign, paths=applied.paths)
    finally:
        cand.remove()
    return commit, applied


def _signed_message(ws: Workspace, repo: Path, message: str, cs_id: str | None) -> tuple[Signature, str]:
    """The workspace key's commit signature and the message naming the changeset; ``repo`` learns the
    allowed signers, so that a plain ``git verify-commit`` there needs nothing else."""
    signer = keys.workspace_signer(ws)
    allowed = keyfiles.allowed_signers_path(ws)
    config_file = repo / ".git" / "config"
    if not config_file.is_file() or str(allowed) not in config_file.read_text(encoding="utf-8", errors="replace"):
        gitops.run(repo, "config", "gpg.ssh.allowedSignersFile", str(allowed))
    body = message.strip() or "converge: change"
    if cs_id:
        body += f"\n\nConverge-Changeset: {cs_id}\n"
    return (lambda text: keys.commit_signature(signer, text)), body
