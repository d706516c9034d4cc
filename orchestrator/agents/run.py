"""Running a model card: its prompt, the model call and a validated, typed answer — for planner and coder alike.

``plan`` and ``propose`` are what the loop calls; both go through :func:`run_card`, which bounds the
schema so constrained decoding always ends, calls the model (retrying with the error fed back) and
returns the answer as a pydantic value with the completion that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from orchestrator.agents.cards import LoadedCard, Plan, PlanStep, Sampling
from orchestrator.agents.edits import EditProposal, normal_path
from orchestrator.agents.prompts import Prompt, build_prompt, check_plan
from orchestrator.agents.repomap import repo_map_at
from orchestrator.errors import EditError, ModelError
from orchestrator.models import runtime
from orchestrator.models.backends import Completion, CompletionRequest, ModelBackend
from orchestrator.models.runtime import complete_json
from orchestrator.store import gitops
from orchestrator.store.workspace import Workspace

FILE_LIMIT = 12_000
A = TypeVar("A", bound=BaseModel)


@dataclass(frozen=True)
class Answer(Generic[A]):
    """A validated answer and the completion it came from (tokens, seconds)."""

    value: A
    completion: Completion


def run_card(
    card: LoadedCard,
    backend: ModelBackend,
    prompt: Prompt,
    schema: dict[str, Any],
    answer: type[A],
    retries: int,
    sampling: Sampling | None = None,
) -> Answer[A]:
    """Ask ``backend`` with ``card``'s sampling (or ``sampling``), constrained by ``schema``; ModelError (for the
    model) if no answer validates as ``answer`` within ``retries``."""
    sampling = sampling or card.card.sampling
    request = CompletionRequest(
        system=prompt.system,
        prefix=prompt.stable_prefix,
        user=prompt.user,
        json_schema=schema,
        temperature=sampling.temperature,
        max_tokens=sampling.max_tokens,
        seed=sampling.seed,
    )
    value, completion = complete_json(backend, request, schema, retries=retries)
    try:
        return Answer(answer.model_validate(value), completion)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "the answer"
        raise ModelError(f"Your answer does not match the schema: {where}: {err['msg']}") from exc


def plan(
    card: LoadedCard,
    backend: ModelBackend,
    cards: dict[str, LoadedCard],
    *,
    goal: str,
    repo_map: str,
    max_steps: int,
) -> Answer[Plan]:
    """The planner's plan for ``goal``: steps for the agents that can edit (tool agents offered first)."""
    editors = sorted(
        (n for n, c in cards.items() if c.card.role in ("coder", "tool")),
        key=lambda n: (cards[n].card.kind != "tool", n),  # deterministic tools are cheaper and safer
    )
    prompt = build_prompt(card.card, goal=goal, repo_map=repo_map)
    found = run_card(card, backend, prompt, plan_schema(editors, max_steps), Plan, card.card.budgets.attempts)
    checked = check_plan(found.value, cards)
    return Answer(checked.model_copy(update={"steps": checked.steps[:max_steps]}), found.completion)


def propose(
    card: LoadedCard,
    backend: ModelBackend,
    *,
    goal: str,
    repo_map: str,
    step: PlanStep,
    notes: list[str],
    variant: int = 0,
) -> Answer[EditProposal]:
    """The coder's edits for ``step``; ``notes`` are the target files' content and any feedback.

    ``variant`` n > 0 asks for another sample of the same prompt (best of N): see :func:`varied`.
    """
    prompt = build_prompt(card.card, goal=goal, repo_map=repo_map, step=step, feedback=notes)
    sampling = varied(card.card.sampling, variant)
    return run_card(card, backend, prompt, edits_schema(), EditProposal, retries=1, sampling=sampling)


def varied(sampling: Sampling, variant: int) -> Sampling:
    """The card's sampling for variant 0; for variant n, seed + n and a temperature of at least
    0.3 + 0.2·n (at most 1.0): greedy decoding would give every variant the same answer."""
    if variant <= 0:
        return sampling
    warmer = min(1.0, max(sampling.temperature, 0.3 + 0.2 * variant))
    return sampling.model_copy(update={"seed": sampling.seed + variant, "temperature": warmer})


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
    """The edit schema with a bounded number of blocks (string lengths stay free: llama.cpp's grammar
    compiler unrolls each ``maxLength`` into nested rules and refuses long ones)."""
    schema = EditProposal.model_json_schema()
    schema["properties"]["edits"].update(minItems=1, maxItems=6)
    return schema


def repo_map_text(ws: Workspace, repo: str, goal: str, commit: str) -> str:
    """The map of ``commit`` of the registered repo, ranked for ``goal`` and cut to a quarter of the context window
    (the smaller of the planner's and the coder's: the model's own, or its server's)."""
    budget = max(256, min(runtime.context_window(ws, role) for role in ("planner", "coder")) // 4)
    return repo_map_at(ws, repo, commit).render(goal, budget)


def target_files(repo_path: Path, targets: list[str], commit: str) -> list[str]:
    """The step's target files as ``commit`` has them, so the coder can copy exact search text.

    Read from the commit the edits will apply to, not from a checkout that may have moved on.
    """
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
    return notes
