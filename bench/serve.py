"""Render time of the review page (`converge serve`) for a changeset with a 2,000-line diff.

A workspace gets a changeset whose diff is a real `git diff` of about 2,000 lines over
several Python files (new modules and rewritten functions) of a generated repo; its
record, diff, test report and verdict are written to the store as the gate writes them. The
page is then requested through the whole app (token middleware, routing, template, pygments
highlighting) with Starlette's in-process client: no network, so the figure is server time.
The attestation check runs in a separate request the page makes after loading, not here.

Prints `name: value` lines:
  diff_lines        lines of the stored diff
  diff_files        files in it
  page_first_ms     the first request (lexers looked up, templates compiled)
  page_ms           median of the following requests (target < 300)
  page_kb           size of the HTML
  list_ms           the changeset list page, median
Usage: python bench/serve.py [--lines N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from starlette.testclient import TestClient

from orchestrator.serve.app import build_app
from orchestrator.store import changesets
from orchestrator.store.changesets import Changeset
from orchestrator.store.reports import CommandResult, TestReport
from orchestrator.store.setup import add_repo, init_workspace

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "b",
    "GIT_AUTHOR_EMAIL": "b@b",
    "GIT_COMMITTER_NAME": "b",
    "GIT_COMMITTER_EMAIL": "b@b",
}
TOKEN = "bench"


def sh(cwd: Path, *args: str) -> str:
    return subprocess.run(args, cwd=cwd, env=ENV, check=True, capture_output=True, text=True).stdout


def module(n: int, lines: int, variant: int) -> str:
    """Python source of about ``lines`` lines: small functions with docstrings, strings and arithmetic."""
    out = [f'"""Generated module {n}."""', "", "import math", ""]
    i = 0
    while len(out) < lines:
        out += [
            f"def f{i}(x: float, scale: float = {variant}.5) -> float:",
            f'    """Step {i} of the pipeline (variant {variant})."""',
            f"    label = 'step-{i}-{variant}'  # a comment",
            f"    return math.sqrt(abs(x * scale + {i})) if label else 0.0",
            "",
        ]
        i += 1
    return "\n".join(out) + "\n"


def make_diff(root: Path, lines: int) -> tuple[Path, str]:
    repo = root / "gen"
    repo.mkdir()
    for n in range(4):
        (repo / f"mod{n}.py").write_text(module(n, lines // 8, 1))
    sh(repo, "git", "init", "-q", "-b", "main")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", "base")
    for n in range(4):  # every function of the old modules rewritten, and new modules added
        (repo / f"mod{n}.py").write_text(module(n, lines // 8, 2))
    for n in range(4, 6):
        (repo / f"new{n}.py").write_text(module(n, lines // 8, 3))
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", "change")
    return repo, sh(repo, "git", "diff", "HEAD~1", "HEAD")


def median_ms(client: TestClient, path: str, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        assert client.get(path).status_code == 200
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws = init_workspace(root / "ws")
        repo, diff = make_diff(root, args.lines)
        add_repo(ws, str(repo), name="sample")
        cs = Changeset(
            id="b" * 16, repo="sample", commit="1" * 40, base="2" * 40, verdict="review", risk="medium",
            attestation=f"proofs/sample/{'b' * 16}.dsse.json", base_generation=0, tree="3" * 40,
            message="Rewrite the pipeline steps", tests="120 passed, 0 failed, 0 errors, 0 skipped",
            created=changesets.now(),
        )  # fmt: skip
        report = TestReport(ran=True, passed=[f"t::test_{i}" for i in range(120)],
                            command=CommandResult(argv=["pytest"], exit_code=0, duration=1.0))  # fmt: skip
        reason = {"rule": "blast-radius", "message": "6 files changed", "decision": "review", "risk": "medium"}
        verdict = {"decision": "review", "risk": "medium", "reasons": ["6 files"], "detail": {"reasons": [reason]}}
        changesets.write_artifact(ws, cs.id, changesets.DIFF, diff.encode())
        changesets.write_artifact(ws, cs.id, changesets.REPORT, report.model_dump_json().encode())
        changesets.write_artifact(ws, cs.id, changesets.VERDICT, json.dumps(verdict).encode())
        changesets.save(ws, cs)

        client = TestClient(build_app(ws, TOKEN, 8750), base_url="http://127.0.0.1:8750")
        client.get(f"/?token={TOKEN}")
        path = f"/changesets/{cs.id}"
        start = time.perf_counter()
        first = client.get(path)
        first_ms = round((time.perf_counter() - start) * 1000, 1)
        print(f"diff_lines: {len(diff.splitlines())}")
        print(f"diff_files: {diff.count('diff --git ')}")
        print(f"page_first_ms: {first_ms}")
        print(f"page_ms: {median_ms(client, path, args.rounds)}")
        print(f"page_kb: {round(len(first.content) / 1024, 1)}")
        print(f"list_ms: {median_ms(client, '/changesets', args.rounds)}")


if __name__ == "__main__":
    main()
