"""The gate every change passes, as plain functions: candidate → apply → verify → judge → sign → review → promote.

The graph calls these stages one by one for a model's proposal; :func:`submit` composes them
for a person's patch, with no model involved. Each stage is idempotent under its key (the
changeset id is derived from repo, base and attempt), so a resumed run repeats none of the
side effects it already made.

Fail closed: :func:`promote` re-verifies the commit signature and the attestation (every
digest recomputed) and refuses anything that does not verify; no sandbox means no verify.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from orchestrator.agents.edits import AppliedEdits, EditProposal, apply_edits
from orchestrator.errors import ConflictError, EditError, PolicyViolation, UsageError, VerificationFailed
from orchestrator.gate import audit, candidates
from orchestrator.sandbox import factory
from orchestrator.signing import keys
from orchestrator.store import changesets, generations, gitops, keyfiles, sbom
from orchestrator.store.changesets import Changeset
from orchestrator.store.gitops import ZERO, RefUpdate
from orchestrator.store.reports import TestReport
from orchestrator.store.workspace import Workspace

if TYPE_CHECKING:
    from orchestrator.sandbox.base import SandboxBackend

Decision = Literal["approve", "review", "reject"]
SUBMIT_RUN = "submit"
FAILED_PREFIX = "refs/converge/failed/cs-"
CHANGESET_PREFIX = "refs/converge/changesets/"


@dataclass(frozen=True)
class Provenance:
    """Who proposed the change and with what: a person, or an agent card and its model."""

    author: str = "human"
    agent_card_sha256: str | None = None
    model_sha256: str | None = None
    run: str | None = None
    step: int | None = None
    attempt: int | None = None


@dataclass(frozen=True)
class Judgement:
    """The policy's verdict on a candidate."""

    decision: Decision
    risk: str = "low"
    reasons: list[str] = field(default_factory=list)
    detail: dict[str, object] = field(default_factory=dict)


# --- stages ---------------------------------------------------------------------------------


def make_candidate(ws: Workspace, repo: str, run: str, step: int | str, attempt: int) -> candidates.Candidate:
    """A candidate worktree of ``repo``'s current generation under ``cache/worktrees/`` (enter it to create)."""
    base = generations.current(ws, repo).commit
    worktrees = ws.cache / "worktrees" / repo
    return candidates.Candidate(ws.repo_path(repo), worktrees, run=run, step=step, attempt=attempt, base=base)


def apply_patch(cand: candidates.Candidate, patch: bytes, source: str = "patch") -> list[str]:
    """Apply a unified diff in the candidate worktree; returns the paths it touches."""
    text = patch.decode("utf-8", "replace")
    if not text.strip():
        raise EditError(f"{source}: the patch is empty")
    numstat = _git_apply(cand.path, patch, source, "--numstat")
    paths = [line.split("\t", 2)[-1] for line in numstat.splitlines() if line.strip()]
    for path in paths:
        if path == ".git" or path.startswith(".git/") or "/.git/" in path:
            raise EditError(f"{source}: the patch touches {path!r}; changes inside .git/ are not allowed")
    _git_apply(cand.path, patch, source, "--check")
    _git_apply(cand.path, patch, source)
    return paths


def _git_apply(cwd: Path, patch: bytes, source: str, *flags: str) -> str:
    import subprocess

    proc = subprocess.run(
        ["git", "apply", "--whitespace=nowarn", *flags, "-"], cwd=cwd, input=patch, capture_output=True, check=False
    )
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise EditError(
            f"{source}: does not apply to the current generation: {detail[0] if detail else 'git apply failed'}"
        )
    return proc.stdout.decode(errors="replace")


def commit_signed(
    ws: Workspace,
    cand: candidates.Candidate,
    message: str,
    cs_id: str | None = None,
    paths: Sequence[str] | None = None,
) -> str:
    """Commit the worktree (only ``paths``, when given), SSH-signed by the workspace key; the repo
    learns the allowed signers."""
    sign, body = _signed_message(ws, cand.repo, message, cs_id)
    return cand.commit(body, sign=sign, paths=paths)


