"""Time to judge a 5,000-line diff (target: under 200 ms), and what comparing with the base costs a verify
(target: under 5% of the test run). Prints `name: value` lines.

Builds a throwaway git repo, commits 5,000 added lines of realistic Python (identifiers,
strings, comments, some non-ASCII prose) across 25 files, then times reading the change
from git and evaluating it against the shipped default policy (best of several runs).

Then, in the real sandbox (Docker), a repo of 1,000 quick tests: its suite under Converge's witness,
the same suite as a plain `python -m pytest` run, and what a verify adds once the base's report is
cached — reading that report and comparing it with the candidate's (best of several runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.policy.baseline import compare
from orchestrator.policy.change import change_from_commits
from orchestrator.policy.engine import evaluate
from orchestrator.policy.model import load_policies, shipped_dir
from orchestrator.sandbox.base import Sandbox
from orchestrator.sandbox.pool import SandboxPool
from orchestrator.sandbox.reference import cached, reference_report
from orchestrator.store import generations, gitops
from orchestrator.store.reports import TestReport
from orchestrator.store.setup import add_repo, init_workspace

LINES = 5000
FILES = 25
TARGET_MS = 200.0
TESTS, TEST_FILES, ROUNDS = 1000, 20, 7
BASELINE_TARGET_PCT = 5.0
PLAIN = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "junit_family=xunit1"]
ENV = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x"}
ENV |= {"GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x"}


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=ENV)


def code_line(i: int) -> str:
    kinds = (
        f"def compute_inventory_total_{i}(items: list[int], warehouse_identifier: str) -> int:",
        f'    """Sum the stock of warehouse {i}; see docs/inventory.md for the rules."""',
        f'    message = f"warehouse {{warehouse_identifier}} holds {{len(items)}} items ({i})"',
        f"    total_quantity_{i} = sum(item * {i % 7 + 1} for item in items if item > 0)",
        f'    logger.info("reconciled %s against ledger entry %s", warehouse_identifier, "{i:08d}")',
        f"    # Prüfe die Summe (check the total) — step {i}",
        f"    return total_quantity_{i}",
        "",
    )
    return kinds[i % len(kinds)]


def _suite(root: Path) -> Path:
    """A repo of TESTS quick tests over TEST_FILES files, committed."""
    per_file = TESTS // TEST_FILES
    (root / "tests").mkdir(parents=True)
    for f in range(TEST_FILES):
        body = "".join(f"\n\ndef test_case_{f}_{i}():\n    assert {i} + 1 == {i + 1}\n" for i in range(per_file))
        (root / "tests" / f"test_part_{f:02}.py").write_text('"""Generated."""' + body)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "suite")
    return root


def _all(box: Sandbox) -> TestReport:
    return box.run_tests()


def _side_by_side(box: Sandbox) -> tuple[float, float]:
    """Best of ROUNDS of the witnessed and the plain suite, taken in turns (the machine's load hits both)."""
    witnessed, plain = [], []
    for _ in range(ROUNDS):
        witnessed.append(_best(1, box.run_tests))
        plain.append(_best(1, lambda: _plain(box)))
    return min(witnessed), min(plain)


def _best(rounds: int, action: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        action()
        times.append(time.perf_counter() - t0)
    return min(times)


def _plain(box: Sandbox) -> None:
    """The same suite as a plain pytest run, with its JUnit file read back as verify reads it."""
    box.run([*PLAIN, "--junitxml=/tmp/plain.xml"])
    box.run(["cat", "/tmp/plain.xml"])


def baseline_cost() -> dict[str, float]:
    """Seconds of the witnessed and the plain suite, and of a verify's comparison with a cached base."""
    with tempfile.TemporaryDirectory() as tmp:
        ws = init_workspace(Path(tmp) / "ws")
        add_repo(ws, str(_suite(Path(tmp) / "suite")), name="suite")
        base = generations.current(ws, "suite").commit
        with SandboxPool(ws, "suite") as pool, pool.at(base) as (_tree, box):
            report = box.run_tests()  # warm the page cache and bytecode, outside the figures
            assert report.ok and len(report.passed) == TESTS, report.summary
            witnessed, plain = _side_by_side(box)
            reference_report(ws, "suite", base, box.spec, pool.backend, _all)  # the first verify of a base pays this
            spec = box.spec

            def against_cached_base() -> None:
                found = cached(ws, "suite", base, spec, "all")
                assert found is not None and not compare(base, found, report).weakened

            compared = _best(10, against_cached_base)
    return {"witnessed": witnessed, "plain": plain, "compared": compared}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        (repo / "README.md").write_text("bench\n")
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "base")
        per_file = LINES // FILES
        for f in range(FILES):
            lines = [code_line(f * per_file + i) for i in range(per_file)]
            (repo / "src" / f"mod_{f:02}.py").parent.mkdir(exist_ok=True)
            (repo / "src" / f"mod_{f:02}.py").write_text("\n".join(lines) + "\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "big change")
        policy = load_policies([shipped_dir()])
        evaluate(change_from_commits(repo, "HEAD~1", "HEAD", "bench"), policy)  # warm caches and imports
        parse, judge = [], []
        for _ in range(5):
            gitops.forget_reads()  # each round reads the diff from git afresh
            t0 = time.perf_counter()
            change = change_from_commits(repo, "HEAD~1", "HEAD", "bench")
            t1 = time.perf_counter()
            verdict = evaluate(change, policy)
            t2 = time.perf_counter()
            parse.append((t1 - t0) * 1000)
            judge.append((t2 - t1) * 1000)
    total = min(p + j for p, j in zip(parse, judge, strict=True))
    print(f"policy_diff_lines: {change.lines_added + change.lines_removed}")
    print(f"policy_read_from_git_ms: {min(parse):.1f}")
    print(f"policy_evaluate_ms: {min(judge):.1f}")
    print(f"policy_judge_5000_lines_ms: {total:.1f}")
    print(f"policy_verdict: {verdict.verdict}")
    print(f"policy_target_ms: {TARGET_MS:.0f}")
    print(f"policy_within_target: {'yes' if total < TARGET_MS else 'no'}")
    cost = baseline_cost()
    extra_pct = cost["compared"] / cost["witnessed"] * 100
    print(f"policy_baseline_tests: {TESTS}")
    print(f"policy_baseline_test_run_s: {cost['witnessed']:.2f}")
    print(f"policy_baseline_plain_run_s: {cost['plain']:.2f}")
    print(f"policy_baseline_witness_overhead_pct: {(cost['witnessed'] / cost['plain'] - 1) * 100:.1f}")
    print(f"policy_baseline_compare_cached_ms: {cost['compared'] * 1000:.1f}")
    print(f"policy_baseline_extra_pct: {extra_pct:.2f}")
    print(f"policy_baseline_target_pct: {BASELINE_TARGET_PCT:.0f}")
    print(f"policy_baseline_within_target: {'yes' if extra_pct < BASELINE_TARGET_PCT else 'no'}")
    return 0 if total < TARGET_MS and extra_pct < BASELINE_TARGET_PCT else 1


if __name__ == "__main__":
    sys.exit(main())
