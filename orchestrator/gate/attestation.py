"""The changeset attestation's predicate (``https://converge.dev/changeset/v1``) as a typed value.

Signing builds it, verification parses it: both read the same fields. The statement around it
and the DSSE envelope are :mod:`orchestrator.signing.keys`'s.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class BaseRef(_Part):
    generation: int
    commit: str


class Digest(_Part):
    sha256: str | None = None


class Tests(_Part):
    sha256: str | None = None
    summary: str = ""
    ok: bool = False


class PolicyPart(_Part):
    decision: str
    risk: str
    reasons: list[str] = []
    sha256: str | None = None


class SbomPart(_Part):
    sha256: str | None = None
    format: str = "CycloneDX 1.6 JSON"


class AgentPart(_Part):
    name: str
    card_sha256: str | None = None


class SandboxPart(_Part):
    image: str | None = None


class RunPart(_Part):
    id: str | None = None
    step: int | None = None
    attempt: int | None = None


class Timestamps(_Part):
    created: str
    signed: str


class Predicate(_Part):
    """What a changeset attestation says: base, digests of diff/tests/verdict/SBOM, who made it, where it ran."""

    changeset: str
    repo: str
    base: BaseRef
    diff: Digest
    tests: Tests
    policy: PolicyPart
    sbom: SbomPart
    agent: AgentPart
    model: Digest
    sandbox: SandboxPart
    run: RunPart
    message: str = ""
    timestamps: Timestamps
