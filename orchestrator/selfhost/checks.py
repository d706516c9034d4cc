"""The checks a `self` changeset needs, as the gate sees them: Converge's own suite in a sandbox (against
the base generation's own run of it, as for any repo), and the promotion hook that refuses a self
change without passing self-tests and canary on its commit.

Inside a sandbox there is no Docker socket (by design): tests marked ``docker`` run on the host
(CI, and ``converge self check``'s host stage). Running the canary is :mod:`selfhost.canary`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from orchestrator.config import SandboxConfig
from orchestrator.errors import VerificationFailed
from orchestrator.policy.baseline import TestComparison, compare
from orchestrator.sandbox import factory
from orchestrator.sandbox.base import Sandbox, SandboxBackend
from orchestrator.sandbox.reference import reference_report, remember
from orchestrator.selfhost.nested import SANDBOX_MARKER
from orchestrator.store import changesets
from orchestrator.store.changesets import Changeset
from orchestrator.store.reports import TestReport
from orchestrator.store.storage import read_json
from orchestrator.store.workspace import Workspace

SELF_TESTS = "self-tests.json"
CANARY = "canary.json"
TEST_MARKERS = "not docker"  # the one thing a sandbox cannot give: an engine socket
SELF_TEST_ARGS = ("-m", TEST_MARKERS)
SELF_TEST_TIMEOUT = 3600.0
REFERENCE_KIND = "self-tests"


# --- the checks of a `self` changeset --------------------------------------------------------


class CanaryOutcome(BaseModel):
    """What one canary refinement ended with: the parts that must match between the two sides."""

    status: str
    steps: list[str]
    tree: str
    generation: int
    reason: str = ""
    attempts: list[int] = []

    def key(self) -> tuple[str, tuple[str, ...], str, tuple[int, ...]]:
        return (self.status, tuple(self.steps), self.tree, tuple(self.attempts))


class SelfTests(BaseModel):
    """The self-test artifact: which commit, which selection, what happened."""

    commit: str
    markers: str
    ok: bool
    summary: str
    report: TestReport
    note: str = "tests marked docker cannot run inside the sandbox (no engine socket, by design); CI runs them"


class CanaryResult(BaseModel):
    """The canary artifact: both sides' outcomes and whether they agree."""

    commit: str
    reference: str
    ok: bool
    candidate: CanaryOutcome | None
    running: CanaryOutcome | None
    detail: str = ""


def sandbox_config(ws: Workspace) -> SandboxConfig:
    """The sandbox settings for Converge's own checks: the marker, the candidate on the path, room to work."""
    cfg = ws.config().sandbox
    env = {**cfg.env, SANDBOX_MARKER: "1", "PYTHONPATH": "/src"}
    return cfg.model_copy(
        update={
            "env": env,
            "memory": "4g",
            "cpus": max(cfg.cpus, 2.0),
            "pids": max(cfg.pids, 1024),
            "tmpfs_size": "2g",
            "timeout": max(cfg.timeout, SELF_TEST_TIMEOUT),
        }
    )


def run_self_tests(box: Sandbox) -> TestReport:
    """Converge's suite, minus what needs Docker, a model or a lot of time, in ``box`` (under the witness)."""
    return box.run_tests(timeout=SELF_TEST_TIMEOUT, options=SELF_TEST_ARGS)


@dataclass(frozen=True)
class SelfRun:
    """The self-tests of a `self` candidate: the report, the sandbox image, the comparison with the base's run."""

    report: TestReport
    image: str
    baseline: TestComparison | None


def verify_self(
    ws: Workspace,
    repo: str,
    base: str,
    commit: str,
    worktree: Path,
    label: str,
    backend: SandboxBackend | None = None,
) -> SelfRun:
    """The gate's verify for `self`: the self-test selection in a sandbox, against the base's run of it."""
    cfg = sandbox_config(ws)
    chosen = backend or factory.backend_for(cfg)
    try:
        with factory.open_sandbox(ws, repo, worktree, label=label, backend=chosen, config=cfg) as box:
            report = run_self_tests(box)
            remember(ws, repo, commit, box.spec, report, REFERENCE_KIND)  # the base of what comes next
            if report.broken:
                return SelfRun(report, box.spec.image.digest, None)
            at_base = reference_report(ws, repo, base, box.spec, chosen, run_self_tests, REFERENCE_KIND)
            return SelfRun(report, box.spec.image.digest, compare(base, at_base, report))
    finally:
        if backend is None:
            chosen.close()


def require_checks(ws: Workspace, cs: Changeset) -> None:
    """Refuse to promote a `self` changeset without passing self-tests and canary on its commit (fail closed)."""
    fix = f"run `converge self check {cs.id}`"
    for name, label in ((SELF_TESTS, "self-tests"), (CANARY, "canary")):
        path = changesets.artifact_path(ws, cs.id, name)
        if not path.is_file():
            raise VerificationFailed(f"changeset {cs.id} on self: no {label} result; {fix}")
        data = read_json(path)
        if data.get("commit") != cs.commit:
            raise VerificationFailed(f"changeset {cs.id} on self: the {label} result is for another commit; {fix}")
        if data.get("ok") is not True:
            what = data.get("summary") or data.get("detail") or "failed"
            raise VerificationFailed(f"changeset {cs.id} on self: {label} did not pass ({what})")
