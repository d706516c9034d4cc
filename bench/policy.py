"""Time to judge a 5,000-line diff (target: under 200 ms). Prints `name: value` lines.

Builds a throwaway git repo, commits 5,000 added lines of realistic Python (identifiers,
strings, comments, some non-ASCII prose) across 25 files, then times reading the change
from git and evaluating it against the shipped default policy (best of several runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.policy.change import change_from_commits
from orchestrator.policy.engine import evaluate
from orchestrator.policy.model import load_policies, shipped_dir
from orchestrator.store import gitops

LINES = 5000
FILES = 25
TARGET_MS = 200.0
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
    return 0 if total < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
