"""The policy engine: declarative rules every changeset is judged by, which no model can talk past.

A :class:`Policy` is read from TOML layers (the shipped ``policies/default.toml``, the
workspace's ``policies/*.toml``, then per-repo overrides); tables merge key by key, lists
accumulate, so a later layer can add protected paths or allowed packages but never drop
one. :func:`evaluate` judges a :class:`~orchestrator.policy_diff.ChangeInput` — built by
git, never by a model — and returns a :class:`Verdict`. The verdict is final in one
direction: :func:`apply_reviewer_findings` can only raise it. Nothing inside the repo (a
README, a comment, a docstring) is read as an instruction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.config import format_validation_error, read_toml
from orchestrator.errors import ConfigError
from orchestrator.policy_diff import Author, ChangeInput, FileChange, change_from_commits
from orchestrator.workspace import Workspace, source_root

__all__ = [
    "Author",
    "ChangeInput",
    "Decision",
    "FileChange",
    "Finding",
    "Policy",
    "Reason",
    "Risk",
    "Verdict",
    "apply_reviewer_findings",
    "change_from_commits",
    "evaluate",
    "load_policies",
]


class Decision(StrEnum):
    """What happens to a changeset; ordered approve < review < reject."""

    APPROVE = "approve"
    REVIEW = "review"
    REJECT = "reject"

    @property
    def rank(self) -> int:
        return _DECISION_RANK[self]


class Risk(StrEnum):
    """How much a changeset could hurt; ordered low < medium < high."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def rank(self) -> int:
        return _RISK_RANK[self]


_DECISION_RANK = {Decision.APPROVE: 0, Decision.REVIEW: 1, Decision.REJECT: 2}
_RISK_RANK = {Risk.LOW: 0, Risk.MEDIUM: 1, Risk.HIGH: 2}

Action = Literal["approve", "review", "reject"]
Escalation = Literal["review", "reject"]


# --- the policy file ---------------------------------------------------------------------


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


class Secrets(_Table):
    """Credentials on added lines."""

    detect_secrets: bool = Field(default=True, description="run detect-secrets' offline plugins too")
    patterns: dict[str, str] = Field(default_factory=dict, description="extra name -> regex of a secret")
    action: Escalation = "reject"

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: dict[str, str]) -> dict[str, str]:
        import re

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
        from orchestrator.policy_rules import normalise_name

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


# --- the verdict --------------------------------------------------------------------------


class Reason(BaseModel):
    """Why a rule spoke: its id, a message for people, and where."""

    model_config = ConfigDict(frozen=True)

    rule: str
    message: str
    file: str | None = None
    line: int | None = None
    decision: Decision = Decision.APPROVE
    risk: Risk = Risk.LOW

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "decision": str(self.decision),
            "risk": str(self.risk),
        }


class Verdict(BaseModel):
    """The policy's answer for one changeset."""

    model_config = ConfigDict(frozen=True)

    verdict: Decision
    risk: Risk
    reasons: tuple[Reason, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"verdict": str(self.verdict), "risk": str(self.risk), "reasons": [r.to_json() for r in self.reasons]}

    @property
    def rules(self) -> set[str]:
        """Ids of the rules that asked for more than approval."""
        return {r.rule for r in self.reasons if r.decision != Decision.APPROVE}


class Finding(BaseModel):
    """One finding of a reviewer agent: it can raise risk, never lower it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    message: str
    severity: Risk = Risk.LOW
    file: str | None = None
    line: int | None = None


MAX_REASONS_PER_RULE = 25


def combine(reasons: Iterable[Reason]) -> Verdict:
    """The verdict of a set of reasons: the strictest decision and the highest risk."""
    kept: list[Reason] = []
    counts: dict[str, int] = {}
    decision, risk = Decision.APPROVE, Risk.LOW
    for reason in reasons:
        decision = max(decision, reason.decision, key=lambda d: d.rank)
        if reason.decision != Decision.APPROVE:
            risk = max(risk, reason.risk, key=lambda r: r.rank)
        counts[reason.rule] = counts.get(reason.rule, 0) + 1
        if counts[reason.rule] <= MAX_REASONS_PER_RULE:
            kept.append(reason)
    for rule, n in counts.items():
        if n > MAX_REASONS_PER_RULE:
            kept.append(Reason(rule=rule, message=f"... and {n - MAX_REASONS_PER_RULE} more"))
    if decision != Decision.APPROVE and risk == Risk.LOW:
        risk = Risk.MEDIUM
    return Verdict(verdict=decision, risk=risk, reasons=tuple(kept))


def evaluate(change: ChangeInput, policy: Policy) -> Verdict:
    """Judge ``change`` against ``policy``: deterministic, and blind to any text in the repo."""
    from orchestrator.policy_rules import RULES

    return combine(reason for rule in RULES for reason in rule(change, policy))


def apply_reviewer_findings(verdict: Verdict, findings: Iterable[Finding | Mapping[str, Any]]) -> Verdict:
    """Add a reviewer's findings: risk and decision can only go up (a medium/high finding means review)."""
    extra = []
    for item in findings:
        finding = item if isinstance(item, Finding) else Finding.model_validate(item)
        decision = Decision.APPROVE if finding.severity == Risk.LOW else Decision.REVIEW
        extra.append(
            Reason(
                rule="reviewer",
                message=finding.message,
                file=finding.file,
                line=finding.line,
                decision=decision,
                risk=finding.severity,
            )
        )
    raised = combine([*verdict.reasons, *extra])
    return Verdict(
        verdict=max(verdict.verdict, raised.verdict, key=lambda d: d.rank),
        risk=max(verdict.risk, raised.risk, key=lambda r: r.rank),
        reasons=(*verdict.reasons, *extra),
    )
