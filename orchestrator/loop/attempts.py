"""What one attempt of a plan step does with the pieces, for the graph's nodes to call.

The run's state and dependencies (``RunState``, ``Deps``), the files of an attempt, the prompts
and bounded schemas sent to models, candidate worktrees, tests in the sandbox (the selected
ones first), tool agents, and the provenance recorded in attestations. Nothing here knows the
graph: these are plain functions over the state the graph keeps.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

from orchestrator.agents import cards
from orchestrator.agents.cards import LoadedCard, Plan, PlanStep
from orchestrator.agents.edits import EditProposal
from orchestrator.errors import EditError, SandboxError, UsageError
from orchestrator.gate import candidates, stages
from orchestrator.loop import runs
from orchestrator.models import runtime
from orchestrator.models.backends import CompletionRequest, ModelBackend
from orchestrator.store import changesets, gitops
from orchestrator.store.reports import TestReport
from orchestrator.store.storage import atomic_write_json
from orchestrator.store.workspace import Workspace

if TYPE_CHECKING:
    from orchestrator.sandbox.base import Sandbox
    from orchestrator.sandbox.pool import SandboxPool

FEEDBACK_LIMIT = 2000
FILE_LIMIT = 12_000


class RunState(TypedDict, total=False):
    """What the checkpointer keeps between nodes: small values only."""

    run_id: str
    repo: str
    goal: str
    auto_approve: bool
    plan_only: bool
    max_steps: int
    started: float
    steps: list[dict[str, Any]]
    step: int
    attempt: int
    feedback: str
    proposal: str
    commit: str
    base: str
    base_generation: int  # the number of the generation ``base`` is
    report: str
    image: str
    changeset: str
    outcome: str
    tokens: Annotated[int, operator.add]
    done: Annotated[list[dict[str, Any]], operator.add]


ModelFactory = Callable[[LoadedCard], ModelBackend]
Events = Callable[[str], None]


@dataclass
class Deps:
    """What the nodes need from outside: the workspace, how to reach models, where to report."""

    ws: Workspace
    model_for: ModelFactory
    on_event: Events = field(default=lambda _text: None)
    sandbox_backend: Any = None  # orchestrator.sandbox.base.SandboxBackend; None: from converge.toml
    sandboxes: SandboxPool | None = None  # the run's sandboxes started ahead (see graph._drive)


# --- the files and values of an attempt --------------------------------------------------------


def attempt_file(ws: Workspace, s: RunState, suffix: str) -> Path:
    return runs.run_dir(ws, s["run_id"]) / f"{s['step'] + 1}-{s['attempt']}.{suffix}"


def current_step(s: RunState) -> PlanStep:
    return PlanStep.model_validate(s["steps"][s["step"]])


def changeset_id(s: RunState) -> str:
    return changesets.changeset_id(s["repo"], s["base"], f"{s['run_id']}/{s['step'] + 1}/{s['attempt']}")


def clip(text: str, limit: int = FEEDBACK_LIMIT) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 20] + "\n... (cut)"


def attempts(cards: dict[str, LoadedCard], s: RunState) -> int:
    step = current_step(s)
    card = cards.get(step.agent)
    return card.card.budgets.attempts if card else 1


# --- helpers of the nodes -----------------------------------------------------------------------


def request(card: LoadedCard, prompt: cards.Prompt, schema: dict[str, Any] | None) -> CompletionRequest:
    sampling = card.card.sampling
    return CompletionRequest(
        system=prompt.system,
        prefix=prompt.stable_prefix,
        user=prompt.user,
        json_schema=schema,
        temperature=sampling.temperature,
        max_tokens=sampling.max_tokens,
        seed=sampling.seed,
    )


def plan_schema(editors: list[str], max_steps: int) -> dict[str, Any]:
    """The plan schema, bounded so constrained decoding always ends: known agents, short fields."""
    schema = Plan.model_json_schema()
    schema["properties"]["goal"]["maxLength"] = 200
    schema["properties"]["steps"]["maxItems"] = max_steps
    step = schema["$defs"]["PlanStep"]["properties"]
    step["title"]["maxLength"] = 120
    step["agent"] = {"type": "string", "enum": editors, "description": "the agent that does the step"}
    step["targets"].update(maxItems=4, items={"type": "string", "maxLength": 120})
    step["acceptance"].update(maxItems=3, items={"type": "string", "maxLength": 160})
    return schema


def edits_schema() -> dict[str, Any]:
    """The edit schema with a bounded number of blocks (string lengths stay free: llama.cpp's
    grammar compiler unrolls each ``maxLength`` into nested rules and refuses long ones)."""
    schema = EditProposal.model_json_schema()
    schema["properties"]["edits"].update(minItems=1, maxItems=6)
    return schema


def repo_map(ws: Workspace, repo: str, goal: str, commit: str) -> str:
    """The map of ``commit`` of the registered repo, ranked for ``goal`` and cut to a quarter of the context window
    (the smaller of the planner's and the coder's: the model's own, or its server's)."""
    from orchestrator.agents.repomap import repo_map_at

    budget = max(256, min(runtime.context_window(ws, role) for role in ("planner", "coder")) // 4)
    return repo_map_at(ws, repo, commit).render(goal, budget)


def with_files(feedback: str, repo_path: Path, targets: list[str], commit: str) -> list[str]:
    """The step's target files as ``commit`` has them, so the coder can copy exact search text; then any feedback.

    Read from the commit the edits will apply to, not from a checkout that may have moved on.
    """
    from orchestrator.agents.edits import normal_path

    rels = []
    for target in targets[:4]:
        try:
            rels.append(normal_path(target))
        except EditError:
            continue  # a target outside the repo shows nothing; apply refuses edits there, saying why
    found = gitops.read_batch(repo_path, commit, [f"{commit}:{rel}" for rel in rels]) if rels else {}
    notes = []
    for rel in rels:
        data = found.get(f"{commit}:{rel}")
        if data is not None:
            text = data.decode("utf-8", errors="replace")[:FILE_LIMIT]
            notes.append(f"Current content of {rel}:\n```\n{text}\n```")
    if feedback:
        notes.append(feedback)
    return notes


def candidate(ws: Workspace, s: RunState, base: str, purpose: str = "") -> candidates.Candidate:
    """The worktree of this attempt at ``base``; ``purpose`` ("v": self-verify) keys a separate one."""
    return candidates.Candidate(
        ws.repo_path(s["repo"]),
        ws.cache / "worktrees" / s["repo"],
        run=s["run_id"],
        step=f"{s['step'] + 1}{purpose}",
        attempt=s["attempt"],
        base=base,
    )


def move_candidate(ws: Workspace, s: RunState, outcome: candidates.Outcome) -> None:
    cand = candidate(ws, s, s["base"])
    cand.commit_sha = s["commit"]
    cand.keep(outcome)


def run_tests(deps: Deps, s: RunState, full: bool, *, warm_next: bool = False) -> tuple[TestReport, str]:
    """Tests of the candidate in the sandbox: the ones that import the change first, then all.

    ``warm_next``: another step follows, so the run's pool starts its next sandbox while
    these tests run.
    """
    ws = deps.ws
    if ws.repo(s["repo"]).is_self:
        from orchestrator.selfhost.checks import verify_self

        with candidate(ws, s, s["commit"], "v") as verify_cand:
            # Converge's own suite, minus what cannot run inside a sandbox (see selfhost)
            label = f"{s['run_id']}-{s['step'] + 1}-{s['attempt']}"
            return verify_self(ws, s["repo"], verify_cand.path, label, deps.sandbox_backend)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="select") as selecting:
        # git reads only, done while the sandbox is taken and its tree moved to the candidate
        selection = selecting.submit(select_tests, ws, s["repo"], s["base"], s["commit"])
        with sandbox_at(deps, s["repo"], s["commit"]) as (_tree, box):
            if deps.sandboxes is not None and warm_next:
                deps.sandboxes.warm(s["commit"])  # the next step starts from it if this one is promoted
            return _tests_in(deps, s, box, selection.result(), full)


def select_tests(ws: Workspace, repo: str, base: str, commit: str) -> list[str]:
    """The test files that import what ``base..commit`` changes, by the candidate's own map.

    The map's cache is keyed by content: only the files the candidate changed are parsed.
    """
    from orchestrator.agents.repomap import repo_map_at

    changed = gitops.changed_paths(ws.repo_path(repo), base, commit)
    return repo_map_at(ws, repo, commit).tests_for(changed)


def _tests_in(deps: Deps, s: RunState, box: Sandbox, selected: list[str], full: bool) -> tuple[TestReport, str]:
    """The selected tests in ``box``, then (when they pass and ``full``) the whole suite."""
    ws = deps.ws
    image = box.spec.image.digest
    if selected:
        first = box.run_tests(selected)
        deps.on_event(f"  selected tests ({len(selected)} file(s)): {first.summary}")
        if not first.ok or not full:
            return first, image
    with _reading_ahead(ws, s):
        report = box.run_tests()
    if ws.config().run.reproducibility_check:
        check_reproducible(deps, s, report, box.run_tests())
    return report, image


@contextmanager
def _reading_ahead(ws: Workspace, s: RunState) -> Iterator[None]:
    """While the block runs (the full suite, seconds): in a thread, the git reads that judging,
    signing and promoting this candidate make. They read objects only, so their answers are
    remembered (:func:`gitops.read_objects`) and those nodes find them ready. A read that fails
    here is simply not remembered: the node that needs it meets the failure and reports it."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as ahead:
        ahead.submit(_read_ahead, ws.repo_path(s["repo"]), s["repo"], s["base"], s["commit"])
        yield


