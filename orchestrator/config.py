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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.errors import ConfigError

CONFIG_FILE = "converge.toml"
ENV_PREFIX = "CONVERGE_"


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelsConfig(Section):
    """Local models: residency budget and role bindings."""

    memory_budget: int | None = Field(
        default=None, description="bytes of RAM models may occupy; default: 60% of available RAM"
    )
    context_length: int = Field(default=4096, gt=0, description="default context window, tokens")
    roles: dict[str, str] = Field(default_factory=dict, description="role name -> registered model name")
    n_threads: int | None = Field(default=None, gt=0, description="CPU threads for llama.cpp; default: all cores")
    prefix_cache: bool = Field(default=True, description="save prompt-prefix KV states under cache/prompt-cache/")
    structured_retries: int = Field(default=2, ge=0, description="retries of a malformed structured answer")


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
    data = _merge(data, env_overrides(os.environ if environ is None else environ))
    data = _merge(data, overrides or {})
    try:
        return ConvergeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(CONFIG_FILE, exc)) from exc


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
