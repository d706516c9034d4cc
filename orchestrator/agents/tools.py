"""Tool agents: a deterministic command (a linter's autofix, a formatter) run in the sandbox on a
candidate's tree, its changes turned into the same edit proposal a model would make.

The tree is put back afterwards, so the edits then pass apply, verify and judge like a model's.
A card with a dry run first asks it what the step would change, limited to the step's kinds of
change and Python files: nothing found, and the step says so; else the command runs on exactly
the files with findings, for exactly those rules.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.agents.cards import AgentCard, LoadedCard
from orchestrator.agents.edits import EditProposal, proposal_from_files
from orchestrator.agents.findings import (
    ToolReport,
    python_files,
    read_report,
    scoped_argv,
    step_families,
    tool_note,
)
from orchestrator.agents.site import Site
from orchestrator.errors import EditError, SandboxError, UsageError
from orchestrator.sandbox.pool import sandbox_at
from orchestrator.store import gitops, worktrees
from orchestrator.store.reports import CommandResult

CommandRunner = Callable[[Path, Sequence[str]], CommandResult]


@dataclass(frozen=True)
class ToolOutcome:
    """A tool step's edits, or None and why there are none."""

    proposal: EditProposal | None
    note: str = ""


def run_tool_agent(
    card: AgentCard, worktree: Path, run: CommandRunner, argv: Sequence[str] | None = None
) -> EditProposal | None:
    """Run a tool card's command (or ``argv``, a scoped form of it) on ``worktree``; its changes as edits
    (None: no change).

    ``run`` executes argv in the sandbox with ``worktree`` mounted as the repo. The worktree
    is put back as it was, so the edits then go through :func:`apply_edits` like a model's.
    """
    if card.kind != "tool" or not card.command:
        raise UsageError(f"agent {card.name!r} is not a tool agent")
    if worktrees.changed_files(worktree):
        raise SandboxError(f"{worktree}: has uncommitted changes; a tool agent needs a clean candidate")
    argv = list(argv or card.command)
    result = run(worktree, argv)
    command = shlex.join(argv)
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
    site: Site, card: LoadedCard, *, title: str = "", goal: str = "", targets: Sequence[str] = ()
) -> ToolOutcome:
    """Run tool agent ``card`` at ``site`` in a sandbox (its pool's when it has one) for the step ``title`` of
    ``goal`` on ``targets``: its edits, or none and why."""
    with sandbox_at(site.ws, site.repo, site.commit, site.pool, site.backend) as (tree, box):
        if site.pool is not None:
            site.pool.warm(site.commit)  # the tests of this step's candidate come next
        try:
            return _scoped_run(card.card, tree, box.run, title, goal, targets)
        except SandboxError as exc:
            raise SandboxError(f"agent {card.name!r}: {exc}") from exc
        except EditError as exc:
            raise EditError(f"agent {card.name!r}: {exc}") from exc


def _scoped_run(
    card: AgentCard,
    tree: Path,
    run: Callable[[list[str]], CommandResult],
    title: str,
    goal: str,
    targets: Sequence[str],
) -> ToolOutcome:
    """The dry run for the step's kinds of change and files; then the command on the files it found."""

    def in_sandbox(_tree: Path, argv: Sequence[str]) -> CommandResult:
        return run(list(argv))

    if card.dry_run is None or card.report is None:  # a card that cannot say what it would do runs as written
        found = run_tool_agent(card, tree, in_sandbox)
        return ToolOutcome(found, "" if found else f"{card.name} changed nothing; the step is done without a change.")
    families = step_families(card, title, goal)
    paths = python_files(targets)
    if targets and not paths:
        return ToolOutcome(None, tool_note(card, families, list(targets)))
    report = ToolReport(
        agent=card.name, findings=read_report(card.report, run(scoped_argv(card, card.dry_run, families, paths)))
    )
    files = report.files()
    if not files:
        return ToolOutcome(None, tool_note(card, families, paths))
    found = run_tool_agent(card, tree, in_sandbox, scoped_argv(card, card.command or [], families, files))
    return ToolOutcome(found, "" if found else tool_note(card, families, files))
