"""`converge doctor`: what is ready and what is missing, each with the fix.

Checks live in a small registry: a module adds one with ``@register_check("name")`` on a function
``(ctx: DoctorContext) -> Check`` and lists itself in :data:`CHECK_MODULES` (imported when the doctor
runs, never before), so nothing happens at import time of the package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from orchestrator.errors import ConvergeError
from orchestrator.models.registry import get_model, role_binding
from orchestrator.store.workspace import Workspace

Status = Literal["ready", "missing", "warning"]

# Modules that register checks; each is imported once when checks run.
CHECK_MODULES: tuple[str, ...] = (
    "orchestrator.ops.doctor",
    "orchestrator.ops.sandbox_checks",
    "orchestrator.ops.model_checks",
)


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


@dataclass
class DoctorContext:
    """What a check may look at (the workspace may be absent) and what it may do."""

    ws: Workspace | None
    clean: bool = False
    cleaned: list[str] = field(default_factory=list)  # what --clean removed, for the report


CheckFn = Callable[[DoctorContext], Check | Iterable[Check]]
_REGISTRY: dict[str, CheckFn] = {}


def register_check(name: str) -> Callable[[CheckFn], CheckFn]:
    """Add (or replace) the check called ``name``.

    Registering a name again replaces the earlier check: a module that owns a subject can
    supersede the basic check given here.
    """

    def decorate(func: CheckFn) -> CheckFn:
        _REGISTRY[name] = func
        return func

    return decorate


def run_checks(ctx: DoctorContext) -> list[Check]:
    """Run every registered check; a check that raises reports itself as missing."""
    for module in CHECK_MODULES:
        importlib.import_module(module)
    results: list[Check] = []
    for name, func in list(_REGISTRY.items()):
        try:
            found = func(ctx)
        except ConvergeError as exc:
            results.append(Check(name, "missing", str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            continue
        results.extend([found] if isinstance(found, Check) else found)
    return results


@register_check("workspace")
def _workspace(ctx: DoctorContext) -> Check:
    if ctx.ws is None:
        return Check("workspace", "missing", "no workspace here", "run `converge init PATH` or pass --workspace")
    ctx.ws.config()
    return Check("workspace", "ready", str(ctx.ws.root))


@register_check("keys")
def _keys(ctx: DoctorContext) -> Check:
    if ctx.ws is None:
        return Check("keys", "missing", "no workspace", "run `converge init PATH`")
    keys = ctx.ws.state / "keys"
    private = (
        sorted(p.name for p in keys.glob("*") if p.is_file() and not p.name.endswith(".pub")) if keys.is_dir() else []
    )
    if not private:
        return Check("keys", "missing", f"no signing key in {keys}", f"run `converge init {ctx.ws.root}` (creates it)")
    return Check("keys", "ready", f"{', '.join(private)} in {keys}")


@register_check("models")
def _models(ctx: DoctorContext) -> list[Check]:
    """Each role the shipped agent cards use, the model it resolves to, and whether its file is there."""
    if ctx.ws is None:
        return [Check("models", "missing", "no workspace", "run `converge init PATH`")]
    checks = []
    for role in ("planner", "coder", "reviewer"):
        binding = role_binding(ctx.ws, role)
        name = f"models.{role}"
        if binding.startswith(("openai:", "replay:")):
            checks.append(Check(name, "ready", binding))
            continue
        record = get_model(ctx.ws, binding)
        if not Path(record.path).is_file():
            fix = f"put the file back or `converge model add PATH --name {binding}`"
            checks.append(Check(name, "missing", f"{binding}: {record.path} not found", fix))
            continue
        size = record.size / 1e6
        tiny = " — tiny: add a real coder model for real work (see README)" if size < 500 else ""
        checks.append(Check(name, "ready", f"{binding} ({Path(record.path).name}, {size:.0f} MB){tiny}"))
    return checks
