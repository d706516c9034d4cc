"""Running a model card: its prompt, the model call and a validated, typed answer — for planner and coder alike.

``plan_for`` and ``propose_for`` are what the loop calls. Both ground what the model may name in the
commit the work applies to: the plan's targets are paths of the repo map (and a tool the goal asks for
comes first, with the files its dry run found); the coder's paths are the files it is shown, its search
texts runs of their lines, its prompt fitted to the model's context window. :func:`run_card` bounds the
answer so constrained decoding always ends, calls the model (retrying with the error fed back) and
returns the answer as a pydantic value with the completion that produced it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from orchestrator.agents import findings
from orchestrator.agents.cards import AgentCard, LoadedCard, Plan, PlanStep, Sampling
from orchestrator.agents.coding import coder_view, tokens
from orchestrator.agents.edits import EditProposal
from orchestrator.agents.grounding import (
    ForcedStep,
    Ground,
    PlanRejected,
    check_plan,
    edits_grammar,
    edits_schema,
    plan_feedback,
    plan_schema,
    with_forced_targets,
)
from orchestrator.agents.prompts import Prompt, build_prompt
from orchestrator.agents.repomap import RepoMap, repo_map_at
from orchestrator.agents.site import Site
from orchestrator.errors import ModelError
from orchestrator.models import runtime
from orchestrator.models.backends import Completion, CompletionRequest, ModelBackend
from orchestrator.models.runtime import complete_json
from orchestrator.store.workspace import Workspace

MAX_OFFERED = 400  # paths a plan may name, at most (an enumeration in the grammar)
A = TypeVar("A", bound=BaseModel)


@dataclass(frozen=True)
class Answer(Generic[A]):
    """A validated answer and the completion it came from (tokens, seconds)."""

    value: A
    completion: Completion


@dataclass(frozen=True)
class Planned:
    """The plan, the dry runs it was made with, and the steps taken out of it: invalid ones (naming what the
    repo lacks) and repeats of a tool's work, each with why."""

    answer: Answer[Plan]
    reports: list[findings.ToolReport] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    repeats: list[str] = field(default_factory=list)


def run_card(
    card: LoadedCard,
    backend: ModelBackend,
    prompt: Prompt,
    schema: dict[str, Any],
    answer: type[A],
    retries: int,
    **extra: Any,
) -> Answer[A]:
    """Ask ``backend`` with ``card``'s sampling, constrained by ``schema`` (and ``extra`` request fields such as
    a grammar); ModelError (for the model) if no answer validates as ``answer`` within ``retries``."""
    return _ask(card, backend, _request(card, prompt, schema, **extra), schema, answer, retries)


def _request(
    card: LoadedCard, prompt: Prompt, schema: dict[str, Any], sampling: Sampling | None = None, **extra: Any
) -> CompletionRequest:
    sampling = sampling or card.card.sampling
    return CompletionRequest(
        system=prompt.system,
        prefix=prompt.stable_prefix,
        user=prompt.user,
        json_schema=schema,
        temperature=sampling.temperature,
        max_tokens=sampling.max_tokens,
        seed=sampling.seed,
        **extra,
    )


def _ask(
    card: LoadedCard,
    backend: ModelBackend,
    request: CompletionRequest,
    schema: dict[str, Any],
    answer: type[A],
    retries: int,
) -> Answer[A]:
    value, completion = complete_json(backend, request, schema, retries=retries)
    try:
        return Answer(answer.model_validate(value), completion)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "the answer"
        raise ModelError(f"Your answer does not match the schema: {where}: {err['msg']}") from exc


def window_of(ws: Workspace, card: LoadedCard) -> int:
    """The context window ``card``'s prompts must fit: its role's model's (``context_length`` for a card
    bound to a model by name)."""
    kind, name = card.card.binding()
    return runtime.context_window(ws, name) if kind == "role" else ws.config().models.context_length


# --- the planner ------------------------------------------------------------------------------------