def commit_proposal(
    ws: Workspace, cand: candidates.Candidate, proposal: EditProposal, message: str, cs_id: str | None = None
) -> tuple[str, AppliedEdits]:
    """Apply ``proposal`` on the candidate's base and commit it, signed as :func:`commit_signed` signs:
    the commit and what was applied.

    In the repository's objects when it allows (no file of the repo is written), else in the
    candidate worktree, removed afterwards (the caller keeps the commit under a ref).
    EditError, for the model, when the edits do not apply.
    """
    sign, body = _signed_message(ws, cand.repo, message, cs_id)
    done = cand.commit_edits(proposal, body, sign=sign)
    if done is not None:
        return done
    try:
        cand.create()
        applied = apply_edits(cand.path, proposal)
        commit = cand.commit(body, sign=sign, paths=applied.paths)
    finally:
        cand.remove()
    return commit, applied


def _signed_message(ws: Workspace, repo: Path, message: str, cs_id: str | None) -> tuple[candidates.Signature, str]:
    """The workspace key's commit signature and the commit message naming the changeset; ``repo``
    learns the allowed signers, so that a plain ``git verify-commit`` there needs nothing else."""
    signer = keys.workspace_signer(ws)
    allowed = keyfiles.allowed_signers_path(ws)
    config_file = repo / ".git" / "config"
    if not config_file.is_file() or str(allowed) not in config_file.read_text(encoding="utf-8", errors="replace"):
        gitops.run(repo, "config", "gpg.ssh.allowedSignersFile", str(allowed))
    body = message.strip() or "converge: change"
    if cs_id:
        body += f"\n\nConverge-Changeset: {cs_id}\n"
    return (lambda text: keys.commit_signature(signer, text)), body


def verify(
    ws: Workspace, repo: str, cand: candidates.Candidate, backend: SandboxBackend | None = None
) -> tuple[TestReport, str]:
    """Run the candidate's tests in a sandbox; returns the report and the sandbox image digest."""

    chosen = backend or factory.backend_for(ws.config().sandbox)
    label = f"{cand.run}-{cand.step}-{cand.attempt}"
    try:
        if ws.repo(repo).is_self:  # Converge's own suite: its sandbox-safe selection (see selfhost)
            from orchestrator.selfhost import checks

            return checks.verify_self(ws, repo, cand.path, label, chosen)
        with factory.open_sandbox(ws, repo, cand.path, label=label, backend=chosen) as box:
            report = box.run_tests()
            image = box.spec.image.digest
    finally:
        if backend is None:
            _close(chosen)
    return report, image


def _close(backend: object) -> None:
    """Release the engine connection of a backend this module made (its socket would leak otherwise)."""
    close = getattr(backend, "close", None)
    client = getattr(backend, "_client", None)  # DockerBackend has no close() of its own yet
    if callable(close):
        close()
    elif client is not None:
        client.close()


