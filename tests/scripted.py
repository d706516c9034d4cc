"""A scripted model backend for control-flow tests: answers from a queue, records every request.

Like httpx's MockTransport: a function-backed fake behind the same ModelBackend protocol as
the real llama.cpp backend, so the loop under test is the real one. An exception among the
answers is raised at its turn (a model that fails, or a process that dies mid-call).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.agents.cards import LoadedCard
from orchestrator.models.backends import Completion, CompletionRequest, ModelIdentity

PLAN_KEY = "steps"


class ScriptedBackend:
    """Answers plan requests from ``plans`` and edit requests from ``edits``, in order."""

    def __init__(
        self, plans: Sequence[dict[str, Any] | BaseException], edits: Sequence[dict[str, Any] | str | BaseException]
    ) -> None:
        self.plans = list(plans)
        self.edits = list(edits)
        self.requests: list[CompletionRequest] = []

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(name="scripted", sha256="0" * 64, kind="replay")

    def complete(self, request: CompletionRequest) -> Completion:
        self.requests.append(request)
        schema = request.json_schema or {}
        queue = self.plans if PLAN_KEY in schema.get("properties", {}) else self.edits
        if not queue:
            raise AssertionError(f"scripted model has no answer left for: {request.user[:200]}")
        answer = queue.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        text = answer if isinstance(answer, str) else json.dumps(answer)
        return Completion(text=text, tokens_in=len(request.user) // 4, tokens_out=len(text) // 4, seconds=0.0)

    def factory(self) -> Callable[[LoadedCard], ScriptedBackend]:
        return lambda _card: self


def plan(*steps: tuple[str, str, list[str]] | tuple[str, str, list[str], list[str]]) -> dict[str, Any]:
    """A plan answer: (title, agent, targets) per step, or (title, agent, targets, creates) for a step
    that makes new files."""
    return {
        "goal": "refine",
        "steps": [
            {
                "title": s[0],
                "agent": s[1],
                "targets": s[2],
                "acceptance": ["tests pass"],
                "creates": list(s[3]) if len(s) > 3 else [],
            }
            for s in steps
        ],
    }


def edit(path: str, search: str, replace: str, summary: str = "change") -> dict[str, Any]:
    """An edits answer with one block."""
    return {"summary": summary, "edits": [{"path": path, "search": search, "replace": replace}]}