def editors_of(cards: dict[str, LoadedCard]) -> list[str]:
    """The agents that can do a step, tool agents first (deterministic tools are cheaper and safer)."""
    return sorted(
        (n for n, c in cards.items() if c.card.role in ("coder", "tool")),
        key=lambda n: (cards[n].card.kind != "tool", n),
    )


def plan_for(
    site: Site, card: LoadedCard, backend: ModelBackend, cards: dict[str, LoadedCard], *, goal: str, max_steps: int
) -> Planned:
    """The planner's plan for ``goal`` at ``site``: the map ranked for the goal, the tool agents' dry runs,
    the plan grounded in both; PlanRejected when no step of it can be carried out."""
    rmap = repo_map_at(site.ws, site.repo, site.commit)
    window = window_of(site.ws, card)
    repo_map, shown = rmap.render_shown(goal, max(256, window // 4), tokens)
    reports = findings.dry_runs(site.ws, site.repo, site.commit, cards, site.pool, site.backend)
    asked = findings.matched_tools(goal, cards)
    # a tool agent does only the kinds of change it declares: it is offered for the goals that ask for them
    editors = [e for e in editors_of(cards) if cards[e].card.kind != "tool" or e in asked]
    forced = forced_steps(goal, cards, reports)
    ground = Ground(offered=offered_paths(rmap, goal, shown, reports), known=frozenset(rmap.files))
    agents = findings.summary(cards, reports, editors)
    answer, invalid, repeats = plan(
        card,
        backend,
        editors,
        goal=goal,
        repo_map=repo_map,
        agents=agents,
        max_steps=max_steps,
        ground=ground,
        forced=forced,
        tool_cards={f.agent: cards[f.agent].card for f in forced},
    )
    return Planned(answer, reports, invalid, repeats)


def forced_steps(goal: str, cards: dict[str, LoadedCard], reports: Sequence[findings.ToolReport]) -> list[ForcedStep]:
    """First steps for the tool agents whose declared kinds of change the goal asks for, on the files their dry
    runs found for them (those under the files or folders the goal names, if it names any): the tools that
    found something, else the first (it will say there is nothing to change, rather than have anyone invent
    a change)."""
    by_agent = {r.agent: r for r in reports}
    forced = []
    for name, families in findings.matched_tools(goal, cards).items():
        report = by_agent.get(name)
        files = report.files(findings.rules_of(families) or None) if report is not None else []
        forced.append(ForcedStep(agent=name, targets=tuple(named_in(goal, files) or files)))
    found = [f for f in forced if f.targets]
    return found or forced[:1]


def named_in(goal: str, paths: Sequence[str]) -> list[str]:
    """The paths the goal names, by themselves, by file name or by a folder they are in."""
    words = {w.strip("./`'\"").rstrip("/") for w in goal.split()}
    words.discard("")
    return [
        p for p in paths if p in words or p.rsplit("/", 1)[-1] in words or any(p.startswith(w + "/") for w in words)
    ]


def offered_paths(
    rmap: RepoMap, goal: str, shown: Sequence[str], reports: Sequence[findings.ToolReport]
) -> tuple[str, ...]:
    """The paths a plan may name: those the goal names, those the map shows, those with findings."""
    named = [p for p in rmap.files if p in goal]
    found = [f.path for r in reports for f in r.findings if f.path in rmap.files]
    return tuple(dict.fromkeys([*sorted(named), *shown, *found]))[:MAX_OFFERED]


def plan(
    card: LoadedCard,
    backend: ModelBackend,
    editors: list[str],
    *,
    goal: str,
    repo_map: str,
    agents: str = "",
    max_steps: int,
    ground: Ground,
    forced: Sequence[ForcedStep] = (),
    tool_cards: dict[str, AgentCard] | None = None,
) -> tuple[Answer[Plan], list[str], list[str]]:
    """The planner's plan, its invalid steps and its repeats of a tool's work (both left out, each with why).

    Each round of the card's attempts whose plan names what the repo lacks is answered with the problems;
    PlanRejected if no step survives."""
    tool_cards = tool_cards or {}
    prompt = build_prompt(card.card, goal=goal, repo_map=repo_map, agents=agents)
    request = _request(card, prompt, plan_schema(editors, max_steps, ground, forced))
    checked_against = plan_schema(editors, max_steps, None, forced)  # paths: check_plan says what is wrong
    problems: list[str] = []
    for _ in range(card.card.budgets.attempts):
        found = _ask(card, backend, request, checked_against, Plan, retries=1)
        answered = found.value.model_copy(update={"steps": with_forced_targets(found.value.steps, forced)})
        checked = check_plan(answered, editors, ground)
        problems = checked.problems
        if not problems:
            break
        request = request.with_followup(found.completion.text, plan_feedback(problems))
    if not checked.plan.steps:
        raise PlanRejected("the plan has no step that can be carried out: " + "; ".join(problems)[:400])
    steps, repeats = without_repeats(checked.plan.steps[:max_steps], forced, tool_cards)
    return Answer(checked.plan.model_copy(update={"steps": steps}), found.completion), problems, repeats


def without_repeats(
    steps: Sequence[PlanStep], forced: Sequence[ForcedStep], tools: dict[str, AgentCard]
) -> tuple[list[PlanStep], list[str]]:
    """The steps after the forced tool steps, less those that ask again for what a forced tool does (a small
    planner repeats the goal as a coder step after the tool's): why each was left out."""
    kept, notes = list(steps[: len(forced)]), []
    planned = [f.agent for f in forced]
    for number, step in enumerate(steps[len(forced) :], start=len(forced) + 1):
        repeated = [t for t in planned if t == step.agent or findings.families_for(tools[t], step.title)]
        if repeated:
            notes.append(f"Step {number} ({step.title!r}) asks again for what {repeated[0]} does; left out")
        else:
            kept.append(step)
    return kept, notes


# --- the coder ---------------------------------------------------------------------------------------


def propose_for(
    site: Site,
    card: LoadedCard,
    backend: ModelBackend,
    *,
    goal: str,
    step: PlanStep,
    feedback: Sequence[str] = (),
    variant: int = 0,
) -> Answer[EditProposal]:
    """The coder's edits for ``step`` at ``site``: shown the step's files within its model's context window,
    naming only those (or the files the step creates), searching only runs of their lines.

    ``variant`` n > 0 asks for another sample of the same prompt (best of N): see :func:`varied`."""
    ws, repo, commit = site.ws, site.repo, site.commit
    rmap = repo_map_at(ws, repo, commit)
    window = window_of(ws, card)
    view = coder_view(ws, repo, commit, rmap, card.card, goal=goal, step=step, feedback=feedback, window=window)
    prompt = build_prompt(card.card, goal=goal, repo_map=view.repo_map, step=step, files=view.notes, feedback=feedback)
    files = {f.path: f.text for f in view.files}
    grammar = edits_grammar(files, view.creates) if files or view.creates else None
    grounded = edits_schema([*files, *view.creates])  # what servers decode against; apply says what is wrong
    sampling = varied(card.card.sampling, variant)
    request = _request(card, prompt, grounded, sampling, grammar=grammar, lookup=sampling.lookup)
    return _ask(card, backend, request, edits_schema([]), EditProposal, retries=1)


def varied(sampling: Sampling, variant: int) -> Sampling:
    """The card's sampling for variant 0; for variant n, seed + n and a temperature of at least
    0.3 + 0.2·n (at most 1.0): greedy decoding would give every variant the same answer."""
    if variant <= 0:
        return sampling
    warmer = min(1.0, max(sampling.temperature, 0.3 + 0.2 * variant))
    return sampling.model_copy(update={"seed": sampling.seed + variant, "temperature": warmer})
