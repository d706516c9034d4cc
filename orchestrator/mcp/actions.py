"""The MCP tools that act: a patch through the gate, a command in a sandbox.

``submit_patch`` is ``converge submit``: the patch is applied on the current generation in a
candidate worktree, tested in the sandbox, judged by the policy and signed; what the policy
does not reject waits for a person. Nothing here promotes: the agent never gets past review.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from orchestrator.errors import UsageError
from orchestrator.gate.submit import submit
from orchestrator.mcp import guard
from orchestrator.mcp.values import RepoArg, SandboxOutput, SubmitOutcome
from orchestrator.sandbox import factory
from orchestrator.store import changesets, generations, worktrees
from orchestrator.store.changesets import Changeset
from orchestrator.store.storage import atomic_write
from orchestrator.store.workspace import Workspace

PatchArg = Annotated[
    str,
    Field(
        description="A unified diff against the repo's current generation (the output of `git diff`), "
        "paths relative to the repo root; at most 2 MiB.",
        json_schema_extra={"maxLength": guard.MAX_PATCH_BYTES},
    ),
]
MessageArg = Annotated[str, Field(description="Commit message: what the change does and why.")]
CommandArg = Annotated[
    list[str],
    Field(
        description="The program and its arguments, e.g. ['python', '-m', 'pytest', '-q']; "
        "for pipes or redirections use ['sh', '-c', '...'].",
    ),
]
TimeoutArg = Annotated[
    float | None, Field(description="Seconds before the command is killed (default: the workspace's sandbox timeout).")
]


def next_step(cs: Changeset) -> str:
    """What happens to ``cs`` now, said for the agent that submitted it."""
    if cs.status == "rejected":
        return f"rejected: {cs.reason}. Change the patch and submit it again."
    if cs.status == "approved":
        return f"approved and promoted: generation {cs.generation} of {cs.repo} is current."
    return (
        f"pending: a person reviews it and approves (`converge changeset approve {cs.id}`) or rejects it; "
        "you cannot. Follow it with the `changeset` tool."
    )


def outcome(cs: Changeset) -> SubmitOutcome:
    """The changeset as `submit_patch` answers it."""
    return SubmitOutcome(
        id=cs.id,
        repo=cs.repo,
        status=cs.status,
        verdict=cs.verdict,
        risk=cs.risk,
        reasons=cs.reasons,
        tests=cs.tests,
        commit=cs.commit,
        base=cs.base,
        generation=cs.generation,
        attestation=cs.attestation,
        reason=cs.reason,
        next=next_step(cs),
    )


def _tail(text: str) -> str:
    return text[-guard.MAX_TAIL_CHARS :]


class GateTools:
    """Tools that send work through Converge's gate or its sandbox (docstrings: what the model reads)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def submit_patch(self, repo: RepoArg, patch: PatchArg, message: MessageArg) -> SubmitOutcome:
        """Propose a change to a repo. Converge applies the patch to the current generation in an
        isolated worktree, runs the repo's tests in a network-less sandbox, judges the change with
        its policy and signs it; the result is a changeset that waits for a person's approval
        (or is rejected by the policy, with reasons). It takes as long as the tests. The same
        patch submitted twice is the same changeset. Nothing changes in the repo until a person
        approves; you cannot approve."""
        self.ws.repo(repo)
        data = guard.patch_bytes(patch)
        message = guard.text("message", message, guard.MAX_MESSAGE_CHARS)
        # kept under the cache, named by content: the gate reads a file, and a refusal names one
        patch_file = self.ws.cache / "mcp" / "patches" / f"{changesets.sha256(data)[:16]}.patch"
        if not patch_file.exists():
            atomic_write(patch_file, data, durable=False)
        return outcome(submit(self.ws, repo, patch_file, message, auto_approve=False))  # never auto-approved

    def sandbox_run(self, repo: RepoArg, command: CommandArg, timeout: TimeoutArg = None) -> SandboxOutput:
        """Run a command in a fresh sandbox over a checkout of the repo's current generation: no
        network, read-only root, resource limits; the checkout is thrown away afterwards, so
        nothing the command writes is kept. Returns the exit code and the tails of stdout and
        stderr. Use it to run tests, linters or scripts before you submit a patch."""
        self.ws.repo(repo)
        argv = guard.command(command)
        limit = self.ws.config().sandbox.timeout
        if timeout is not None and not 0 < timeout <= limit:
            raise UsageError(f"timeout {timeout:g}: must be more than 0 and at most {limit:g} seconds")
        gen = generations.current(self.ws, repo)
        with (
            worktrees.generation_worktree(self.ws, repo, gen.commit) as tree,
            factory.open_sandbox(self.ws, repo, tree, label="mcp") as box,
        ):
            result = box.run(argv, timeout)
        return SandboxOutput(
            repo=repo,
            generation=gen.number,
            command=argv,
            exit_code=result.exit_code,
            timed_out=result.timed_out,
            oom_killed=result.oom_killed,
            seconds=round(result.duration, 3),
            stdout_tail=_tail(result.stdout_tail),
            stderr_tail=_tail(result.stderr_tail),
            truncated=result.truncated
            or len(result.stdout_tail) > guard.MAX_TAIL_CHARS
            or len(result.stderr_tail) > guard.MAX_TAIL_CHARS,
        )
