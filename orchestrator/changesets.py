"""The durable changeset store: one JSON record per changeset, and its stored artifacts.

Layout, under the workspace's ``.converge/``::

    changesets/<id>.json          the record (status, commit, base, verdict, digests, ...)
    changesets/<id>/diff.patch    the diff the attestation's ``diff_sha256`` covers
    changesets/<id>/report.json   the test report its ``test_report.sha256`` covers
    changesets/<id>/verdict.json  the policy verdict
    changesets/<id>/sbom.cdx.json the SBOM of the candidate commit

Every write is atomic (temp file + rename), so a killed process leaves the old record or the
new one. Ids are derived from what the change *is* (repo, base commit, diff digest, and the
run/step/attempt that produced it), so running the same gate step twice finds the same
changeset instead of making a second one.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from orchestrator import gitops, signing
from orchestrator.errors import SignatureError, UsageError, WorkspaceError
from orchestrator.storage import atomic_write, atomic_write_all, atomic_write_json, read_json, read_model
from orchestrator.workspace import Workspace

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
    risk: str = "low"
    verdict: str = Field(description="policy decision: approve, review or reject")
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
        return self.model_dump()


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
    """A stored artifact of a changeset (diff.patch, report.json, verdict.json, sbom.cdx.json)."""
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


@dataclass(frozen=True)
class Problem:
    """One thing that does not verify: the field, and what is wrong with it."""

    field: str
    detail: str

    def __str__(self) -> str:
        return f"{self.field}: {self.detail}"


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


def _digest_of(path: Path) -> str | None:
    return sha256(path.read_bytes()) if path.exists() else None


def _signature_problems(ws: Workspace, cs: Changeset, env: dict[str, Any], repo_path: Path) -> list[Problem]:
    allowed = signing.allowed_signers_path(ws)
    problems = []
    try:
        signing.verify_commit(repo_path, cs.commit, allowed)
    except SignatureError as exc:
        problems.append(Problem("commit signature", str(exc)))
    try:
        signing.verify_envelope(env, allowed, signing.WORKSPACE_PRINCIPAL)
    except SignatureError as exc:
        problems.append(Problem("attestation signature", str(exc)))
    if cs.status == "approved" and cs.decided_by not in (None, AUTO):
        if cs.decided_by == signing.WORKSPACE_PRINCIPAL:
            problems.append(Problem("approval signature", "approved by the workspace key, not a person"))
        else:
            try:
                signing.verify_envelope(env, allowed, cs.decided_by)
            except SignatureError as exc:
                problems.append(Problem("approval signature", str(exc)))
    return problems


def _expect(problems: list[Problem], field: str, found: object, expected: object) -> None:
    if found != expected:
        problems.append(Problem(field, f"attestation says {found!r}, but it is {expected!r}"))


def _payload_problems(ws: Workspace, cs: Changeset, statement: dict[str, Any], repo_path: Path) -> list[Problem]:
    from orchestrator import candidates, sbom

    problems: list[Problem] = []
    pred = statement.get("predicate") or {}
    if statement.get("_type") != signing.STATEMENT_TYPE or statement.get("predicateType") != signing.PREDICATE_TYPE:
        problems.append(Problem("statement", "not an in-toto Statement v1 with the changeset predicate type"))
    _expect(problems, "changeset", pred.get("changeset"), cs.id)
    _expect(problems, "repo", pred.get("repo"), cs.repo)
    subjects = {k: v for s in statement.get("subject", []) for k, v in (s.get("digest") or {}).items()}
    _expect(problems, "commit", subjects.get("gitCommit"), cs.commit)
    header = gitops.commit_header(repo_path, cs.commit)
    if header is None:
        problems.append(Problem("commit", f"{cs.commit} is not a commit in {repo_path}"))
        return problems
    tree, parent = header
    _expect(problems, "tree", subjects.get("gitTree"), tree)
    base = pred.get("base") or {}
    _expect(problems, "base", base.get("commit"), cs.base)
    if parent != cs.base:
        problems.append(Problem("base", f"commit's parent is {parent[:12]}, not the base {cs.base[:12]}"))
    diff_digest = sha256(candidates.diff(repo_path, cs.base, cs.commit).encode())
    _expect(problems, "diff", (pred.get("diff") or {}).get("sha256"), diff_digest)
    _expect(problems, "diff (stored)", _digest_of(artifact_path(ws, cs.id, DIFF)), diff_digest)
    tests = pred.get("tests") or {}
    _expect(problems, "test_report", tests.get("sha256"), _digest_of(artifact_path(ws, cs.id, REPORT)))
    policy = pred.get("policy") or {}
    _expect(problems, "verdict", policy.get("sha256"), _digest_of(artifact_path(ws, cs.id, VERDICT)))
    _expect(problems, "verdict", policy.get("decision"), cs.verdict)
    sbom_digest = sha256(sbom.build(repo_path, cs.repo, cs.commit))
    _expect(problems, "sbom", (pred.get("sbom") or {}).get("sha256"), sbom_digest)
    if cs.generation is not None:
        ref = gitops.resolve(repo_path, f"refs/converge/gen/{cs.generation}")
        if ref != cs.commit:
            problems.append(Problem("generation", f"refs/converge/gen/{cs.generation} is {ref}, not {cs.commit[:12]}"))
        _expect(
            problems, "sbom (generation)", _digest_of(sbom.generation_path(ws, cs.repo, cs.generation)), sbom_digest
        )
    return problems


def check(ws: Workspace, cs: Changeset) -> list[Problem]:
    """Everything about ``cs`` that does not verify (empty: it all does), recomputed from git and the store."""
    repo_path = ws.repo_path(cs.repo)
    try:
        env = read_envelope(attestation_path(ws, cs.repo, cs.id))
        statement = json.loads(signing.payload_of(env))
    except (SignatureError, ValueError) as exc:
        return [Problem("attestation", str(exc).removeprefix("attestation: "))]
    problems = _signature_problems(ws, cs, env, repo_path)
    if not isinstance(statement, dict):
        return [*problems, Problem("attestation", "payload is not a JSON object")]
    return problems + _payload_problems(ws, cs, statement, repo_path)


def verify(ws: Workspace, cs: Changeset) -> None:
    """Raise SignatureError naming every field of ``cs`` that does not verify."""
    problems = check(ws, cs)
    if problems:
        raise SignatureError(f"changeset {cs.id} does not verify: " + "; ".join(str(p) for p in problems))
