"""Verify: a candidate commit's tests in a sandbox — one path for the loop and for ``converge submit``.

The tests that import what the change touches run first; when they pass (and ``full``), the whole
suite. Converge's own repo (``self``) runs its sandbox-safe suite instead (selfhost.checks). With
``[run] reproducibility_check`` the suite runs twice and the second report is kept beside the first.
Meanwhile the base's own tests run on the candidate's environment (once per base and environment:
``sandbox.reference`` keeps the report), and the two reports are compared (``policy.baseline``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from orchestrator.agents.repomap import repo_map_at
from orchestrator.gate.apply import candidate
from orchestrator.gate.provenance import AttemptKey
from orchestrator.policy.baseline import TestComparison, compare
from orchestrator.policy.change import change_from_commits
from orchestrator.sandbox.base import Sandbox, SandboxBackend
from orchestrator.sandbox.pool import SandboxPool, pool_for
from orchestrator.sandbox.reference import reference_report, remember
from orchestrator.selfhost.checks import verify_self
from orchestrator.store import gitops, sbom
from orchestrator.store.reports import TestReport
from orchestrator.store.workspace import Workspace

Events = Callable[[str], None]


@dataclass(frozen=True)
class Verification:
    """What verify found: the report that counts, the sandbox image, a second run when one was asked for,
    and what the candidate lost against its base (None where it was not compared: tests that failed)."""

    report: TestReport
    image: str
    repeat: TestReport | None = None
    baseline: TestComparison | None = None

    @property
    def reproducible(self) -> bool | None:
        """Whether a second full run gave the same outcomes (None: not checked)."""
        if self.repeat is None:
            return None
        first, second = self.report, self.repeat
        return (first.ran, first.ok) == (second.ran, second.ok) and all(
            sorted(getattr(first, k)) == sorted(getattr(second, k)) for k in ("passed", "failed", "errored", "skipped")
        )


def verify(
    ws: Workspace,
    repo: str,
    base: str,
    commit: str,
    key: AttemptKey,
    *,
    pool: SandboxPool | None = None,
    backend: SandboxBackend | None = None,
    full: bool = True,
    warm_next: bool = False,
    on_event: Events | None = None,
) -> Verification:
    """The tests of ``commit`` (a candidate on ``base``) in a sandbox: ``pool``'s, or one of its own.

    ``warm_next``: another step follows, so ``pool`` starts its next sandbox while these tests run.
    """
    say = on_event or (lambda _text: None)
    if ws.repo(repo).is_self:
        with candidate(ws, repo, key, commit, "v") as verify_cand:
            found = verify_self(ws, repo, base, commit, verify_cand.path, key.label, backend)
            return Verification(found.report, found.image, baseline=found.baseline)
    # the pool outlives the helpers: the base's run (a helper) starts its sandbox through the pool's backend
    with pool_for(ws, repo, pool, backend) as boxes, ThreadPoolExecutor(2, thread_name_prefix="verify") as helpers:
        # git reads only, done while the sandbox is taken and its tree moved to the candidate
        selection = helpers.submit(select_tests, ws, repo, base, commit)
        with boxes.at(commit) as (_tree, box):
            if boxes is pool and warm_next:
                pool.warm(commit)  # the next step starts from it if this one is promoted
            # the base's tests on this very environment (run once per base and environment) meanwhile
            at_base = helpers.submit(reference_report, ws, repo, base, box.spec, boxes.backend, _all_tests)
            return _tests_in(ws, repo, base, commit, box, selection.result(), full, say, at_base)


def select_tests(ws: Workspace, repo: str, base: str, commit: str) -> list[str]:
    """The test files that import what ``base..commit`` changes, by the candidate's own map."""
    changed = gitops.changed_paths(ws.repo_path(repo), base, commit)
    return repo_map_at(ws, repo, commit).tests_for(changed)


def _all_tests(box: Sandbox) -> TestReport:
    return box.run_tests()


def _tests_in(
    ws: Workspace,
    repo: str,
    base: str,
    commit: str,
    box: Sandbox,
    selected: list[str],
    full: bool,
    say: Events,
    at_base: Future[TestReport],
) -> Verification:
    image = box.spec.image.digest
    if selected:
        first = box.run_tests(selected)
        say(f"  selected tests ({len(selected)} file(s)): {first.summary}")
        if first.broken:
            return Verification(first, image)  # back to the coder: nothing to judge yet
        if not full:
            return Verification(first, image, baseline=_against(base, at_base, first, selected, say))
    with _reading_ahead(ws.repo_path(repo), repo, base, commit):
        report = box.run_tests()
    remember(ws, repo, commit, box.spec, report)  # the next step's base, if this one is promoted
    repeat = box.run_tests() if ws.config().run.reproducibility_check else None
    if report.broken:
        return Verification(report, image, repeat)
    return Verification(report, image, repeat, _against(base, at_base, report, None, say))


def _against(
    base: str, at_base: Future[TestReport], report: TestReport, scope: Sequence[str] | None, say: Events
) -> TestComparison:
    """The candidate's ``report`` against the base's (waiting for the base's run if it still goes on)."""
    found = compare(base, at_base.result(), report, scope)
    if found.weakened:
        say(f"  against the base: {len(found.lost)} test(s) that passed there do not pass now")
    return found


@contextmanager
def _reading_ahead(repo_path: Path, repo: str, base: str, commit: str) -> Iterator[None]:
    """While the full suite runs: the git reads that judging, signing and promoting make, in a thread.

    They read objects only, so their answers are remembered (:func:`gitops.read_objects`); a read
    that fails here is not remembered, and the stage that needs it meets the failure and reports it.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as ahead:
        ahead.submit(_read_ahead, repo_path, repo, base, commit)
        yield


def _read_ahead(repo_path: Path, repo: str, base: str, commit: str) -> None:
    change_from_commits(repo_path, base, commit, repo)
    gitops.diff(repo_path, base, commit)
    sbom.build(repo_path, repo, commit)
