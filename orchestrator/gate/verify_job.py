"""A candidate's verification as a job: plain values in, a typed result out, run here or on another node.

The loop hands :func:`verify_candidate` to an executor. On the local executor the job verifies in
the workspace itself; on a remote one (Ray) it carries the commit as a git bundle and the
workspace's settings as a seed, and the node verifies in its replica of the workspace
(:mod:`orchestrator.store.replica`). Either way the job writes nothing the driver keeps: the
driver records what comes back, so a job lost with its node leaves nothing half done.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from orchestrator.errors import UsageError
from orchestrator.gate.candidates import candidate_ref
from orchestrator.gate.provenance import AttemptKey
from orchestrator.gate.verify import verify
from orchestrator.policy.baseline import TestComparison
from orchestrator.sandbox.base import SandboxBackend
from orchestrator.store.replica import WorkspaceSeed, fetch_bundle, make_bundle, replica, seed_of
from orchestrator.store.reports import TestReport
from orchestrator.store.workspace import Workspace


class CandidateJob(BaseModel):
    """One candidate to verify: where its commit is (the workspace, or a bundle and a seed) and its key."""

    model_config = ConfigDict(frozen=True)

    workspace: str
    repo: str
    base: str
    commit: str
    run: str
    step: str
    attempt: int
    full: bool = True
    seed: WorkspaceSeed | None = None
    bundle: bytes | None = None

    @property
    def key(self) -> AttemptKey:
        return AttemptKey(self.run, self.step, self.attempt)


class Verified(BaseModel):
    """What verifying a candidate found: the report that counts, the sandbox image, a second run if asked for."""

    model_config = ConfigDict(frozen=True)

    report: TestReport
    image: str
    repeat: TestReport | None = None
    baseline: TestComparison | None = None  # what it lost against its base (see gate.verify)


def candidate_job(
    ws: Workspace, repo: str, base: str, commit: str, key: AttemptKey, *, full: bool, remote: bool
) -> CandidateJob:
    """The job verifying ``commit`` (kept under its candidate ref); ``remote``: it travels as a bundle."""
    job = CandidateJob(
        workspace=str(ws.root),
        repo=repo,
        base=base,
        commit=commit,
        run=key.run,
        step=str(key.step),
        attempt=key.attempt,
        full=full,
    )
    if not remote:
        return job
    if ws.repo(repo).is_self:
        raise UsageError(f'repo {repo}: Converge\'s own repo verifies on this machine; set [scale] engine = "local"')
    ref = candidate_ref("candidates", key.run, key.step, key.attempt)
    return job.model_copy(update={"seed": seed_of(ws, repo), "bundle": make_bundle(ws.repo_path(repo), ref)})


def verify_candidate(job: CandidateJob, backend: SandboxBackend | None = None) -> Verified:
    """Verify the job's candidate in a sandbox (``backend``, else the one its configuration names)."""
    if job.bundle is not None and job.seed is not None:
        ws = replica(job.seed)
        fetch_bundle(ws.repo_path(job.repo), job.bundle, job.key.label)
    else:
        ws = Workspace(Path(job.workspace))
    found = verify(ws, job.repo, job.base, job.commit, job.key, backend=backend, full=job.full)
    return Verified(report=found.report, image=found.image, repeat=found.repeat, baseline=found.baseline)