def _read_ahead(repo_path: Path, repo: str, base: str, commit: str) -> None:
    from orchestrator.policy.change import change_from_commits
    from orchestrator.store import sbom

    change_from_commits(repo_path, base, commit, repo)
    gitops.diff(repo_path, base, commit)
    sbom.build(repo_path, repo, commit)


@contextmanager
def sandbox_at(deps: Deps, repo: str, commit: str) -> Iterator[tuple[Path, Sandbox]]:
    """A fresh worktree of ``commit`` with a sandbox over it: the run's pool's, or a pool of its own."""
    from orchestrator.sandbox.pool import SandboxPool

    if deps.sandboxes is not None and deps.sandboxes.repo == repo:
        with deps.sandboxes.at(commit) as found:
            yield found
        return
    with SandboxPool(deps.ws, repo, backend=deps.sandbox_backend) as pool, pool.at(commit) as found:
        yield found


def check_reproducible(deps: Deps, s: RunState, first: TestReport, second: TestReport) -> None:
    """``[run] reproducibility_check``: record whether a second full run gave the same outcomes."""
    identical = (first.ran, first.ok) == (second.ran, second.ok) and all(
        sorted(getattr(first, k)) == sorted(getattr(second, k)) for k in ("passed", "failed", "errored", "skipped")
    )
    atomic_write_json(attempt_file(deps.ws, s, "repro.json"), {"identical": identical})
    deps.on_event(f"  reproducible: {'yes' if identical else 'no'} (second run: {second.summary})")


