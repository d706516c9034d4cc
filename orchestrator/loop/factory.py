"""Wiring the loop to the workspace's real pieces: which model backend serves an agent card."""

from __future__ import annotations

from orchestrator.agents.cards import LoadedCard
from orchestrator.loop.state import ModelFactory
from orchestrator.models import runtime
from orchestrator.models.backends import ModelBackend
from orchestrator.store.workspace import Workspace


def model_factory(ws: Workspace) -> ModelFactory:
    """Backends per card binding (a model name or a role), made once and reused: switching is free."""

    made: dict[tuple[str, str], ModelBackend] = {}

    def model_for(card: LoadedCard) -> ModelBackend:
        kind, name = card.card.binding()
        key = (kind, name)
        if key not in made:
            made[key] = runtime.backend_for(ws, name) if kind == "model" else runtime.backend_for_role(ws, name)
        return made[key]

    return model_for
