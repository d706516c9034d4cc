"""Submit: a person's patch through the same gate as a model's proposal — apply, verify, judge, sign, review.

The changeset id is derived from the patch's digest on the current generation, so submitting the
same patch again finds the same changeset instead of making a second one.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.errors import UsageError, VerificationFailed
from orchestrator.gate.apply import apply_patch, candidate, commit_signed, person
from orchestrator.gate.candidates import kept_commit
from orchestrator.gate.judge import judge
from orchestrator.gate.provenance import SUBMIT_RUN, AttemptKey, Provenance
from orchestrator.gate.review import review
from orchestrator.gate.sign import sign
from orchestrator.gate.verify import verify
from orchestrator.sandbox.base import SandboxBackend
from orchestrator.store import changesets, generations
from orchestrator.store.changesets import Changeset
from orchestrator.store.workspace import Workspace


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
    cs_id = _changeset_for(ws, repo, base.commit, changesets.sha256(patch))
    if changesets.exists(ws, cs_id):
        return review(ws, changesets.load(ws, cs_id), auto_approve)
    message = message.strip() or f"converge submit: {patch_path.name}"
    who = Provenance(author="human")
    key = AttemptKey(SUBMIT_RUN, cs_id, _next_attempt(ws.repo_path(repo), cs_id))
    with candidate(ws, repo, key, base.commit) as cand:
        apply_patch(cand, patch, f"--patch {patch_path}")
        commit = commit_signed(ws, cand, message, cs_id, author=person())
        cand.keep("candidates")
    found = verify(ws, repo, base.commit, commit, key, backend=backend)
    report = found.report
    if report.broken:
        cand.keep("failed")
        raise VerificationFailed(f"changeset {cs_id}: tests do not pass in the sandbox ({report.summary})")
    judgement = judge(ws, repo, base.commit, commit, report, who=who, baseline=found.baseline)
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
        sandbox_image=found.image,
    )
    return review(ws, cs, auto_approve)


def _changeset_for(ws: Workspace, repo: str, base: str, digest: str) -> str:
    """The changeset this patch is on ``base``: the one made before, unless that one's generation was
    rolled back since — then a new one, so the same patch can be promoted again."""
    again = 1
    while True:
        cs_id = changesets.changeset_id(repo, base, digest if again == 1 else f"{digest}/{again}")
        if not changesets.exists(ws, cs_id):
            return cs_id
        cs = changesets.load(ws, cs_id)
        if cs.status != "approved" or cs.generation is None or _live(ws, repo, cs.generation):
            return cs_id
        again += 1


def _live(ws: Workspace, repo: str, number: int) -> bool:
    return any(g.number == number and g.status in ("current", "superseded") for g in generations.lineage(ws, repo))


def _next_attempt(repo_path: Path, cs_id: str) -> int:
    """The first attempt number of ``cs_id`` with no candidate kept yet: a submission that failed keeps
    its candidate under ``refs/converge/failed/``, and trying the patch again must not collide with it."""
    attempt = 1
    while kept_commit(repo_path, SUBMIT_RUN, cs_id, attempt) is not None:
        attempt += 1
    return attempt
