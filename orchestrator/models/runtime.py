"""Local models: what the rest of Converge calls.

    backend_for_role(ws, role)   -> ModelBackend    role -> binding -> llama.cpp / openai: / replay:
    backend_for(ws, binding)     -> ModelBackend    a model name or binding directly
    complete_structured(backend, request, PydanticModel) -> (instance, Completion)
    complete_json(backend, request, schema)          -> (parsed JSON, Completion)
    model_digest(ws, role)       -> sha256 of the model file a role uses (for attestations)

The pieces live beside this module: ``model_gguf`` (GGUF header reader), ``model_registry``
(``.converge/models.json``, role bindings, the embedded default), ``model_backends`` (the
protocol, call log, replay and OpenAI backends) and ``model_llama`` (residency under a memory
budget, prefix-state reuse, the in-process backend).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from orchestrator.errors import ModelError
from orchestrator.models.backends import (
    CallLog,
    Completion,
    CompletionRequest,
    Message,
    ModelBackend,
    ModelIdentity,
    OpenAIBackend,
    Recorded,
    ReplayBackend,
)
from orchestrator.models.llama import LlamaBackend, ModelManager, default_budget
from orchestrator.models.registry import (
    DEFAULT_MODEL,
    ModelRecord,
    add_model,
    all_roles,
    get_model,
    load_registry,
    role_binding,
    use_model,
)
from orchestrator.store.workspace import Workspace

__all__ = [
    "DEFAULT_MODEL",
    "CallLog",
    "Completion",
    "CompletionRequest",
    "Message",
    "ModelBackend",
    "ModelIdentity",
    "ModelManager",
    "ModelRecord",
    "add_model",
    "all_roles",
    "backend_for",
    "backend_for_role",
    "backend_window",
    "call_log",
    "complete_json",
    "complete_structured",
    "default_budget",
    "get_model",
    "load_registry",
    "manager_for",
    "model_digest",
    "role_binding",
    "use_model",
]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
FAILURE_KIND = "structured_failure"

_SHARED: dict[Path, ModelManager] = {}


def call_log(ws: Workspace) -> CallLog:
    """The workspace's log of model calls (what ``replay:`` reads)."""
    return CallLog(ws.state / "logs" / "model-calls.jsonl")


def manager_for(ws: Workspace) -> ModelManager:
    """The process-wide ModelManager of a workspace, built from ``[models]`` (so role switches stay free)."""
    manager = _SHARED.get(ws.root)
    if manager is None:
        config = ws.config().models
        manager = ModelManager(
            budget=config.memory_budget,
            n_ctx=config.context_length,
            n_threads=config.n_threads,
            cache_dir=ws.cache / "prompt-cache" if config.prefix_cache else None,
            ledger=ws.state,
        )
        _SHARED[ws.root] = manager
    return manager


def backend_for(
    ws: Workspace, binding: str, manager: ModelManager | None = None, log: CallLog | None = None
) -> ModelBackend:
    """A backend for a registered model name, ``openai:URL[#model]`` or ``replay:FILE``; real ones are recorded."""
    log = log or call_log(ws)
    if binding.startswith("replay:"):
        return ReplayBackend(Path(binding.removeprefix("replay:")))
    if binding.startswith("openai:"):
        url, _, model = binding.removeprefix("openai:").partition("#")
        return Recorded(OpenAIBackend(url, model or "default"), log)
    record = get_model(ws, binding)
    return Recorded(LlamaBackend(record, manager or manager_for(ws)), log)


def backend_for_role(
    ws: Workspace, role: str, manager: ModelManager | None = None, log: CallLog | None = None
) -> ModelBackend:
    """The backend serving ``role``: its binding in models.json, else converge.toml, else ``default``."""
    return backend_for(ws, role_binding(ws, role), manager, log)