def judge(ws: Workspace, repo: str, base: str, commit: str, report: TestReport, *, who: Provenance) -> Judgement:
    """The policy's verdict on ``base..commit`` with its test report."""
    from orchestrator.policy import engine, model
    from orchestrator.policy.change import Author, change_from_commits
    from orchestrator.policy.verdict import Decision as PolicyDecision

    record = ws.repo(repo)
    author = Author(agent=None if who.author == "human" else who.author, model=who.model_sha256)
    change = change_from_commits(ws.repo_path(repo), base, commit, repo, record.is_self, report, author)
    verdict = engine.evaluate(change, model.load_policies(ws, repo))
    decision: Decision = verdict.verdict.value
    reasons = [f"{r.rule}: {r.message}" for r in verdict.reasons if r.decision != PolicyDecision.APPROVE]
    return Judgement(decision, verdict.risk.value, reasons, verdict.to_json())


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
    verdict = {"decision": judgement.decision, "risk": judgement.risk, "reasons": judgement.reasons}
    artifacts = {
        changesets.DIFF: gitops.diff(path, base, commit).encode(),
        changesets.REPORT: report.model_dump_json(indent=2).encode(),
        changesets.VERDICT: json.dumps({**verdict, "detail": judgement.detail}, indent=2, sort_keys=True).encode(),
        changesets.SBOM: sbom.build(path, repo, commit),
    }
    diff_sha, report_sha, verdict_sha, sbom_sha = (changesets.sha256(data) for data in artifacts.values())
    header = gitops.commit_header(path, commit)
    if header is None or header[1] != base:
        raise ConflictError(f"{commit[:12]} is not a commit on the base {base[:12]} in {path}")
    tree = header[0]
    predicate = {
        "changeset": cs_id,
        "repo": repo,
        "base": {"generation": base_generation, "commit": base},
        "diff": {"sha256": diff_sha},
        "tests": {"sha256": report_sha, "summary": report.summary, "ok": report.ok},
        "policy": {**verdict, "sha256": verdict_sha},
        "sbom": {"sha256": sbom_sha, "format": "CycloneDX 1.6 JSON"},
        "agent": {"name": who.author, "card_sha256": who.agent_card_sha256},
        "model": {"sha256": who.model_sha256},
        "sandbox": {"image": sandbox_image},
        "run": {"id": who.run, "step": who.step, "attempt": who.attempt},
        "message": message,
        "timestamps": {"created": created, "signed": changesets.now()},
    }
    subjects = [
        {"name": f"{repo}@commit", "digest": {"gitCommit": commit}},
        {"name": f"{repo}@tree", "digest": {"gitTree": tree}},
    ]
    env = keys.envelope(keys.canonical(keys.statement(subjects, predicate)), signer)
    proof = changesets.attestation_path(ws, repo, cs_id)
    changesets.write_artifacts(ws, cs_id, artifacts, (proof, env))
    _keep_ref(path, f"{CHANGESET_PREFIX}{cs_id}", commit)
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


def _keep_ref(repo_path: Path, ref: str, commit: str) -> None:
    try:
        gitops.update_refs(repo_path, [RefUpdate(ref, commit, ZERO)], "converge: keep changeset")
    except ConflictError:
        existing = gitops.resolve(repo_path, ref)
        if existing != commit:
            raise ConflictError(f"{ref} already keeps {str(existing)[:12]}, not {commit[:12]}") from None


def review(ws: Workspace, cs: Changeset, auto_approve: bool = False) -> Changeset:
    """Act on the verdict: reject, promote when approved and auto-approval is on, else leave pending."""
    if cs.status != "pending":
        return cs
    if cs.verdict == "reject":
        return reject(ws, cs.id, "policy: " + ("; ".join(cs.reasons) or "rejected"), by="policy")
    if cs.verdict == "approve" and auto_approve and not _is_self(ws, cs):
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
        _self_gate(ws, cs, signer.principal)
        proof = changesets.attestation_path(ws, cs.repo, cs.id)
        changesets.write_envelope(proof, keys.add_signature(changesets.read_envelope(proof), signer))
        return promote(ws, cs.id, decided_by=signer.principal)


def _is_self(ws: Workspace, cs: Changeset) -> bool:
    return ws.repo(cs.repo).is_self


def _self_gate(ws: Workspace, cs: Changeset, decided_by: str) -> None:
    """A `self` changeset: a person decides (never auto-approval), after passing self-tests and canary."""
    if not _is_self(ws, cs):
        return
    if decided_by == changesets.AUTO:
        raise PolicyViolation(
            f"changeset {cs.id} changes Converge itself: a person approves it (`converge changeset approve`)"
        )
    from orchestrator.selfhost import checks

    checks.require_checks(ws, cs)


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
        _keep_ref(ws.repo_path(cs.repo), f"{FAILED_PREFIX}{cs.id}", cs.commit)
        done = cs.model_copy(
            update={"status": "rejected", "reason": reason, "decided_by": who, "decided": changesets.now()}
        )
        changesets.save(ws, done)
        return done


