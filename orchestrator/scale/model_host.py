"""Model calls of Ray tasks, answered where the model is resident: on the driver's node, in one process.

A job on a node that needs a model (an eval trial's planner and coder) must not load a copy of its
own per worker process. :func:`host_models` starts one actor on the node of the process that
connected (the driver's), holding the workspace's backends as ``loop``'s model factory makes them
(memory budget, residency, the call log); :func:`hosted_models` is the factory a job uses instead:
each backend it gives sends the call to that actor, which answers one call at a time, as a resident
model does. A ModelError raised there comes back as itself, so retries and feedback work as at home.

    host = host_models(ws)                              # on the driver, before submitting jobs
    model_for = hosted_models(host)                      # in the job, wherever it runs
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator.agents.cards import LoadedCard
from orchestrator.models import runtime
from orchestrator.models.backends import Completion, CompletionRequest, ModelBackend, ModelIdentity
from orchestrator.store.workspace import Workspace

Binding = tuple[Literal["model", "role"], str]


class ModelHost:
    """The workspace's models in one process; a binding's backend is made on its first call and kept."""

    def __init__(self, workspace: str) -> None:
        self._ws = Workspace(Path(workspace))
        self._made: dict[Binding, ModelBackend] = {}

    def where(self) -> str:
        """The node this host runs on."""
        return str(ray.get_runtime_context().get_node_id())

    def identity(self, binding: Binding) -> ModelIdentity:
        return self._backend(binding).identity

    def complete(self, binding: Binding, request: CompletionRequest) -> Completion:
        return self._backend(binding).complete(request)

    def _backend(self, binding: Binding) -> ModelBackend:
        if binding not in self._made:
            kind, name = binding
            made = runtime.backend_for(self._ws, name) if kind == "model" else runtime.backend_for_role(self._ws, name)
            self._made[binding] = made
        return self._made[binding]


def host_models(ws: Workspace) -> ActorHandle[Any]:
    """The workspace's model host on this process's node (started once per workspace and cluster)."""
    here = ray.get_runtime_context().get_node_id()
    actor: Any = ray.remote(ModelHost)  # one call at a time (an actor's default), as a resident model serves
    return actor.options(  # type: ignore[no-any-return]
        num_cpus=0,
        name=f"converge-models-{hashlib.sha256(str(ws.root).encode()).hexdigest()[:16]}",
        namespace="converge",
        get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
    ).remote(str(ws.root))


class HostedModel:
    """A ModelBackend whose calls go to the model host."""

    def __init__(self, host: ActorHandle[Any], binding: Binding) -> None:
        self._host = host
        self._binding = binding
        self._identity: ModelIdentity | None = None

    @property
    def identity(self) -> ModelIdentity:
        if self._identity is None:
            self._identity = _answer(self._host.identity.remote(self._binding))
        return self._identity

    def complete(self, request: CompletionRequest) -> Completion:
        return _answer(self._host.complete.remote(self._binding, request))  # type: ignore[no-any-return]


def hosted_models(host: ActorHandle[Any]) -> Callable[[LoadedCard], ModelBackend]:
    """A model factory (as the loop's ``Deps.model_for``) whose backends call ``host``."""
    made: dict[Binding, HostedModel] = {}

    def model_for(card: LoadedCard) -> ModelBackend:
        binding = card.card.binding()
        if binding not in made:
            made[binding] = HostedModel(host, binding)
        return made[binding]

    return model_for


def _answer(ref: Any) -> Any:
    try:
        return ray.get(ref)
    except RayTaskError as exc:  # the model's own error (ModelError) comes back as itself
        if isinstance(exc.cause, BaseException):
            raise exc.cause from None
        raise
