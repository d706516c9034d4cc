"""`converge.toml`: its pydantic model, loading, and the one place precedence is decided.

Precedence, lowest first: defaults < ``converge.toml`` < ``CONVERGE_<SECTION>__<KEY>``
environment variables < command-line flags (passed to :func:`load_config` as overrides).
Agent cards and policies have their own models in ``agents`` and ``policy``; they use
:func:`format_validation_error` so every bad file reads ``file: key: what is wrong``.
"""

from __future__ import annotations

import copy
import functools
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.errors import ConfigError

CONFIG_FILE = "converge.toml"
ENV_PREFIX = "CONVERGE_"


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


KvType = Literal["f16", "q8_0", "q4_0"]
NumaPolicy = Literal["off", "distribute", "isolate"]
Auto = Literal["auto"]
Threads = Annotated[int, Field(gt=0)] | Auto
GpuLayers = Annotated[int, Field(ge=0)] | Literal["all", "auto"]
Numa = NumaPolicy | Annotated[int, Field(ge=0)]


class ModelTuning(Section):
    """How one model is run (``[models.settings.NAME]``); a key left out takes ``[models]``'s value."""

    context_length: int | None = Field(default=None, gt=0, description="context window, tokens")
    threads: Threads | None = Field(default=None, description="threads generating tokens")
    threads_batch: Threads | None = Field(default=None, description="threads evaluating prompts")
    gpu_layers: GpuLayers | None = Field(default=None, description="layers offloaded")
    kv_type: KvType | None = Field(default=None, description="KV cache type")
    flash_attn: bool | None = Field(default=None, description="flash attention")
    mlock: bool | None = Field(default=None, description="lock the weights in RAM")
    mmap: bool | None = Field(default=None, description="map the file instead of reading it")
    numa: Numa | None = Field(default=None, description="NUMA placement")


class ModelSettings(BaseModel):
    """The settings one model is loaded with, every key resolved (see :meth:`ModelsConfig.settings_for`)."""

    model_config = ConfigDict(frozen=True)

    context_length: int
    threads: Threads
    threads_batch: Threads
    gpu_layers: GpuLayers
    kv_type: KvType
    flash_attn: bool
    mlock: bool
    mmap: bool
    numa: Numa


class ModelsConfig(Section):
    """Local models: memory and VRAM budgets, how each model runs, role bindings."""

    memory_budget: int | None = Field(
        default=None, description="bytes of RAM models may occupy; default: 60% of available RAM"
    )
    vram_budget: int | None = Field(
        default=None, ge=0, description="bytes of GPU memory models may occupy; default: the GPU's free memory"
    )
    context_length: int = Field(
        default=4096, gt=0, description="context window a model is loaded with, at most what its GGUF was trained for"
    )
    roles: dict[str, str | list[str]] = Field(
        default_factory=dict, description="role -> model name or binding; a list of openai: endpoints is a pool"
    )
    threads: Threads = Field(
        default="auto", description="generation threads; auto: the cores nothing else is using at each call"
    )
    threads_batch: Threads = Field(default="auto", description="prompt-evaluation threads; auto as for threads")
    gpu_layers: GpuLayers = Field(
        default="auto", description="layers offloaded to the GPU; auto: as many as fit vram_budget"
    )
    kv_type: KvType = Field(default="f16", description="KV cache type: f16, q8_0 or q4_0")
    flash_attn: bool | None = Field(default=None, description="flash attention; default: on for a quantised KV cache")
    mlock: bool = Field(default=False, description="lock weights in RAM so they are never paged out")
    mmap: bool = Field(default=True, description="map the model file (shared page cache) instead of reading it")
    numa: Numa = Field(default="off", description="off, distribute, isolate, or a NUMA node number")
    settings: dict[str, ModelTuning] = Field(default_factory=dict, description="model name -> its own settings")
    prefix_cache: bool = Field(default=True, description="save prompt-prefix KV states under cache/prompt-cache/")
    prompt_cache_bytes: int = Field(
        default=256 * 2**20, ge=0, description="bytes of cache/prompt-cache/ kept; least recently used out first"
    )
    structured_retries: int = Field(default=2, ge=0, description="retries of a malformed structured answer")

    def settings_for(self, name: str) -> ModelSettings:
        """The settings model ``name`` runs with: ``[models.settings.NAME]`` over ``[models]``."""
        own = self.settings.get(name, ModelTuning())
        resolved = {key: getattr(self, key) for key in ModelTuning.model_fields}
        resolved.update(own.model_dump(exclude_none=True))
        if resolved["flash_attn"] is None:
            # llama.cpp only quantises the V cache with flash attention on
            resolved["flash_attn"] = resolved["kv_type"] != "f16"
        if resolved["kv_type"] != "f16" and not resolved["flash_attn"]:
            raise ConfigError(
                f"{CONFIG_FILE}: models.settings.{name}: kv_type = {resolved['kv_type']!r} needs flash_attn = true "
                "(llama.cpp quantises the V cache only with flash attention)"
            )
        return ModelSettings.model_validate(resolved)