def backend_window(backend: ModelBackend, default: int) -> int:
    """The context window of ``backend``'s model in tokens: the loaded one in-process, else ``default``
    (``models.context_length``: what an endpoint serves is not ours to see)."""
    inner = backend.inner if isinstance(backend, Recorded) else backend
    return inner.context_window if isinstance(inner, LlamaBackend) else default


def model_digest(ws: Workspace, role: str) -> str | None:
    """sha256 of the model file ``role`` uses (None for an endpoint whose weights we cannot see)."""
    return backend_for_role(ws, role).identity.sha256


def complete_structured(
    backend: ModelBackend,
    request: CompletionRequest,
    schema: type[M],
    retries: int = 2,
    log: CallLog | None = None,
) -> tuple[M, Completion]:
    """Ask for JSON constrained by ``schema``'s JSON schema; validate; retry with the error fed back."""
    constrained = replace(request, json_schema=schema.model_json_schema())

    def parse(text: str) -> M:
        return schema.model_validate_json(text)

    return _complete_validated(backend, constrained, parse, schema.__name__, retries, log)


def complete_json(
    backend: ModelBackend,
    request: CompletionRequest,
    json_schema: Mapping[str, Any],
    retries: int = 2,
    log: CallLog | None = None,
) -> tuple[Any, Completion]:
    """Like :func:`complete_structured` for a plain JSON schema (validated with ``jsonschema``)."""
    validator = _validator(json.dumps(json_schema, sort_keys=True))

    def parse(text: str) -> Any:
        value = json.loads(text)
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            where = "/".join(str(p) for p in errors[0].path) or "(top level)"
            raise ValueError(f"{where}: {errors[0].message}")
        return value

    constrained = replace(request, json_schema=dict(json_schema))
    return _complete_validated(backend, constrained, parse, "the schema", retries, log)


@functools.lru_cache(maxsize=64)
def _validator(schema_json: str) -> Any:
    """A checked validator of the schema (in canonical JSON); checking a schema costs ~20 ms, a run asks
    for the same few again and again."""
    import jsonschema

    schema = json.loads(schema_json)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ModelError(f"not a valid JSON schema: {exc.message}") from exc
    return jsonschema.Draft202012Validator(schema)


def _complete_validated(
    backend: ModelBackend,
    request: CompletionRequest,
    parse: Callable[[str], T],
    what: str,
    retries: int,
    log: CallLog | None,
) -> tuple[T, Completion]:
    if log is None and isinstance(backend, Recorded):
        log = backend.log  # the raw answer of a failure goes where the call itself was recorded
    attempt_request = request
    problem = ""
    completion: Completion | None = None
    for _ in range(retries + 1):
        completion = backend.complete(attempt_request)
        try:
            return parse(completion.text), completion
        except (ValidationError, ValueError) as exc:
            problem = _describe_problem(exc, completion, attempt_request)
            attempt_request = attempt_request.with_followup(
                completion.text,
                f"That answer is not valid: {problem}. Reply again with only one complete JSON value "
                "that matches the required schema.",
            )
    assert completion is not None
    saved = ""
    if log is not None:
        log.append(
            {
                "kind": FAILURE_KIND,
                "model": backend.identity.name,
                "model_sha256": backend.identity.sha256,
                "request_digest": request.digest(),
                "error": problem,
                "raw": completion.text,
            }
        )
        saved = f"; raw answer saved in {log.path}"
    name = backend.identity.name
    raise ModelError(f"model {name!r} gave no valid answer for {what} after {retries + 1} attempts: {problem}{saved}")


def _describe_problem(exc: Exception, completion: Completion, request: CompletionRequest) -> str:
    """One line for the model and the user: what is wrong with the answer."""
    if completion.finish_reason == "length":
        return f"the answer was cut off at max_tokens={request.max_tokens} before the JSON was complete"
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        return f"{where}: {err['msg']}"
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON: {exc.msg} at character {exc.pos}"
    return str(exc)
