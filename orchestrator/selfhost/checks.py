"""Converge refining itself: the checks a `self` changeset needs (installations: ``self_install``).

    check(ws, cs_id)            one outer sandbox over the candidate's commit:
      ├── self-tests            Converge's suite minus the Docker tests -> artifact self-tests.json
      └── canary                the candidate's Converge and the running one each refine a copy of the
                                sample repo with the same scripted model -> artifact canary.json
    require_checks(ws, cs)      the promotion gate's hook: no passing self-tests + canary, no promotion

Inside a sandbox there is no Docker socket (by design), so the canary's own verify step uses
:class:`NestedBackend`, which runs commands directly. It refuses to start unless the outer
sandbox's marker variable is set: it is only ever acceptable *inside* that sandbox. Both sides of
the canary run in the same outer sandbox with the same nested backend, so the only thing that
differs between them is Converge's code. What cannot run inside (tests marked ``docker``: they
need the engine's socket, which would make the sandbox root on the host) runs in CI on the host.
Model tests run inside: the embedded GGUF and llama.cpp come with the copied environment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator.errors import SandboxError, UsageError, VerificationFailed
from orchestrator.sandbox import factory
from orchestrator.sandbox.env import ensure_env
from orchestrator.store import changesets, generations, gitops
from orchestrator.store.changesets import Changeset
from orchestrator.store.reports import CommandResult, TestReport
from orchestrator.store.storage import atomic_write, read_json
from orchestrator.store.workspace import Workspace, source_root

SANDBOX_MARKER = "CONVERGE_IN_SANDBOX"
SELF_TESTS = "self-tests.json"
CANARY = "canary.json"
TEST_MARKERS = "not docker"  # the one thing a sandbox cannot give: an engine socket
SELF_TEST_ARGS = ("-m", TEST_MARKERS)
SELF_JUNIT = "/tmp/converge-self-junit.xml"
SCRATCH = ".converge-canary"  # in the outer sandbox's worktree: canary inputs and the reference copy
REFERENCE_PARTS = ("orchestrator", "agents", "policies", "workspace_template")
CANARY_GOAL = "Remove the unused imports from inventory/stock.py"
CANARY_TIMEOUT = 900.0
SELF_TEST_TIMEOUT = 3600.0


# --- the nested backend (only inside an outer sandbox) ----------------------------------------


def in_sandbox(environ: dict[str, str] | None = None) -> bool:
    """Whether this process runs inside an outer sandbox (its recipe/config sets the marker)."""
    env = os.environ if environ is None else environ
    return env.get(SANDBOX_MARKER) == "1"


@dataclass
class NestedBackend:
    """Runs sandbox commands as plain child processes: acceptable only inside an outer sandbox.

    The outer sandbox gives the isolation (no network, read-only root, limits); this backend only
    maps the sandbox's paths (``/env`` -> the spec's env dir) and enforces timeouts.
    """

    name: str = "nested"
    started: list[Any] = field(default_factory=list)

    def start(self, spec: Any, fill: Callable[[], None] | None = None) -> NestedSession:
        if not in_sandbox():
            raise SandboxError(
                f"the nested sandbox backend runs commands directly and is refused outside a sandbox "
                f"(${SANDBOX_MARKER} is not 1); use the docker backend"
            )
        if fill is not None:
            fill()
        self.started.append(spec)
        return NestedSession(spec)

    def prepare_env(
        self, ws: Workspace, repo: str, spec: Any, *, allow_network: bool, requirements: list[str] | None
    ) -> Path:
        """The host-built environment Docker's sandboxes mount; its interpreter runs the commands."""
        return ensure_env(ws, repo, spec, self, allow_network=allow_network, requirements=requirements)

    def reap(self, workspace: Path | None, include_live: bool = False) -> list[str]:
        return []

    def close(self) -> None:
        return None