class SandboxConfig(Section):
    """Where and how candidate commands run."""

    backend: str = Field(default="docker", description="sandbox backend: docker or bubblewrap")
    memory: str = Field(default="2g", description="memory limit per container")
    cpus: float = Field(default=1.0, gt=0, description="CPU limit per container")
    pids: int = Field(default=256, gt=0, description="process limit per container")
    timeout: float = Field(default=600.0, gt=0, description="wall-clock seconds per command")
    output_limit: int = Field(default=1_000_000, gt=0, description="bytes of output kept")
    tmpfs_size: str = Field(default="256m", description="size of the /tmp tmpfs")
    disk: str = Field(
        default="4g", description="size limit of the tree a sandbox writes (a filesystem of its own); 0: none"
    )
    allow: dict[str, list[Literal["network-deps"]]] = Field(
        default_factory=dict,
        description="repo -> hardening items loosened for it (network-deps: network for dependency setup only)",
    )
    env: dict[str, str] = Field(default_factory=dict, description="extra variables set in every sandbox command")
    find_links: list[str] = Field(
        default_factory=list, description="directories of wheels that test environments install from, offline"
    )
    index_url: str = Field(default="", description="a local package index (a directory in PEP 503 layout), offline")


class RunConfig(Section):
    """Budgets of a refinement run."""

    max_steps: int = Field(default=5, gt=0, description="plan steps executed per run")
    attempts_per_step: int = Field(default=3, gt=0, description="propose attempts per step")
    max_tokens: int = Field(default=200_000, gt=0, description="tokens generated per run")
    wall_time: float = Field(default=3600.0, gt=0, description="seconds per run")
    full_suite_before_promote: bool = Field(
        default=True, description="run every test, not only the selected ones, before promotion"
    )
    on_step_failure: Literal["stop", "continue"] = Field(
        default="stop", description="after a failed or rejected step: end the run (later steps build on it) or go on"
    )
    reproducibility_check: bool = Field(
        default=False, description="run the full suite twice per verified attempt and record if outcomes match"
    )
    candidates: int = Field(
        default=1, ge=1, le=16, description="proposals per attempt, verified side by side; the best one goes on"
    )


class ScaleConfig(Section):
    """Where independent jobs run: candidate verifications, eval trials."""

    engine: Literal["local", "ray"] = Field(
        default="local", description="local: threads of this process; ray: tasks on a Ray cluster"
    )
    address: str = Field(default="auto", description="the Ray cluster: auto (the one started here) or ray://host:port")
    workers: Annotated[int, Field(gt=0)] | Auto = Field(
        default="auto", description="jobs at once on the local engine; auto: the cores, bounded by sandbox memory"
    )
    resources: dict[str, float] = Field(
        default_factory=dict, description="Ray resources each job needs, e.g. {docker = 1}: nodes that declare them"
    )
    retries: int = Field(default=2, ge=0, description="times a Ray task lost with its node is run again elsewhere")
    connect_timeout: float = Field(default=20.0, gt=0, description="seconds to wait for the Ray cluster to answer")


