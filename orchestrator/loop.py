"""Wiring the loop to the workspace's real pieces: which model backend serves an agent card."""

from __future__ import annotations

from orchestrator.agents import LoadedCard
from orchestrator.attempts import ModelFactory
from orchestrator.model_backends import ModelBackend
from orchestrator.workspace import Workspace


def model_factory(ws: Workspace) -> ModelFactory:
    """Backends per card binding (a model name or a role), made once and reused: switching is free."""
    from orchestrator import models

    made: dict[tuple[str, str], ModelBackend] = {}

    def model_for(card: LoadedCard) -> ModelBackend:
        kind, name = card.card.binding()
        key = (kind, name)
        if key not in made:
            made[key] = models.backend_for(ws, name) if kind == "model" else models.backend_for_role(ws, name)
        return made[key]

    return model_for
