"""What the MCP tools take and answer: argument types with descriptions for the model, and typed results.

The SDK turns the ``Annotated`` argument types into each tool's input schema and the result
models into its output schema; the descriptions here are what the calling model reads.
JSON keys follow DESIGN's (``id``, ``repo``, ``status``, ``generation``, ``verdict``...).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from orchestrator.mcp import guard
from orchestrator.store.runs import RunStatus, StepOutcome

RepoArg = Annotated[str, Field(description="Name of a repo registered in the workspace (the `repos` tool lists them).")]
GenerationArg = Annotated[
    int | None, Field(description="Generation number to read (default: the current one; `generations` lists them).")
]
ChangesetArg = Annotated[str, Field(description="Changeset id, or a unique prefix of at least 4 characters.")]
RunArg = Annotated[str, Field(description="Run id, as `refine` returned it.")]
PathArg = Annotated[str, Field(description="File path relative to the repo root, e.g. 'src/app.py'.")]
GoalArg = Annotated[
    str, Field(description="What you are about to change, in words; files that matter for it come first.")
]
BudgetArg = Annotated[int, Field(description="Size of the map in tokens (256 to 50000).")]


class RepoInfo(BaseModel):
    """A registered repo and its current generation."""

    name: str
    generation: int = Field(description="number of the current generation")
    commit: str = Field(description="commit of the current generation")
    is_self: bool = Field(description="true for Converge's own source")


class Repos(BaseModel):
    """The repos registered in the workspace."""

    repos: list[RepoInfo]


class GenerationInfo(BaseModel):
    """One generation: a numbered, promoted state of a repo."""

    number: int
    commit: str
    parent: int | None
    status: Literal["current", "superseded", "failed", "rolled-back"]
    changesets: list[str] = Field(description="the changesets this generation promoted")
    created: str


class Generations(BaseModel):
    """A repo's lineage, oldest first."""

    repo: str
    current: int
    generations: list[GenerationInfo]


class FileContent(BaseModel):
    """A text file as committed in one generation."""

    repo: str
    path: str
    generation: int
    commit: str
    size: int = Field(description="bytes of the whole file")
    truncated: bool = Field(description="true when only the first part of the file is in `content`")
    content: str


class RepoMapText(BaseModel):
    """A ranked outline of a generation: files, their classes and functions, their imports and tests."""

    repo: str
    generation: int
    commit: str
    files: int = Field(description="files in the generation")
    map: str


class SubmitOutcome(BaseModel):
    """What the gate made of a submitted patch."""

    id: str = Field(description="the changeset id")
    repo: str
    status: Literal["pending", "approved", "rejected"]
    verdict: str = Field(description="the policy's decision: approve, review or reject")
    risk: str
    reasons: list[str] = Field(description="why the policy did not simply approve")
    tests: str = Field(description="test summary from the sandbox")
    commit: str = Field(description="the signed commit holding the change")
    base: str = Field(description="commit of the generation the patch was applied to")
    generation: int | None = Field(description="the generation it became, once promoted")
    attestation: str = Field(description="the signed DSSE attestation, relative to the workspace")
    reason: str | None = Field(description="why it was rejected, when it was")
    next: str = Field(description="what happens next, and who does it")


class ChangesetView(BaseModel):
    """A changeset: its status, the policy's verdict, its tests, and whether its signatures verify."""

    id: str
    repo: str
    run: str | None
    status: Literal["pending", "approved", "rejected"]
    verdict: str
    risk: str
    reasons: list[str]
    tests: str
    tests_failed: list[str] = Field(description="tests that failed or errored in the sandbox")
    commit: str
    base: str
    generation: int | None
    attestation: str
    verified: bool = Field(description="commit signature, attestation signature and every digest check out")
    problems: list[str] = Field(description="what does not verify, when something does not")
    message: str
    author: str
    created: str
    decided_by: str | None
    reason: str | None
    diff: str
    diff_truncated: bool


class RunStarted(BaseModel):
    """A refinement run started in the background."""

    id: str
    repo: str
    goal: str
    status: Literal["starting"] = "starting"
    next: str


class RunProgress(BaseModel):
    """Where a refinement run is: its status, its steps so far, its changesets."""

    id: str
    repo: str
    goal: str
    status: RunStatus | Literal["starting"]
    steps_planned: int
    steps: list[StepOutcome]
    changesets: list[str]
    waiting_on: str | None = Field(description="the changeset a person has to decide on before the run goes on")
    reason: str
    log_tail: str = Field(description="the last lines of the run's progress log")
    next: str


class SandboxOutput(BaseModel):
    """A command's result in a fresh sandbox over the current generation."""

    repo: str
    generation: int
    command: list[str]
    exit_code: int
    timed_out: bool
    oom_killed: bool
    seconds: float
    stdout_tail: str
    stderr_tail: str
    truncated: bool = Field(description="true when output before the tails was dropped")


class Capabilities(BaseModel):
    """What an agent can and cannot do through this server."""

    can: list[str]
    cannot: list[str]
    limits: dict[str, int]


CAN = [
    "list the repos and their generations (repos, generations)",
    "read any file of any generation and a ranked map of a repo (read_file, repo_map)",
    "send a patch through the full gate: sandbox tests, policy, signing (submit_patch); "
    "the result is a signed changeset that waits for a person unless the policy rejects it",
    "look at a changeset: status, verdict, tests, signature and attestation checks (changeset)",
    "start a refinement run by Converge's own local models and follow it (refine, run)",
    "run a command in a fresh, network-less sandbox over the current generation (sandbox_run)",
]
CANNOT = [
    "approve or reject a changeset: a person does, with `converge changeset approve ID` / `reject ID` "
    "or on the review page",
    "promote anything: a change becomes a generation only when a person approves it",
    "change a policy, an agent card, the keys or the workspace configuration",
    "roll back or roll forward a generation: a person does, with `converge rollback REPO`",
    "write to the user's checkout or push anywhere: every change goes through the gate",
]
LIMITS = {
    "patch_bytes": guard.MAX_PATCH_BYTES,
    "message_chars": guard.MAX_MESSAGE_CHARS,
    "goal_chars": guard.MAX_GOAL_CHARS,
    "file_bytes_returned": guard.MAX_FILE_BYTES,
    "output_tail_chars": guard.MAX_TAIL_CHARS,
    "max_steps": guard.MAX_STEPS,
}