class PolicyConfig(Section):
    """Which policy files apply."""

    files: list[str] = Field(default_factory=lambda: ["default"], description="policy names under policies/")
    repos: dict[str, list[str]] = Field(default_factory=dict, description="repo name -> extra policy names for it")


class SigningConfig(Section):
    """Keys used to sign changesets and approvals."""

    key: str | None = Field(default=None, description="workspace signing key; default .converge/keys/")
    user_key: str | None = Field(default=None, description="the human reviewer's SSH key")
    user_principal: str | None = Field(default=None, description="the human's signer identity")


class ConvergeConfig(Section):
    """The whole of `converge.toml`."""

    models: ModelsConfig = Field(default_factory=ModelsConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    scale: ScaleConfig = Field(default_factory=ScaleConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    signing: SigningConfig = Field(default_factory=SigningConfig)


def format_validation_error(source: str, exc: ValidationError) -> str:
    """One line naming the file, the key and what is wrong with it."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: {key}: {err['msg']}{more}"


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning syntax errors into a ConfigError naming the file.

    The parse is remembered until the file changes (its inode, size or modification time): a
    run reads converge.toml and the policies dozens of times. Each caller gets its own copy.
    """
    try:
        st = path.stat()  # the stamp store.storage.file_stamp gives; config sits below the store
    except OSError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    return copy.deepcopy(_parse_toml(path, (st.st_ino, st.st_size, st.st_mtime_ns)))


@functools.lru_cache(maxsize=64)
def _parse_toml(path: Path, _stamp: tuple[int, int, int]) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}") from exc


def env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``CONVERGE_SANDBOX__TIMEOUT=30`` -> ``{"sandbox": {"timeout": "30"}}``."""
    found: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section in ConvergeConfig.model_fields and key:
            found.setdefault(section, {})[key] = value
    return found


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    state_dir: Path,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ConvergeConfig:
    """Load `converge.toml` from a workspace's `.converge/`, then apply env and flags."""
    path = state_dir / CONFIG_FILE
    data = read_toml(path) if path.exists() else {}
    from_env = env_overrides(os.environ if environ is None else environ)
    data = _merge(data, from_env)
    data = _merge(data, overrides or {})
    try:
        return ConvergeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(_source_of(exc, from_env, overrides or {}), exc)) from exc


def _source_of(exc: ValidationError, from_env: Mapping[str, Any], overrides: Mapping[str, Any]) -> str:
    """Where the first bad value came from: a flag, a ``CONVERGE_*`` variable, or converge.toml."""
    loc = [str(p) for p in exc.errors()[0]["loc"]]
    if len(loc) >= 2 and loc[1] in (overrides.get(loc[0]) or {}):
        return "command line"
    if len(loc) >= 2 and loc[1] in (from_env.get(loc[0]) or {}):
        return f"environment variable {ENV_PREFIX}{loc[0].upper()}__{loc[1].upper()}"
    return CONFIG_FILE


def dump_toml(data: Mapping[str, Any]) -> str:
    """A small TOML writer for the flat tables converge.toml uses."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, Mapping)}
    for key, value in scalars.items():
        lines.append(f"{key} = {_toml_value(value)}")
    for key, value in data.items():
        if isinstance(value, Mapping):
            lines.append("")
            lines.append(f"[{key}]")
            for sub_key, sub_value in value.items():
                if isinstance(sub_value, Mapping):
                    inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in sub_value.items())
                    lines.append(f"{_toml_key(sub_key)} = {{ {inner} }}")
                elif sub_value is not None:
                    lines.append(f"{_toml_key(sub_key)} = {_toml_value(sub_value)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
