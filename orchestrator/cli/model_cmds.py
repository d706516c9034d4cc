"""`converge model list|add|use|try`."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.agents.cards import load_cards
from orchestrator.cli._common import JsonFlag, emit_json, emit_table, handled, progress, say, workspace
from orchestrator.errors import UsageError
from orchestrator.evals.store import latest_scores
from orchestrator.models import runtime, status


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


model_app = typer.Typer(help="GGUF models known to the workspace, and which role uses which.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the `model` command group to ``app``."""
    app.add_typer(model_app, name="model")


@model_app.command("list")
@handled
def list_models(json_out: JsonFlag = False) -> None:
    """Registered models (window, VRAM/RAM split), role bindings, endpoints, and each model's latest solve rate
    on the built-in suite (`converge eval`)."""
    ws = workspace()
    registry = runtime.load_registry(ws)
    roles = runtime.all_roles(ws)
    statuses = status.model_statuses(ws)
    scores = latest_scores(ws)
    rows = []
    for record in registry.models.values():
        doc = record.model_dump(exclude={"chat_template"})
        doc["has_chat_template"] = record.chat_template is not None
        doc["roles"] = sorted(r for r, b in roles.items() if b == record.name)
        placed = statuses[record.name]
        doc["window"] = placed.window
        doc["placement"] = {k: getattr(placed, k) for k in ("gpu_layers", "n_layer", "vram", "ram", "kv_type")}
        doc["problem"] = placed.problem
        score = scores.get(record.name)
        doc["eval"] = None if score is None else {"id": score.id, "complete": score.complete, **score.rate.model_dump()}
        rows.append(doc)
    endpoints = status.endpoint_statuses(ws)
    if json_out:
        emit_json({"models": rows, "roles": roles, "endpoints": [asdict(e) for e in endpoints]})
        return
    emit_table(
        "models",
        ["name", "arch", "quant", "window", "trained", "size", "where", "sha256", "roles", "built-in suite"],
        [
            [r["name"], r["architecture"], r["quantisation"], r["window"], r["context_length"], _size(r["size"]),
             statuses[r["name"]].split, r["sha256"][:12], ", ".join(r["roles"]), _score(r["eval"])]
            for r in rows
        ],
    )  # fmt: skip
    for r in rows:
        if r["problem"]:
            say(f"{r['name']}: {r['problem']}")
    if endpoints:
        emit_table(
            "endpoints",
            ["url", "roles", "health", "window", "calls", "latency", "tok/s", "failovers"],
            [
                [e.url, ", ".join(e.roles), "up" if e.up else "down", e.window or "?", e.calls,
                 f"{e.latency_s:.2f}s" if e.latency_s is not None else "-", e.tokens_per_s or "-", e.failures]
                for e in endpoints
            ],
        )  # fmt: skip
    remote = {r: b for r, b in roles.items() if b not in registry.models}
    for role, binding in sorted(remote.items()):
        say(f"role {role} -> {binding}")


def _score(found: dict[str, Any] | None) -> str:
    """``41% (11/27) e20240101-...``: the solve rate of the newest eval of the built-in suite."""
    if found is None or found["rate"] is None:
        return "-"
    partial = "" if found["complete"] else ", unfinished"
    return f"{found['rate']:.0%} ({found['solved']}/{found['valid']}{partial}) {found['id']}"


@model_app.command("add")
@handled
def add(
    path: Annotated[Path, typer.Argument(help="A GGUF model file.")],
    name: Annotated[str, typer.Option("--name", help="Name to register it under.")],
    json_out: JsonFlag = False,
) -> None:
    """Register a GGUF file (reads its header, places it in VRAM/RAM or refuses it, computes its sha256)."""
    progress(f"reading {path} ...")
    ws = workspace()
    record = runtime.add_model(ws, path, name)
    placement = runtime.placement_of(ws, record)
    if json_out:
        doc = record.model_dump(exclude={"chat_template"})
        doc["window"] = placement.n_ctx
        doc["placement"] = {
            "gpu_layers": placement.gpu_layers, "n_layer": placement.n_layer, "vram": placement.vram,
            "ram": placement.ram, "kv_type": placement.kv_type,
        }  # fmt: skip
        emit_json(doc)
    else:
        say(
            f"registered {record.name}: {record.architecture} {record.quantisation}, "
            f"window {placement.n_ctx} of {record.context_length}, {_size(record.size)}, {placement.split()}, "
            f"sha256 {record.sha256[:12]}"
        )


@model_app.command("use")
@handled
def use(
    model: Annotated[
        str, typer.Argument(help="A registered model, openai:URL[#model] (comma-separated: a pool) or replay:FILE.")
    ],
    role: Annotated[str, typer.Option("--role", help="Role to bind (planner, coder, reviewer, ...).")],
    json_out: JsonFlag = False,
) -> None:
    """Bind a role to a model."""
    ws = workspace()
    cards = load_cards(ws).values()
    known = sorted({c.card.binding()[1] for c in cards if c.card.kind == "model" and c.card.binding()[0] == "role"})
    if role not in known:
        raise UsageError(f"--role {role!r}: no agent card runs on that role (roles: {', '.join(known)})")
    binding = runtime.use_model(ws, model, role)
    if json_out:
        emit_json({"role": role, "model": binding})
    else:
        say(f"role {role} -> {binding}")


@model_app.command("try")
@handled
def try_model(
    model: Annotated[str, typer.Argument(help="A registered model, openai:URL[#model] or replay:FILE.")],
    prompt: Annotated[str, typer.Option("--prompt", help="The user message.")],
    schema: Annotated[Path | None, typer.Option("--schema", help="A JSON schema file the answer must match.")] = None,
    system: Annotated[str, typer.Option("--system", help="The system prompt.")] = "You are a helpful assistant.",
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Tokens to generate at most.")] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed.")] = 0,
    json_out: JsonFlag = False,
) -> None:
    """One call to a model, to check it; with --schema the answer is constrained and validated."""
    ws = workspace()
    backend = runtime.backend_for(ws, model)
    request = runtime.CompletionRequest(system=system, user=prompt, max_tokens=max_tokens, seed=seed)
    parsed: Any = None
    if schema is None:
        completion = backend.complete(request)
    else:
        retries = ws.config().models.structured_retries
        parsed, completion = runtime.complete_json(
            backend, request, _read_schema(schema), retries=retries, log=runtime.call_log(ws)
        )
    identity = backend.identity
    if json_out:
        doc: dict[str, Any] = {
            "model": identity.name,
            "model_sha256": identity.sha256,
            "text": completion.text,
            "tokens_in": completion.tokens_in,
            "tokens_out": completion.tokens_out,
            "seconds": round(completion.seconds, 3),
            "finish_reason": completion.finish_reason,
        }
        if schema is not None:
            doc["json"] = parsed
        emit_json(doc)
        return
    say(json.dumps(parsed, indent=2) if schema is not None else completion.text)
    progress(
        f"{identity.name}: {completion.tokens_in} tokens in, {completion.tokens_out} out, {completion.seconds:.2f}s"
    )


def _read_schema(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(f"{path}: schema file not found") from exc
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the schema: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not a JSON file: {exc}") from exc
    if not isinstance(value, dict):
        raise UsageError(f"{path}: a JSON schema must be an object")
    return value
