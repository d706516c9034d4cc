"""The policy file: its tables (pydantic, unknown keys refused) and loading the layers of a repo's policy.

Layers, lowest first: the shipped ``policies/default.toml``, the workspace's ``policies/*.toml``,
then a per-repo override; tables merge key by key and lists accumulate, so a later layer can add
protected paths or allowed packages but never drop one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.config import format_validation_error, read_toml
from orchestrator.errors import ConfigError
from orchestrator.policy.verdict import Action, Escalation
from orchestrator.store.workspace import Workspace, source_root

# --- the policy file ---------------------------------------------------------------------


def normalise_name(name: str) -> str:
    """PEP 503 normal form of a package name."""
    return re.sub(r"[-_.]+", "-", name).lower()


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProtectedPaths(_Table):
    """Paths that always need a human: a change touching one is HIGH risk and never auto-approved."""

    paths: list[str] = Field(default_factory=list, description="globs relative to the repo root")
    self_paths: list[str] = Field(default_factory=list, description="extra globs when the repo is Converge itself")
    action: Escalation = "review"


class BlastRadius(_Table):
    """Size limits above which a change needs review."""

    max_files: int = Field(default=40, gt=0, description="files touched (a rename counts once)")
    max_added: int = Field(default=1500, gt=0, description="lines added")
    max_removed: int = Field(default=800, gt=0, description="lines removed")
    max_deleted_files: int = Field(default=10, ge=0, description="files deleted")
    action: Escalation = "review"


class Checks(_Table):
    """Required checks: tests ran and passed, and were not weakened."""

    require_tests: bool = True
    on_failed: Escalation = "reject"
    on_not_run: Escalation = "review"
    test_paths: list[str] = Field(default_factory=list, description="globs of test files")
    weakening: Escalation = Field(default="review", description="deleted tests, skip/xfail added, asserts removed")
    lost_tests: Escalation = Field(
        default="reject", description="a model's change: base-passing tests gone, renamed, skipped or deselected"
    )
    lost_tests_human: Escalation = Field(default="review", description="the same, for a person's change")
    collection: Escalation = Field(
        default="review", description="conftest.py, pytest config, collection hooks, the test command line"
    )
    harness: Escalation = Field(
        default="review", description="non-test code patching builtins, pytest, unittest, time or the harness"
    )


class Secrets(_Table):
    """Credentials on added lines."""

    detect_secrets: bool = Field(default=True, description="run detect-secrets' offline plugins too")
    patterns: dict[str, str] = Field(default_factory=dict, description="extra name -> regex of a secret")
    action: Escalation = "reject"

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: dict[str, str]) -> dict[str, str]:
        for name, pattern in value.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {name!r} is not a valid regex: {exc}") from exc
        return value


class UnicodeRule(_Table):
    """Hidden/bidirectional characters and confusable identifiers on added lines."""

    hidden: Escalation = "reject"
    confusables: Escalation = "reject"
    code_extensions: list[str] = Field(default_factory=list, description="suffixes checked for homoglyph identifiers")


class Dependencies(_Table):
    """New or changed dependencies must be known, with an allowed license."""

    allowed_licenses: list[str] = Field(default_factory=list, description="SPDX ids")
    known: dict[str, str] = Field(default_factory=dict, description="package -> SPDX license (offline allow list)")
    unknown: Escalation = "review"
    disallowed_license: Escalation = "review"

    @field_validator("known")
    @classmethod
    def _normalise(cls, value: dict[str, str]) -> dict[str, str]:
        return {normalise_name(k): v for k, v in value.items()}


class Files(_Table):
    """Kinds of file change that need a look."""

    binary: Action = "review"
    exec_bit: Action = "review"
    symlink_outside: Escalation = "reject"
    symlink_inside: Action = "approve"
    submodule: Action = "review"


class Policy(_Table):
    """The merged policy a changeset is judged by."""

    description: str = ""
    protected: ProtectedPaths = Field(default_factory=ProtectedPaths)
    blast_radius: BlastRadius = Field(default_factory=BlastRadius)
    checks: Checks = Field(default_factory=Checks)
    secrets: Secrets = Field(default_factory=Secrets)
    unicode: UnicodeRule = Field(default_factory=UnicodeRule)
    dependencies: Dependencies = Field(default_factory=Dependencies)
    files: Files = Field(default_factory=Files)

    def digest(self) -> str:
        """sha256 of the canonical JSON of the policy (recorded in attestations)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


# --- loading ------------------------------------------------------------------------------


def shipped_dir() -> Path:
    """The ``policies/`` shipped beside the orchestrator package."""
    return source_root() / "policies"


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Tables merge key by key, lists accumulate (order kept, no duplicates), scalars replace."""
    merged = dict(base)
    for key, value in extra.items():
        old = merged.get(key)
        if isinstance(value, Mapping) and isinstance(old, dict):
            merged[key] = _merge(old, value)
        elif isinstance(value, list) and isinstance(old, list):
            merged[key] = old + [v for v in value if v not in old]
        else:
            merged[key] = value
    return merged


def policy_layers(source: Workspace | Sequence[Path], repo: str | None = None) -> list[Path]:
    """The files a repo's policy is made of, lowest first."""
    if not isinstance(source, Workspace):
        dirs = list(source)
        found = [p for d in dirs for p in sorted(d.glob("*.toml"))]
        return found + [d / "repos" / f"{repo}.toml" for d in dirs if repo and (d / "repos" / f"{repo}.toml").is_file()]
    cfg = source.config().policy
    shipped, local = shipped_dir(), source.root / "policies"
    layers: list[Path] = []
    names = [*cfg.files, *(cfg.repos.get(repo, []) if repo else [])]
    for name in names:
        found = [p for p in (shipped / f"{name}.toml", local / f"{name}.toml") if p.is_file()]
        if not found:
            raise ConfigError(
                f"converge.toml: policy: no policy named {name!r} in {local} or the shipped policies/ "
                f"(have: {', '.join(sorted({p.stem for p in [*shipped.glob('*.toml'), *local.glob('*.toml')]}))})"
            )
        layers += [p for p in found if p not in layers]
    layers += [p for p in sorted(local.glob("*.toml")) if p not in layers]
    override = local / "repos" / f"{repo}.toml"
    if repo and override.is_file():
        layers.append(override)
    return layers


def load_policies(source: Workspace | Sequence[Path], repo: str | None = None) -> Policy:
    """Merge and validate the policy layers of ``repo``; a bad file is a ConfigError naming file and key."""
    data: dict[str, Any] = {}
    for path in policy_layers(source, repo):
        layer = read_toml(path)
        candidate = _merge(data, layer)
        try:
            Policy.model_validate(candidate)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(f"{path.parent.name}/{path.name}", exc)) from exc
        data = candidate
    return Policy.model_validate(data)
