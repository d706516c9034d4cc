"""Local models: what the rest of Converge calls (backends by role or binding, context windows,
adding and placing models, structured completions, model digests for attestations).

The pieces live beside this module: ``gguf``, ``registry``, ``backends`` (protocol, call log, replay),
``openai`` and ``pool`` (servers), ``manager`` (residency under RAM and VRAM budgets, with ``placement``,
``threads``, ``memory``), ``llama`` (the in-process backend), ``promptcache`` and ``window``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from orchestrator.errors import ModelError
from orchestrator.models import registry
from orchestrator.models.backends import (
    CallLog,
    Completion,
    CompletionRequest,
    Message,
    ModelBackend,
    ModelIdentity,
    Recorded,
    ReplayBackend,
)
from orchestrator.models.gguf import read_gguf
from orchestrator.models.llama import LlamaBackend, ModelManager, default_budget
from orchestrator.models.openai import OpenAIBackend
from orchestrator.models.placement import Placement
from orchestrator.models.pool import EndpointPool
from orchestrator.models.registry import (
    DEFAULT_MODEL,
    ModelRecord,
    all_roles,
    get_model,
    load_registry,
    role_binding,
    use_model,
)
from orchestrator.store.workspace import Workspace

if TYPE_CHECKING:
    from orchestrator.models.llama import ModelManager

__all__ = [
    "DEFAULT_MODEL",
    "CallLog",
    "Completion",
    "CompletionRequest",
    "Message",
    "ModelBackend",
    "ModelIdentity",
    "ModelRecord",
    "add_model",
    "all_roles",
    "backend_for",
    "backend_for_role",
    "call_log",
    "complete_json",
    "complete_structured",
    "context_window",
    "default_budget",
    "get_model",
    "load_registry",
    "manager_for",
    "model_digest",
    "placement_of",
    "role_binding",
    "use_model",
]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
FAILURE_KIND = "structured_failure"

_SHARED: dict[Path, ModelManager] = {}
_POOLS: dict[tuple[Path, str], EndpointPool] = {}  # per process, so calls in flight and health are shared
_ENDPOINTS: dict[str, OpenAIBackend] = {}


def call_log(ws: Workspace) -> CallLog:
    """The workspace's log of model calls (what ``replay:`` reads)."""
    return CallLog(ws.state / "logs" / "model-calls.jsonl")


def manager_for(ws: Workspace) -> ModelManager:
    """The process-wide ModelManager of a workspace, built from ``[models]`` (so role switches stay free)."""
    from orchestrator.models.llama import ModelManager  # noqa: PLC0415  lazy: the native library, loaded only with a model

    manager = _SHARED.get(ws.root)
    if manager is None:
        config = ws.config().models
        manager = ModelManager(
            config=config, cache_dir=ws.cache / "prompt-cache" if config.prefix_cache else None, ledger=ws.state
        )
        _SHARED[ws.root] = manager
    return manager


def backend_for(
    ws: Workspace, binding: str, manager: ModelManager | None = None, log: CallLog | None = None
) -> ModelBackend:
    """A backend for a registered model name, ``openai:URL[#model]`` (comma-separated: a pool) or
    ``replay:FILE``; real ones are recorded."""
    log = log or call_log(ws)
    if binding.startswith("replay:"):
        return ReplayBackend(Path(binding.removeprefix("replay:")))
    if binding.startswith("openai:"):
        urls = registry.endpoints(binding)
        if len(urls) == 1:
            return Recorded(openai_backend(urls[0]), log)
        pool = _POOLS.get((ws.root, binding))
        if pool is None:
            pool = _POOLS[(ws.root, binding)] = EndpointPool([openai_backend(u) for u in urls], log=log)
        return Recorded(pool, log)
    record = get_model(ws, binding)
    return Recorded(LlamaBackend(record, manager or manager_for(ws)), log)


def openai_backend(binding: str) -> OpenAIBackend:
    """The backend of one ``openai:URL[#model]``, one per process (so a window it learned is remembered)."""
    backend = _ENDPOINTS.get(binding)
    if backend is None:
        url, _, model = binding.removeprefix("openai:").partition("#")
        backend = _ENDPOINTS[binding] = OpenAIBackend(url, model or "default")
    return backend


def context_window(ws: Workspace, role: str) -> int:
    """The context window prompts of ``role`` must fit: the loaded model's (its GGUF's, capped by
    ``context_length``), or what its server reports; ``[models] context_length`` where nothing says."""
    binding = role_binding(ws, role)
    if binding.startswith("replay:"):
        return ws.config().models.context_length
    if binding.startswith("openai:"):
        windows = [w for w in (openai_backend(u).window() for u in registry.endpoints(binding)) if w]
        return min(windows) if windows else ws.config().models.context_length
    return manager_for(ws).context_for(get_model(ws, binding))


def add_model(ws: Workspace, path: Path, name: str) -> ModelRecord:
    """Register the GGUF at ``path`` as ``name``; a model that fits in neither VRAM nor RAM is refused
    from its header, before its digest is computed or anything is registered."""
    path = path.expanduser().absolute()
    manager_for(ws).place(name, read_gguf(path))
    return registry.save_model(ws, registry.describe(path, name))


def placement_of(ws: Workspace, record: ModelRecord) -> Placement:
    """Where ``record`` goes with its settings (VRAM and RAM); a ModelError if it fits in neither."""
    return manager_for(ws).placement(record)


def backend_for_role(
    ws: Workspace, role: str, manager: ModelManager | None = None, log: CallLog | None = None
) -> ModelBackend:
    """The backend serving ``role``: its binding in models.json, else converge.toml, else ``default``."""
    return backend_for(ws, role_binding(ws, role), manager, log)


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
    """Like :func:`complete_structured` for a plain JSON schema (validated with ``jsonschema``).

    A request that carries a schema of its own (stricter: grounded in a repo) is decoded against that
    one, and its answers checked against ``json_schema`` (the caller checks the rest, saying why)."""
    validator = _validator(json.dumps(json_schema, sort_keys=True))

    def parse(text: str) -> Any:
        value = json.loads(text)
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            where = "/".join(str(p) for p in errors[0].path) or "(top level)"
            raise ValueError(f"{where}: {errors[0].message}")
        return value

    constrained = replace(request, json_schema=dict(request.json_schema or json_schema))
    return _complete_validated(backend, constrained, parse, "the schema", retries, log)


@functools.lru_cache(maxsize=64)
def _validator(schema_json: str) -> Any:
    """A checked validator of the schema (in canonical JSON); checking a schema is slow and a run asks
    for the same few again and again."""
    import jsonschema  # noqa: PLC0415  lazy: the native library, loaded only with a model

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
