"""Verifying a changeset: its commit signature, its attestation's signatures, and every digest recomputed.

Used by ``converge changeset verify``, before a person countersigns, and before promotion
(fail closed: what does not verify is never promoted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import SignatureError
from orchestrator.signing import keys
from orchestrator.store import changesets, gitops, keyfiles, sbom
from orchestrator.store.changesets import Changeset
from orchestrator.store.workspace import Workspace


@dataclass(frozen=True)
class Problem:
    """One thing that does not verify: the field, and what is wrong with it."""

    field: str
    detail: str

    def __str__(self) -> str:
        return f"{self.field}: {self.detail}"


def _digest_of(path: Path) -> str | None:
    return changesets.sha256(path.read_bytes()) if path.exists() else None


def _signature_problems(ws: Workspace, cs: Changeset, env: dict[str, Any], repo_path: Path) -> list[Problem]:
    allowed = keyfiles.allowed_signers_path(ws)
    problems = []
    try:
        keys.verify_commit(repo_path, cs.commit, allowed)
    except SignatureError as exc:
        problems.append(Problem("commit signature", str(exc)))
    try:
        keys.verify_envelope(env, allowed, keyfiles.WORKSPACE_PRINCIPAL)
    except SignatureError as exc:
        problems.append(Problem("attestation signature", str(exc).removeprefix("attestation signature: ")))
    if cs.status == "approved" and cs.decided_by not in (None, changesets.AUTO):
        if cs.decided_by == keyfiles.WORKSPACE_PRINCIPAL:
            problems.append(Problem("approval signature", "approved by the workspace key, not a person"))
        else:
            try:
                keys.verify_envelope(env, allowed, cs.decided_by)
            except SignatureError as exc:
                problems.append(Problem("approval signature", str(exc).removeprefix("attestation signature: ")))
    return problems


def _expect(problems: list[Problem], field: str, found: object, expected: object) -> None:
    if found != expected:
        problems.append(Problem(field, f"attestation says {found!r}, but it is {expected!r}"))


def _payload_problems(ws: Workspace, cs: Changeset, statement: dict[str, Any], repo_path: Path) -> list[Problem]:

    problems: list[Problem] = []
    pred = statement.get("predicate") or {}
    if statement.get("_type") != keys.STATEMENT_TYPE or statement.get("predicateType") != keys.PREDICATE_TYPE:
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
    diff_digest = changesets.sha256(gitops.diff(repo_path, cs.base, cs.commit).encode())
    _expect(problems, "diff", (pred.get("diff") or {}).get("sha256"), diff_digest)
    _expect(problems, "diff (stored)", _digest_of(changesets.artifact_path(ws, cs.id, changesets.DIFF)), diff_digest)
    tests = pred.get("tests") or {}
    _expect(
        problems, "test_report", tests.get("sha256"), _digest_of(changesets.artifact_path(ws, cs.id, changesets.REPORT))
    )
    policy = pred.get("policy") or {}
    _expect(
        problems, "verdict", policy.get("sha256"), _digest_of(changesets.artifact_path(ws, cs.id, changesets.VERDICT))
    )
    _expect(problems, "verdict", policy.get("decision"), cs.verdict)
    sbom_digest = changesets.sha256(sbom.build(repo_path, cs.repo, cs.commit))
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
        env = changesets.read_envelope(changesets.attestation_path(ws, cs.repo, cs.id))
        statement = json.loads(keys.payload_of(env))
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