def test_feedback(report: TestReport) -> str:
    if not report.ran:
        tail = report.command.stderr_tail if report.command else ""
        return clip(f"The tests could not run:\n{tail[-1500:]}")
    failing = ", ".join((report.failed + report.errored)[:10]) or "(no test passed)"
    out = report.command.stdout_tail[-1500:] if report.command else ""
    return clip(f"These tests fail after your change: {failing}\nTest output (end):\n{out}")


def tool_proposal(deps: Deps, s: RunState, card: LoadedCard, base: str) -> EditProposal | None:
    with sandbox_at(deps, s["repo"], base) as (tree, box):
        if deps.sandboxes is not None:
            deps.sandboxes.warm(base)  # the tests of this step's candidate come next
        try:
            return cards.run_tool_agent(card.card, tree, lambda _wt, argv: box.run(list(argv)))
        except (SandboxError, EditError) as exc:
            raise UsageError(f"agent {card.name!r}: {exc}") from exc


def provenance(deps: Deps, cards: dict[str, LoadedCard], s: RunState) -> stages.Provenance:
    step = current_step(s)
    card = cards[step.agent]
    model_sha = None
    if card.card.kind == "model":
        model_sha = deps.model_for(card).identity.sha256
    return stages.Provenance(
        author=f"agent:{card.name}",
        agent_card_sha256=card.digest,
        model_sha256=model_sha,
        run=s["run_id"],
        step=s["step"] + 1,
        attempt=s["attempt"],
    )