class NestedSession:
    """One nested "sandbox": commands run in the worktree with the spec's environment."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        from orchestrator.sandbox.base import JUNIT_PATH

        self.env_dir: Path | None = spec.env_dir
        Path(JUNIT_PATH).unlink(missing_ok=True)  # a stale report must never be read

    def _map(self, text: str) -> str:
        if self.env_dir is not None and (text == "/env" or text.startswith("/env/")):
            return str(self.env_dir) + text[4:]
        return text

    def exec(self, argv: Sequence[str], timeout: float, output_limit: int) -> CommandResult:
        env = dict(self.spec.environment)
        env["PATH"] = ":".join(self._map(p) for p in env.get("PATH", "/usr/bin:/bin").split(":"))
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                [self._map(a) for a in argv],
                cwd=self.spec.worktree,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            return CommandResult(argv=list(argv), exit_code=127, duration=0.0, stderr_tail=str(exc))
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        tail_out, tail_err = out[-output_limit:], err[-output_limit:]
        return CommandResult(
            argv=list(argv),
            exit_code=124 if timed_out else proc.returncode,
            duration=time.monotonic() - started,
            timed_out=timed_out,
            stdout_tail=tail_out.decode("utf-8", "replace"),
            stderr_tail=tail_err.decode("utf-8", "replace"),
            truncated=len(out) > output_limit or len(err) > output_limit,
        )

    def close(self) -> None:
        return None


# --- the canary -----------------------------------------------------------------------------


class CanaryOutcome(BaseModel):
    """What one canary refinement ended with: the parts that must match between the two sides."""

    status: str
    steps: list[str]
    tree: str
    generation: int
    reason: str = ""

    def key(self) -> tuple[str, tuple[str, ...], str]:
        return (self.status, tuple(self.steps), self.tree)


def canary_script() -> list[dict[str, Any]]:
    """The scripted model's answers: a one-step plan, then one edit (unkeyed replay entries, in order)."""
    plan = {
        "goal": CANARY_GOAL,
        "steps": [
            {
                "title": "Drop the unused os and sys imports",
                "agent": "coder",
                "targets": ["inventory/stock.py"],
                "acceptance": ["tests pass"],
            }
        ],
    }
    edits = {
        "summary": "remove unused imports",
        "edits": [
            {
                "path": "inventory/stock.py",
                "search": "import os\nimport sys\nfrom dataclasses",
                "replace": "from dataclasses",
            }
        ],
    }
    return [{"text": json.dumps(plan)}, {"text": json.dumps(edits)}]


def prepare_canary(dest: Path, reference: Path | None = None) -> None:
    """Write the canary's fixed inputs under ``dest``: the sample repo, the script, the reference Converge."""
    root = reference or source_root()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", ".mypy_cache")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(root / "examples" / "sample-repo", dest / "sample", ignore=ignore)
    lines = "".join(json.dumps(entry) + "\n" for entry in canary_script())
    atomic_write(dest / "script.jsonl", lines)
    for part in REFERENCE_PARTS:
        if (root / part).is_dir():
            shutil.copytree(root / part, dest / "reference" / part, ignore=ignore)


def run_canary(inputs: Path, work: Path, backend: Any | None = None) -> CanaryOutcome:
    """Refine a fresh copy of the sample repo with the scripted model; the outcome of this Converge."""
    from orchestrator.loop.graph import Deps, start_run
    from orchestrator.models.backends import ReplayBackend
    from orchestrator.store.setup import add_repo, init_workspace

    ws = init_workspace(work / "ws")
    sample = work / "sample"
    shutil.copytree(inputs / "sample", sample)
    identity = {"GIT_AUTHOR_NAME": "canary", "GIT_AUTHOR_EMAIL": "canary@localhost"}
    identity |= {"GIT_COMMITTER_NAME": "canary", "GIT_COMMITTER_EMAIL": "canary@localhost"}
    env = {**os.environ, **identity}
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "sample"]):
        subprocess.run(["git", *argv], cwd=sample, env=env, check=True, capture_output=True)
    add_repo(ws, str(sample), name="sample")
    model = ReplayBackend(inputs / "script.jsonl")
    deps = Deps(ws=ws, model_for=lambda _card: model, sandbox_backend=backend or NestedBackend())
    result = start_run(deps, "sample", CANARY_GOAL, max_steps=1, auto_approve=True)
    gen = generations.current(ws, "sample")
    tree = gitops.run(ws.repo_path("sample"), "rev-parse", f"{gen.commit}^{{tree}}").strip()
    record = result.record
    return CanaryOutcome(
        status=record.status,
        steps=[s.outcome for s in record.steps],
        tree=tree,
        generation=gen.number,
        reason=record.reason,
    )


# --- the checks of a `self` changeset --------------------------------------------------------


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


def sandbox_config(ws: Workspace) -> Any:
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


def run_self_tests(box: Any) -> TestReport:
    """Converge's suite, minus what needs Docker, a model or a lot of time, in ``box``."""
    from orchestrator.sandbox.base import parse_junit

    argv = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *SELF_TEST_ARGS]
    argv += ["-o", "junit_family=xunit1", f"--junitxml={SELF_JUNIT}"]
    command = box.run(argv, SELF_TEST_TIMEOUT)
    xml = box.run(["cat", SELF_JUNIT], 60.0, 64_000_000)
    if xml.exit_code != 0 or not xml.stdout_tail.strip():
        return TestReport(ran=False, command=command, selection="selected")
    return TestReport(ran=True, command=command, selection="selected", **parse_junit(xml.stdout_tail))


