"""What `converge model list` and `converge doctor` show of the models: where each would go, its real
context window, and each server endpoint's health, window, latency and tokens/s.

Endpoint figures come from the call log (every call records which endpoint answered, its
seconds and tokens), so they cover every process of the workspace, not only this one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ModelError
from orchestrator.models import registry
from orchestrator.models.pool import FAILOVER_KIND
from orchestrator.models.runtime import call_log, manager_for, openai_backend
from orchestrator.store.workspace import Workspace


@dataclass(frozen=True)
class ModelStatus:
    """A registered model as Converge would run it now."""

    name: str
    window: int  # tokens it is loaded with
    trained: int  # tokens its GGUF was trained for
    gpu_layers: int
    n_layer: int
    vram: int
    ram: int
    kv_type: str
    split: str  # e.g. "all in RAM: 289 MiB"
    problem: str | None = None  # why it would be refused


@dataclass(frozen=True)
class EndpointStatus:
    """One OpenAI-compatible endpoint a role names."""

    url: str
    roles: tuple[str, ...]
    up: bool
    window: int | None
    calls: int
    failures: int
    latency_s: float | None  # mean seconds per call
    tokens_per_s: float | None  # generated tokens per second of calls


def model_statuses(ws: Workspace) -> dict[str, ModelStatus]:
    """Each registered model's placement and window (a model that fits nowhere carries the reason)."""
    manager = manager_for(ws)
    found = {}
    for name, record in registry.load_registry(ws).models.items():
        window = manager.context_for(record)
        try:
            placement = manager.placement(record)
        except ModelError as exc:
            found[name] = ModelStatus(name, window, record.context_length, 0, 0, 0, 0, "-", "refused", str(exc))
            continue
        found[name] = ModelStatus(
            name=name,
            window=window,
            trained=record.context_length,
            gpu_layers=placement.gpu_layers,
            n_layer=placement.n_layer,
            vram=placement.vram,
            ram=placement.ram,
            kv_type=placement.kv_type,
            split=placement.split(),
        )
    return found


def endpoint_statuses(ws: Workspace, check: bool = True) -> list[EndpointStatus]:
    """Every endpoint a role is bound to, with its health (asked now when ``check``) and call figures."""
    roles_of: dict[str, list[str]] = {}
    for role, binding in registry.all_roles(ws).items():
        if binding.startswith("openai:"):
            for endpoint in registry.endpoints(binding):
                roles_of.setdefault(endpoint, []).append(role)
    figures = call_figures(call_log(ws).path)
    statuses = []
    for endpoint, roles in roles_of.items():
        backend = openai_backend(endpoint)
        up = backend.healthy() if check else False
        calls, seconds, tokens, failures = figures.get(backend.url, (0, 0.0, 0, 0))
        statuses.append(
            EndpointStatus(
                url=backend.url,
                roles=tuple(sorted(roles)),
                up=up,
                window=backend.window() if up else None,
                calls=calls,
                failures=failures,
                latency_s=round(seconds / calls, 3) if calls else None,
                tokens_per_s=round(tokens / seconds, 1) if seconds > 0 else None,
            )
        )
    return statuses


def call_figures(log: Path) -> dict[str, tuple[int, float, int, int]]:
    """Per endpoint URL: calls answered, their seconds, tokens generated, and failovers away from it."""
    figures: dict[str, tuple[int, float, int, int]] = {}
    if not log.is_file():
        return figures
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash: the rest still counts
        endpoint = entry.get("endpoint") if isinstance(entry, dict) else None
        if not isinstance(endpoint, str):
            continue
        calls, seconds, tokens, failures = figures.get(endpoint, (0, 0.0, 0, 0))
        if entry.get("kind") == FAILOVER_KIND:
            failures += 1
        elif "text" in entry:
            calls += 1
            seconds += float(entry.get("seconds", 0.0))
            tokens += int(entry.get("tokens_out", 0))
        figures[endpoint] = (calls, seconds, tokens, failures)
    return figures
