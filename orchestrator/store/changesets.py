"""The durable changeset store: one JSON record per changeset, and its stored artifacts.

Records are ``.converge/changesets/<id>.json``, artifacts ``.converge/changesets/<id>/`` (:func:`artifact_path`).
Every write is atomic (temp file + rename), so a killed process leaves the old record or the new one; ids
are derived from what the change *is* (:func:`changeset_id`), so running the same gate step twice finds the
same changeset instead of making a second one.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from orchestrator.errors import SignatureError, UsageError, WorkspaceError
from orchestrator.store.storage import atomic_write, atomic_write_all, atomic_write_json, read_json, read_model
from orchestrator.store.verdicts import Decision, Risk
from orchestrator.store.workspace import Workspace

Status = Literal["pending", "approved", "rejected"]
STATUSES: tuple[Status, ...] = ("pending", "approved", "rejected")
ID_LENGTH = 16
AUTO = "policy:auto-approve"
DIFF = "diff.patch"
REPORT = "report.json"
VERDICT = "verdict.json"
SBOM = "sbom.cdx.json"


class Changeset(BaseModel):
    """What is kept about one changeset; the JSON keys scripts rely on are the first ten."""

    id: str
    repo: str
    run: str | None = None
    status: Status = "pending"
    commit: str = Field(description="the signed candidate commit")
    base: str = Field(description="commit of the generation the change was built on")
    generation: int | None = Field(default=None, description="the generation it became, once promoted")
    risk: Risk = Risk.LOW
    verdict: Decision = Field(description="policy decision: approve, review or reject")
    attestation: str = Field(description="DSSE envelope, relative to the workspace root")
    base_generation: int
    tree: str
    step: int | None = None
    attempt: int | None = None
    message: str = ""
    author: str = ""
    reasons: list[str] = Field(default_factory=list)
    tests: str = ""
    diff_sha256: str = ""
    report_sha256: str = ""
    sbom_sha256: str = ""
    created: str = ""
    decided: str | None = None
    decided_by: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, object]:
        return self.model_dump(mode="json")


def now() -> str:
    """A UTC timestamp as the store writes it."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def changeset_id(repo: str, base: str, key: str) -> str:
    """The id of the change ``key`` names on ``base`` of ``repo`` (deterministic).

    ``key`` is what makes the attempt unique: ``<run>/<step>-<attempt>`` for a model's
    proposal, the patch's sha256 for a submitted one.
    """
    return sha256("\0".join([repo, base, key]).encode())[:ID_LENGTH]


def store_dir(ws: Workspace) -> Path:
    """Where changeset records live."""
    return ws.state / "changesets"


def record_path(ws: Workspace, cs_id: str) -> Path:
    return store_dir(ws) / f"{cs_id}.json"


def artifact_path(ws: Workspace, cs_id: str, name: str) -> Path:
    """A stored artifact of a changeset (diff.patch, report.json, verdict.json, sbom.cdx.json).

    ``diff.patch`` is what the attestation's ``diff_sha256`` covers, ``report.json`` its
    ``test_report.sha256``; ``verdict.json`` is the policy verdict and ``sbom.cdx.json`` the SBOM of
    the candidate commit.
    """
    return store_dir(ws) / cs_id / name


def write_artifact(ws: Workspace, cs_id: str, name: str, data: bytes) -> str:
    """Store ``data`` as an artifact of ``cs_id`` atomically; return its sha256."""
    atomic_write(artifact_path(ws, cs_id, name), data)
    return sha256(data)


def write_artifacts(ws: Workspace, cs_id: str, artifacts: dict[str, bytes], proof: tuple[Path, dict[str, Any]]) -> None:
    """Store the artifacts of ``cs_id`` and its attestation ``proof`` (path, envelope) atomically, synced together."""
    files = [(artifact_path(ws, cs_id, name), data) for name, data in artifacts.items()]
    atomic_write_all([*files, (proof[0], _envelope_bytes(proof[1]))])


def save(ws: Workspace, cs: Changeset) -> None:
    """Write the record atomically."""
    atomic_write_json(record_path(ws, cs.id), cs.to_json())


def exists(ws: Workspace, cs_id: str) -> bool:
    return record_path(ws, cs_id).exists()


def load(ws: Workspace, cs_id: str) -> Changeset:
    """One changeset by id (or a unique prefix of at least 4 characters)."""
    path = record_path(ws, cs_id)
    if not path.exists() and len(cs_id) >= 4:
        matches = sorted(store_dir(ws).glob(f"{cs_id}*.json"))
        if len(matches) > 1:
            raise UsageError(f"changeset {cs_id!r} is ambiguous: {', '.join(m.stem for m in matches[:5])}")
        if matches:
            path = matches[0]
    if not path.exists() or "/" in cs_id:
        raise UsageError(f"unknown changeset {cs_id!r}; see `converge changeset list`")
    return read_model(path, Changeset)


def list_changesets(ws: Workspace, repo: str | None = None, status: str | None = None) -> list[Changeset]:
    """Changesets, newest first, optionally only one repo's or one status."""
    if status is not None and status not in STATUSES:
        raise UsageError(f"--status {status}: not a changeset status (choices: {', '.join(STATUSES)})")
    directory = store_dir(ws)
    found = []
    if directory.is_dir():
        for path in directory.glob("*.json"):
            cs = read_model(path, Changeset)
            if (repo is None or cs.repo == repo) and (status is None or cs.status == status):
                found.append(cs)
    return sorted(found, key=lambda c: (c.created, c.id), reverse=True)


def lock_for(ws: Workspace, cs_id: str) -> AbstractContextManager[None]:
    """The lock serialising decisions on one changeset."""
    return ws.lock(f"changeset-{cs_id}", f"changeset {cs_id}")


# --- attestation and verification ----------------------------------------------------------


def attestation_path(ws: Workspace, repo: str, cs_id: str) -> Path:
    """Where the DSSE envelope of a changeset is kept."""
    return ws.proofs / repo / f"{cs_id}.dsse.json"


def read_envelope(path: Path) -> dict[str, Any]:
    """A stored DSSE envelope."""
    if not path.exists():
        raise SignatureError(f"attestation: {path} does not exist")
    try:
        value = read_json(path)
    except WorkspaceError as exc:
        raise SignatureError(f"attestation: {exc}") from exc
    if not isinstance(value, dict):
        raise SignatureError(f"attestation: {path} is not a DSSE envelope")
    return value


def write_envelope(path: Path, env: dict[str, Any]) -> None:
    atomic_write(path, _envelope_bytes(env))


def _envelope_bytes(env: dict[str, Any]) -> bytes:
    return (json.dumps(env, indent=2, sort_keys=True) + "\n").encode()
