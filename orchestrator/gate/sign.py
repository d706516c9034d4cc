"""Sign: a candidate becomes a changeset — its artifacts stored and a DSSE attestation signed by the workspace key.

Idempotent under the changeset id: signing the same commit again finds the stored changeset.
The commit is also kept under ``refs/converge/changesets/<id>`` so nothing it names is ever lost.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.errors import ConflictError
from orchestrator.gate.attestation import (
    AgentPart,
    BaseRef,
    Digest,
    PolicyPart,
    Predicate,
    RunPart,
    SandboxPart,
    SbomPart,
    Tests,
    Timestamps,
)
from orchestrator.gate.judge import Judgement
from orchestrator.gate.provenance import Provenance
from orchestrator.signing import keys
from orchestrator.store import changesets, gitops, sbom
from orchestrator.store.changesets import Changeset
from orchestrator.store.gitops import ZERO, RefUpdate
from orchestrator.store.reports import TestReport
from orchestrator.store.workspace import Workspace

CHANGESET_PREFIX = "refs/converge/changesets/"


def sign(
    ws: Workspace,
    repo: str,
    cs_id: str,
    *,
    base: str,
    base_generation: int,
    commit: str,
    report: TestReport,
    judgement: Judgement,
    who: Provenance,
    message: str = "",
    sandbox_image: str | None = None,
) -> Changeset:
    """Store the changeset's artifacts and its DSSE attestation, signed by the workspace key (idempotent)."""
    if changesets.exists(ws, cs_id):
        existing = changesets.load(ws, cs_id)
        if existing.commit == commit:
            return existing
    path = ws.repo_path(repo)
    signer = keys.workspace_signer(ws)
    created = changesets.now()
    artifacts = {
        changesets.DIFF: gitops.diff(path, base, commit).encode(),
        changesets.REPORT: report.model_dump_json(indent=2).encode(),
        changesets.VERDICT: judgement.model_dump_json(indent=2).encode(),
        changesets.SBOM: sbom.build(path, repo, commit),
    }
    diff_sha, report_sha, verdict_sha, sbom_sha = (changesets.sha256(data) for data in artifacts.values())
    header = gitops.commit_header(path, commit)
    if header is None or header[1] != base:
        raise ConflictError(f"{commit[:12]} is not a commit on the base {base[:12]} in {path}")
    tree = header[0]
    predicate = Predicate(
        changeset=cs_id,
        repo=repo,
        base=BaseRef(generation=base_generation, commit=base),
        diff=Digest(sha256=diff_sha),
        tests=Tests(sha256=report_sha, summary=report.summary, ok=report.ok),
        policy=PolicyPart(**judgement.summary, sha256=verdict_sha),
        sbom=SbomPart(sha256=sbom_sha),
        agent=AgentPart(name=who.author, card_sha256=who.agent_card_sha256),
        model=Digest(sha256=who.model_sha256),
        sandbox=SandboxPart(image=sandbox_image),
        run=RunPart(id=who.run, step=who.step, attempt=who.attempt),
        message=message,
        timestamps=Timestamps(created=created, signed=changesets.now()),
    )
    subjects = [
        {"name": f"{repo}@commit", "digest": {"gitCommit": commit}},
        {"name": f"{repo}@tree", "digest": {"gitTree": tree}},
    ]
    env = keys.envelope(keys.canonical(keys.statement(subjects, predicate.model_dump(mode="json"))), signer)
    proof = changesets.attestation_path(ws, repo, cs_id)
    changesets.write_artifacts(ws, cs_id, artifacts, (proof, env))
    keep_ref(path, f"{CHANGESET_PREFIX}{cs_id}", commit)
    cs = Changeset(
        id=cs_id,
        repo=repo,
        run=who.run,
        step=who.step,
        attempt=who.attempt,
        status="pending",
        commit=commit,
        tree=tree,
        base=base,
        base_generation=base_generation,
        risk=judgement.risk,
        verdict=judgement.decision,
        reasons=judgement.reasons,
        tests=report.summary,
        attestation=str(proof.relative_to(ws.root)),
        message=message,
        author=who.author,
        diff_sha256=diff_sha,
        report_sha256=report_sha,
        sbom_sha256=sbom_sha,
        created=created,
    )
    changesets.save(ws, cs)
    return cs


def keep_ref(repo_path: Path, ref: str, commit: str) -> None:
    """Keep ``commit`` under ``ref`` (created once; the same commit again is a no-op, another one a conflict)."""
    try:
        gitops.update_refs(repo_path, [RefUpdate(ref, commit, ZERO)], "converge: keep changeset")
    except ConflictError:
        existing = gitops.resolve(repo_path, ref)
        if existing != commit:
            raise ConflictError(f"{ref} already keeps {str(existing)[:12]}, not {commit[:12]}") from None
