"""Which model serves each agent of an eval's runs, and what each task's calls cost.

Bindings resolve in the user's workspace (its registered models and role bindings) with the
eval's ``--model ROLE=NAME`` on top; a task's throwaway workspace holds no model. In-process
llama.cpp models stay resident across tasks (the user workspace's one ModelManager), and
their calls are serialised, because one loaded model is not safe for two threads. Every call
of a task is metered (tokens in and out, seconds) and recorded in the task's call log.

A binding ``replay:DIR`` whose DIR is a directory gives each task its own script,
``DIR/<task>.jsonl``, shared by every role bound to it (the plan first, then the edits):
the built-in suite's reference answers are such a directory (``suite.answers_path()``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.agents import cards
from orchestrator.agents.cards import LoadedCard
from orchestrator.errors import ModelError, UsageError
from orchestrator.models import registry, runtime
from orchestrator.models.backends import (
    CallLog,
    Completion,
    CompletionRequest,
    ModelBackend,
    ModelIdentity,
    Recorded,
    ReplayBackend,
)
from orchestrator.store.workspace import NAME_RE, Workspace

ModelFactory = Callable[[LoadedCard], ModelBackend]
_IN_PROCESS = threading.Lock()  # one llama.cpp call at a time in this process
_MANAGER = threading.Lock()  # two tasks starting at once must not make two managers (two copies of a model)


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["coder=coder7b", ...]`` -> ``{"coder": "coder7b"}`` (UsageError naming a malformed item)."""
    found: dict[str, str] = {}
    for item in items:
        role, sep, binding = item.partition("=")
        if not sep or not NAME_RE.match(role.strip()) or not binding.strip():
            raise UsageError(f"--model {item!r}: write it as ROLE=MODEL, e.g. --model coder=coder7b")
        found[role.strip()] = binding.strip()
    return found


def resolve_bindings(ws: Workspace, overrides: dict[str, str]) -> dict[str, str]:
    """The binding of every role the agent cards run on: ``overrides`` over the workspace's."""
    roles = sorted(_roles(ws))
    unknown = sorted(set(overrides) - set(roles))
    if unknown:
        raise UsageError(
            f"--model {unknown[0]}=...: no agent card runs on role {unknown[0]!r} (roles: {', '.join(roles)})"
        )
    bindings = {role: overrides.get(role) or registry.role_binding(ws, role) for role in roles}
    for role, binding in overrides.items():
        bindings[role] = _checked(ws, role, binding)
    return bindings


def _roles(ws: Workspace) -> set[str]:
    """The roles the workspace's model agent cards run on."""
    found = set()
    for loaded in cards.load_cards(ws).values():
        kind, name = loaded.card.binding()
        if loaded.card.kind == "model" and kind == "role":
            found.add(name)
    return found


def _checked(ws: Workspace, role: str, binding: str) -> str:
    if binding.startswith("replay:"):
        path = Path(binding.removeprefix("replay:")).expanduser().absolute()
        if not path.exists():
            raise UsageError(
                f"--model {role}={binding}: {path} not found (a replay file, or a directory of <task>.jsonl)"
            )
        return f"replay:{path}"
    if binding.startswith("openai:"):
        if "://" not in binding:
            raise UsageError(f"--model {role}={binding}: give the endpoint as openai:http://HOST:PORT")
        return binding
    registry.get_model(ws, binding)  # an unknown name is refused with the known ones
    return binding


@dataclass
class Meter:
    """What one task's model calls cost."""

    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0

    def add(self, completion: Completion) -> None:
        self.tokens_in += completion.tokens_in
        self.tokens_out += completion.tokens_out
        self.seconds += completion.seconds


class Metered:
    """A backend whose calls are counted in a Meter (and serialised when the model runs in this process)."""

    def __init__(self, inner: ModelBackend, meter: Meter) -> None:
        self.inner = inner
        self.meter = meter
        self._serial = inner.identity.kind == "llama"

    @property
    def identity(self) -> ModelIdentity:
        return self.inner.identity

    def complete(self, request: CompletionRequest) -> Completion:
        if self._serial:
            with _IN_PROCESS:
                completion = self.inner.complete(request)
        else:
            completion = self.inner.complete(request)
        self.meter.add(completion)
        return completion


def task_models(ws: Workspace, bindings: dict[str, str], task: str, log_path: Path) -> tuple[ModelFactory, Meter]:
    """The model factory of one task's run, and the meter of its calls.

    A replay directory without a script for ``task`` is refused now (ModelError), not when
    the planner first asks.
    """
    meter = Meter()
    log = CallLog(log_path)
    made: dict[str, ModelBackend] = {}
    scripts = {b: _script(b, task) for b in bindings.values() if b.startswith("replay:")}

    def backend(binding: str) -> ModelBackend:
        if binding not in made:
            script = scripts.get(binding) or _script(binding, task)
            if script is not None:
                inner: ModelBackend = Recorded(ReplayBackend(script), log)
            else:
                with _MANAGER:
                    manager = runtime.manager_for(ws)
                inner = runtime.backend_for(ws, binding, manager=manager, log=log)
            made[binding] = Metered(inner, meter)
        return made[binding]

    def model_for(card: LoadedCard) -> ModelBackend:
        kind, name = card.card.binding()
        if kind == "model":
            return backend(name)
        return backend(bindings.get(name) or registry.role_binding(ws, name))

    return model_for, meter


def _script(binding: str, task: str) -> Path | None:
    """The replay script of ``task`` for a ``replay:`` binding (its file, or DIR/<task>.jsonl); None otherwise."""
    if not binding.startswith("replay:"):
        return None
    path = Path(binding.removeprefix("replay:"))
    if not path.is_dir():
        return path
    script = path / f"{task}.jsonl"
    if not script.is_file():
        raise ModelError(f"{binding}: no replay script for task {task} ({script})")
    return script
