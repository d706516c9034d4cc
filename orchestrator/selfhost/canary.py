"""The canary of a `self` changeset: the candidate's Converge and the running one each refine a copy of
the sample repo with the same scripted model, in one outer sandbox; they must end the same way.
The model's first edit hides a test from collection: a gate that still compares the candidate's tests
with the base's rejects it and promotes the second edit; a gate that lets it through ends differently.

``check`` runs the self-tests and both canaries and stores them as the changeset's artifacts;
``python -m orchestrator.selfhost.canary canary INPUTS WORK`` is what runs inside the sandbox.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.errors import UsageError
from orchestrator.gate.candidates import Candidate
from orchestrator.loop.driver import start_run
from orchestrator.loop.state import Deps
from orchestrator.models.backends import ReplayBackend
from orchestrator.sandbox import factory
from orchestrator.sandbox.base import Sandbox, SandboxBackend
from orchestrator.selfhost.checks import (
    CANARY,
    SELF_TESTS,
    TEST_MARKERS,
    CanaryOutcome,
    CanaryResult,
    SelfTests,
    run_self_tests,
    sandbox_config,
)
from orchestrator.selfhost.nested import NestedBackend
from orchestrator.store import changesets, generations, gitops
from orchestrator.store.setup import add_repo, init_workspace
from orchestrator.store.storage import atomic_write, read_json
from orchestrator.store.workspace import Workspace, source_root

SCRATCH = ".converge-canary"  # in the outer sandbox's worktree: canary inputs and the reference copy
REFERENCE_PARTS = ("orchestrator", "agents", "policies", "workspace_template")
CANARY_GOAL = "Remove the unused imports from inventory/stock.py"
CANARY_TIMEOUT = 900.0


HIDDEN_TEST = {
    "summary": "rename a slow test",
    "edits": [
        {
            "path": "tests/test_stock.py",
            "search": "def test_value_sums_prices():",
            "replace": "def _test_value_sums_prices():",
        }
    ],
}


def canary_script() -> list[dict[str, Any]]:
    """The scripted model's answers: a one-step plan, an edit that hides a test (the gate must reject it),
    then the real edit (unkeyed replay entries, in order)."""
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
    return [{"text": json.dumps(plan)}, {"text": json.dumps(HIDDEN_TEST)}, {"text": json.dumps(edits)}]


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


def run_canary(inputs: Path, work: Path, backend: SandboxBackend | None = None) -> CanaryOutcome:
    """Refine a fresh copy of the sample repo with the scripted model; the outcome of this Converge."""
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
        attempts=[s.attempts for s in record.steps],
        tree=tree,
        generation=gen.number,
        reason=record.reason,
    )


def _canary_in(box: Sandbox, pythonpath: str, name: str) -> tuple[CanaryOutcome | None, str]:
    argv = ["env", f"PYTHONPATH={pythonpath}", "python", "-m", "orchestrator.selfhost.canary", "canary"]
    argv += [f"/src/{SCRATCH}", f"/tmp/canary-{name}"]
    result = box.run(argv, CANARY_TIMEOUT)
    lines = [ln for ln in result.stdout_tail.strip().splitlines() if ln.startswith("{")]
    if not result.ok or not lines:
        tail = (result.stderr_tail or result.stdout_tail).strip().splitlines()
        return None, f"{name} canary exited {result.exit_code}: {tail[-1] if tail else 'no output'}"
    return CanaryOutcome.model_validate_json(lines[-1]), ""


def check(ws: Workspace, cs_id: str, backend: SandboxBackend | None = None) -> tuple[SelfTests, CanaryResult]:
    """Run the self-tests and the canary of a `self` changeset in one sandbox; store both as artifacts."""
    cs = changesets.load(ws, cs_id)
    if not ws.repo(cs.repo).is_self:
        raise UsageError(f"changeset {cs.id} is on repo {cs.repo!r}, not on Converge's own source (`self`)")
    reference = _reference_id()
    cand = Candidate(
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


# --- entry point used inside the sandbox ------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    """``python -m orchestrator.selfhost.canary canary INPUTS WORK``: print the canary outcome as one JSON line."""
    if len(argv) != 3 or argv[0] != "canary":
        print("usage: python -m orchestrator.selfhost.canary canary INPUTS WORK", file=sys.stderr)
        return 2
    outcome = run_canary(Path(argv[1]), Path(argv[2]))
    print(outcome.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
