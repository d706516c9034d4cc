"""Review and promote: what happens to a signed changeset — rejected, left for a person, or promoted.

A person's approval adds their signature to the attestation before promotion. Promotion fails
closed: the commit signature and every digest of the attestation are checked again first. A
``self`` changeset is never auto-approved and needs its self-tests and canary to have passed.
"""

from __future__ import annotations

from orchestrator.errors import PolicyViolation, UsageError, VerificationFailed
from orchestrator.gate import audit
from orchestrator.gate.sign import keep_ref
from orchestrator.selfhost.checks import require_checks
from orchestrator.selfhost.host import require_host_stage, run_host_stage
from orchestrator.signing import keys
from orchestrator.store import changesets, generations, sbom
from orchestrator.store.changesets import Changeset
from orchestrator.store.verdicts import Decision
from orchestrator.store.workspace import Workspace

FAILED_PREFIX = "refs/converge/failed/cs-"


def review(ws: Workspace, cs: Changeset, auto_approve: bool = False) -> Changeset:
    """Act on the verdict: reject, promote when approved and auto-approval is on, else leave pending."""
    if cs.status != "pending":
        return cs
    if cs.verdict == Decision.REJECT:
        return reject(ws, cs.id, "policy: " + ("; ".join(cs.reasons) or "rejected"), by="policy")
    if cs.verdict == Decision.APPROVE and auto_approve and not ws.repo(cs.repo).is_self:
        return promote(ws, cs.id, decided_by=changesets.AUTO)
    return cs


def promote(ws: Workspace, cs_id: str, decided_by: str) -> Changeset:
    """Verify ``cs_id`` as approved by ``decided_by`` and make its commit the next generation (fail closed)."""
    cs = changesets.load(ws, cs_id)
    if cs.status == "approved" and cs.generation is not None:
        return cs
    if cs.status == "rejected":
        raise UsageError(f"changeset {cs.id} was rejected ({cs.reason}); it cannot be promoted")
    _self_gate(ws, cs, decided_by)
    approved = cs.model_copy(update={"status": "approved", "decided_by": decided_by})
    audit.verify(ws, approved)
    gen = generations.promote(ws, cs.repo, cs.commit, cs.base, changesets=[cs.id])
    sbom.write_generation(ws, cs.repo, gen.number, changesets.artifact_path(ws, cs.id, changesets.SBOM).read_bytes())
    done = approved.model_copy(update={"generation": gen.number, "decided": changesets.now()})
    changesets.save(ws, done)
    return done


def approve(ws: Workspace, cs_id: str) -> Changeset:
    """A person's approval: their key signs the attestation, then the changeset is promoted."""
    cs = changesets.load(ws, cs_id)
    with changesets.lock_for(ws, cs.id):
        cs = changesets.load(ws, cs.id)
        if cs.status == "rejected":
            raise UsageError(f"changeset {cs.id} was rejected ({cs.reason}); it cannot be approved")
        if cs.status == "approved" and cs.generation is not None:
            return cs
        audit.verify(ws, cs)  # never countersign what does not verify as it stands
        signer = keys.user_signer(ws)
        _self_gate(ws, cs, signer.principal, host_stage=False)
        proof = changesets.attestation_path(ws, cs.repo, cs.id)
        if cs.status == "pending":  # a self changeset approved before (its host stage failed) is signed already
            changesets.write_envelope(proof, keys.add_signature(changesets.read_envelope(proof), signer))
        if ws.repo(cs.repo).is_self:
            _host_stage(ws, cs, signer.principal)
        return promote(ws, cs.id, decided_by=signer.principal)


def reject(ws: Workspace, cs_id: str, reason: str, by: str | None = None) -> Changeset:
    """Record a rejection and keep the candidate commit under ``refs/converge/failed/cs-<id>``."""
    if not reason.strip():
        raise UsageError("reject: give a --reason")
    cs = changesets.load(ws, cs_id)
    with changesets.lock_for(ws, cs.id):
        cs = changesets.load(ws, cs.id)
        if cs.status == "approved":
            raise UsageError(
                f"changeset {cs.id} is already approved (generation {cs.generation}); use `converge rollback`"
            )
        if cs.status == "rejected":
            return cs
        who = by or keys.user_signer(ws).principal
        keep_ref(ws.repo_path(cs.repo), f"{FAILED_PREFIX}{cs.id}", cs.commit)
        done = cs.model_copy(
            update={"status": "rejected", "reason": reason, "decided_by": who, "decided": changesets.now()}
        )
        changesets.save(ws, done)
        return done


def _self_gate(ws: Workspace, cs: Changeset, decided_by: str, *, host_stage: bool = True) -> None:
    """A `self` changeset: a person decides (never auto-approval), after passing self-tests and canary,
    and is promoted only once its host stage passed."""
    if not ws.repo(cs.repo).is_self:
        return
    if decided_by == changesets.AUTO:
        raise PolicyViolation(
            f"changeset {cs.id} changes Converge itself: a person approves it (`converge changeset approve`)"
        )
    require_checks(ws, cs)
    if host_stage:
        require_host_stage(ws, cs)


def _host_stage(ws: Workspace, cs: Changeset, decided_by: str) -> None:
    """Run the approved self changeset's Docker tests on the host; when they fail it stays approved, unpromoted."""
    result = run_host_stage(ws, cs)
    if result.ok:
        return
    failing = ", ".join((result.report.failed + result.report.errored)[:5]) or result.summary
    reason = f"host stage failed: {failing}"
    held = cs.model_copy(update={"status": "approved", "decided_by": decided_by, "reason": reason})
    changesets.save(ws, held)
    raise VerificationFailed(f"changeset {cs.id} on self is approved but not promoted: {reason}")