def verify_self(
    ws: Workspace, repo: str, worktree: Path, label: str, backend: Any | None = None
) -> tuple[TestReport, str]:
    """The gate's verify for `self`: the self-test selection in a sandbox; the report and the image digest."""

    with factory.open_sandbox(ws, repo, worktree, label=label, backend=backend, config=sandbox_config(ws)) as box:
        return run_self_tests(box), box.spec.image.digest


def _canary_in(box: Any, pythonpath: str, name: str) -> tuple[CanaryOutcome | None, str]:
    argv = ["env", f"PYTHONPATH={pythonpath}", "python", "-m", "orchestrator.selfhost.checks", "canary"]
    argv += [f"/src/{SCRATCH}", f"/tmp/canary-{name}"]
    result = box.run(argv, CANARY_TIMEOUT)
    lines = [ln for ln in result.stdout_tail.strip().splitlines() if ln.startswith("{")]
    if not result.ok or not lines:
        tail = (result.stderr_tail or result.stdout_tail).strip().splitlines()
        return None, f"{name} canary exited {result.exit_code}: {tail[-1] if tail else 'no output'}"
    return CanaryOutcome.model_validate_json(lines[-1]), ""


def check(ws: Workspace, cs_id: str, backend: Any | None = None) -> tuple[SelfTests, CanaryResult]:
    """Run the self-tests and the canary of a `self` changeset in one sandbox; store both as artifacts."""
    from orchestrator.gate import candidates

    cs = changesets.load(ws, cs_id)
    if not ws.repo(cs.repo).is_self:
        raise UsageError(f"changeset {cs.id} is on repo {cs.repo!r}, not on Converge's own source (`self`)")
    reference = _reference_id()
    cand = candidates.Candidate(
        ws.repo_path(cs.repo), ws.cache / "worktrees" / cs.repo, run="selfcheck", step=cs.id, attempt=1, base=cs.commit
    )
    with cand:
        prepare_canary(cand.path / SCRATCH)
        cfg = sandbox_config(ws)
        with factory.open_sandbox(
            ws, cs.repo, cand.path, label=f"selfcheck-{cs.id}", backend=backend, config=cfg
        ) as box:
            report = run_self_tests(box)
            mine, why_mine = _canary_in(box, "/src", "candidate")
            theirs, why_theirs = _canary_in(box, f"/src/{SCRATCH}/reference", "running")
    tests = SelfTests(commit=cs.commit, markers=TEST_MARKERS, ok=report.ok, summary=report.summary, report=report)
    canary = _compare(cs.commit, reference, mine, theirs, why_mine or why_theirs)
    changesets.write_artifact(ws, cs.id, SELF_TESTS, tests.model_dump_json(indent=2).encode())
    changesets.write_artifact(ws, cs.id, CANARY, canary.model_dump_json(indent=2).encode())
    return tests, canary


def _compare(
    commit: str, reference: str, mine: CanaryOutcome | None, theirs: CanaryOutcome | None, why: str
) -> CanaryResult:
    if mine is None or theirs is None:
        return CanaryResult(commit=commit, reference=reference, ok=False, candidate=mine, running=theirs, detail=why)
    if theirs.status != "completed":
        detail = f"the running Converge's canary did not complete ({theirs.status}: {theirs.reason}); cannot compare"
        return CanaryResult(commit=commit, reference=reference, ok=False, candidate=mine, running=theirs, detail=detail)
    same = mine.key() == theirs.key()
    detail = "same outcome" if same else f"outcomes differ: candidate {mine.key()} vs running {theirs.key()}"
    return CanaryResult(commit=commit, reference=reference, ok=same, candidate=mine, running=theirs, detail=detail)


def _reference_id() -> str:
    """Which Converge is running: its source commit when that is a git checkout, else its path."""
    root = source_root()
    manifest = root.parent / "install.json"
    if manifest.is_file():
        return str(read_json(manifest).get("commit", root))
    head = gitops.resolve(root, "HEAD") if (root / ".git").exists() else None
    dirty = head is not None and bool(gitops.run(root, "status", "--porcelain", "--untracked-files=no", check=False))
    return f"{head}{'+dirty' if dirty else ''}" if head else str(root)


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


# --- entry point used inside the sandbox ------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    """``python -m orchestrator.selfhost.checks canary INPUTS WORK``: print the canary outcome as one JSON line."""
    if len(argv) != 3 or argv[0] != "canary":
        print("usage: python -m orchestrator.selfhost.checks canary INPUTS WORK", file=sys.stderr)
        return 2
    outcome = run_canary(Path(argv[1]), Path(argv[2]))
    print(outcome.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
