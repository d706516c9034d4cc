"""Tool agents: a deterministic command (a linter's autofix, a formatter) run in the sandbox on a
candidate's tree, its changes turned into the same edit proposal a model would make.

The tree is put back afterwards, so the edits then pass apply, verify and judge like a model's.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from orchestrator.agents.cards import AgentCard, LoadedCard
from orchestrator.agents.edits import EditProposal, proposal_from_files
from orchestrator.errors import EditError, SandboxError, UsageError
from orchestrator.sandbox.base import SandboxBackend
from orchestrator.sandbox.pool import SandboxPool, sandbox_at
from orchestrator.store import gitops, worktrees
from orchestrator.store.reports import CommandResult
from orchestrator.store.workspace import Workspace

CommandRunner = Callable[[Path, Sequence[str]], CommandResult]


def run_tool_agent(card: AgentCard, worktree: Path, run: CommandRunner) -> EditProposal | None:
    """Run a tool card's command on ``worktree`` and return its changes as edits (None: no change).

    ``run`` executes argv in the sandbox with ``worktree`` mounted as the repo. The worktree
    is put back as it was, so the edits then go through :func:`apply_edits` like a model's.
    """
    if card.kind != "tool" or not card.command:
        raise UsageError(f"agent {card.name!r} is not a tool agent")
    if worktrees.changed_files(worktree):
        raise SandboxError(f"{worktree}: has uncommitted changes; a tool agent needs a clean candidate")
    result = run(worktree, card.command)
    command = shlex.join(card.command)
    if result.timed_out or result.oom_killed:
        _restore(worktree)
        raise SandboxError(
            f"agent {card.name!r}: `{command}` was killed ({'timeout' if result.timed_out else 'memory'})"
        )
    if result.exit_code != 0:
        _restore(worktree)
        detail = (result.stderr_tail or result.stdout_tail).strip().splitlines()
        raise SandboxError(
            f"agent {card.name!r}: `{command}` exited {result.exit_code}"
            + (f": {detail[-1]}" if detail else "")
            + (" (is it installed in the sandbox environment?)" if result.exit_code in (126, 127) else "")
        )
    changed = worktrees.changed_files(worktree)
    try:
        before: dict[str, str | None] = {}
        after: dict[str, str] = {}
        for path in changed:
            target = worktree / path
            if not target.is_file():
                raise EditError(f"{card.name} deleted {path}; tool agents may only change files")
            before[path] = _head_text(worktree, path)
            after[path] = target.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EditError(f"{card.name} wrote a file that is not UTF-8 text") from exc
    finally:
        _restore(worktree)
    proposal = proposal_from_files(f"{card.name}: {command}", before, after)
    return proposal if proposal.edits else None


def _restore(worktree: Path) -> None:
    """Put the worktree back at its commit: the tool's changes live on only as edits."""
    gitops.run(worktree, "checkout", "--quiet", "--force", "HEAD", "--", ".")
    gitops.run(worktree, "clean", "-ffdq")


def _head_text(worktree: Path, path: str) -> str | None:
    """A file's committed content, byte-exact (None: not in HEAD)."""
    proc = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=worktree, capture_output=True, check=False)
    return proc.stdout.decode("utf-8") if proc.returncode == 0 else None


def propose_with_tool(
    ws: Workspace,
    repo: str,
    card: LoadedCard,
    base: str,
    pool: SandboxPool | None = None,
    backend: SandboxBackend | None = None,
) -> EditProposal | None:
    """Run tool agent ``card`` on ``base`` in a sandbox (``pool``'s when given); its edits, or None: no change."""
    with sandbox_at(ws, repo, base, pool, backend) as (tree, box):
        if pool is not None:
            pool.warm(base)  # the tests of this step's candidate come next
        try:
            return run_tool_agent(card.card, tree, lambda _wt, argv: box.run(list(argv)))
        except SandboxError as exc:
            raise SandboxError(f"agent {card.name!r}: {exc}") from exc
        except EditError as exc:
            raise EditError(f"agent {card.name!r}: {exc}") from exc