# --- a person's patch through the whole gate ---------------------------------------------------


def submit(
    ws: Workspace,
    repo: str,
    patch_path: Path,
    message: str = "",
    *,
    auto_approve: bool = False,
    backend: SandboxBackend | None = None,
) -> Changeset:
    """Run a patch file through apply, verify, judge, sign and review; returns the changeset (same patch: same one)."""
    try:
        patch = patch_path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--patch {patch_path}: cannot read: {exc.strerror}") from exc
    base = generations.current(ws, repo)
    cs_id = changesets.changeset_id(repo, base.commit, changesets.sha256(patch))
    if changesets.exists(ws, cs_id):
        return review(ws, changesets.load(ws, cs_id), auto_approve)
    message = message.strip() or f"converge submit: {patch_path.name}"
    who = Provenance(author="human")
    with make_candidate(ws, repo, SUBMIT_RUN, cs_id, 1) as cand:
        apply_patch(cand, patch, f"--patch {patch_path}")
        commit = commit_signed(ws, cand, message, cs_id)
        report, image = verify(ws, repo, cand, backend)
        if report.broken:
            cand.keep("failed")
            raise VerificationFailed(f"changeset {cs_id}: tests do not pass in the sandbox ({report.summary})")
        judgement = judge(ws, repo, base.commit, commit, report, who=who)
        cand.keep("candidates")
    cs = sign(
        ws,
        repo,
        cs_id,
        base=base.commit,
        base_generation=base.number,
        commit=commit,
        report=report,
        judgement=judgement,
        who=who,
        message=message,
        sandbox_image=image,
    )
    return review(ws, cs, auto_approve)


# --- export -----------------------------------------------------------------------------------


def _checked_out_branches(remote: str, repo_path: Path) -> set[str]:
    """Branches checked out in the origin: its worktrees' for a local repo, its HEAD for a URL."""
    local = Path(remote).expanduser()
    if local.is_dir():
        out = gitops.run(local, "worktree", "list", "--porcelain", check=False)
        return {ln.removeprefix("branch refs/heads/") for ln in out.splitlines() if ln.startswith("branch refs/heads/")}
    out = gitops.run(repo_path, "ls-remote", "--symref", "origin", "HEAD", check=False)
    return {ln.split()[1].removeprefix("refs/heads/") for ln in out.splitlines() if ln.startswith("ref: ")}


def export(ws: Workspace, repo: str, branch: str | None = None) -> dict[str, object]:
    """Push the current generation of ``repo`` to its origin as ``branch`` (never a checked-out branch)."""
    path = ws.repo_path(repo)
    gen = generations.current(ws, repo)
    branch = branch or f"converge/gen-{gen.number}"
    if gitops.run(path, "check-ref-format", "--branch", branch, check=False).strip() != branch:
        raise UsageError(f"--branch {branch!r}: not a valid branch name")
    remote = gitops.run(path, "remote", "get-url", "origin", check=False).strip()
    if not remote:
        raise UsageError(f"repo {repo!r} has no origin remote to export to")
    if branch in _checked_out_branches(remote, path):
        raise UsageError(f"--branch {branch}: checked out in the origin {remote}; choose another branch name")
    import subprocess

    proc = subprocess.run(
        ["git", "push", "--porcelain", "origin", f"{gen.commit}:refs/heads/{branch}"],
        cwd=path,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        reason = detail[-1] if detail else f"exit {proc.returncode}"
        raise ConflictError(f"export of {repo} to {remote} as {branch} refused: {reason}")
    return {"repo": repo, "remote": remote, "branch": branch, "commit": gen.commit, "generation": gen.number}
