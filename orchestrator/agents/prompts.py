"""Prompts and answers: a card's prompt assembled in one place, and a model's answer validated against its schema.

The prompt comes in three parts, stable first, so a model's prefix cache is reused across calls;
validation errors are written for the model (what is wrong, where, what to answer).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError

from orchestrator.agents.cards import AgentCard, PlanStep
from orchestrator.errors import ModelError


class Prompt(NamedTuple):
    """A prompt in three parts, stable first so a model's prefix cache is reused across calls."""

    system: str
    stable_prefix: str
    user: str


def build_prompt(
    card: AgentCard,
    *,
    goal: str,
    repo_map: str = "",
    agents: str = "",
    step: PlanStep | None = None,
    files: Sequence[str] = (),
    feedback: str | Sequence[str] | None = None,
) -> Prompt:
    """Assemble a card's prompt: system, then repo map, agents and goal (stable), then step, files, feedback
    and how to answer."""
    pieces = card.prompt
    stable = [pieces.context.format(repo_map=repo_map.rstrip())] if repo_map.strip() else []
    if agents.strip():
        stable.append(pieces.agents.format(agents=agents.rstrip()))
    stable.append(pieces.task.format(goal=goal.strip()))
    user: list[str] = []
    if step is not None:
        user.append(
            pieces.step.format(
                title=step.title,
                agent=step.agent,
                targets=", ".join([*step.targets, *(f"{p} (new)" for p in step.creates)]) or "(not named)",
                acceptance="; ".join(step.acceptance) or "(not named)",
            )
        )
    if any(f.strip() for f in files):
        user.append(pieces.files.format(files="\n\n".join(f.strip() for f in files if f.strip())))
    notes = [feedback] if isinstance(feedback, str) else list(feedback or [])
    notes = [n.strip() for n in notes if n and n.strip()]
    if notes:
        user.append(pieces.feedback.format(feedback="\n\n".join(notes)))
    schema = json.dumps(card.output_model.model_json_schema(), separators=(",", ":"))
    user.append(pieces.answer.format(schema=schema))
    return Prompt(card.system.strip(), "\n\n".join(stable), "\n\n".join(user))


def output_schema(card: AgentCard) -> dict[str, Any]:
    """The JSON schema the card's answers are decoded against."""
    return card.output_model.model_json_schema()


def parse_output(card: AgentCard, text: str) -> BaseModel:
    """Validate a model's answer against the card's schema; ModelError text is written for the model."""
    try:
        return card.output_model.model_validate_json(_strip_fence(text))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "the answer"
        raise ModelError(
            f"Your answer does not match the {card.output or 'edits'} schema: {where}: {err['msg']}. "
            "Answer with one JSON object only."
        ) from exc


def _strip_fence(text: str) -> str:
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0]
    return body
