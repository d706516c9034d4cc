"""Sandbox cost, side by side with the host, in one run.

Prints `name: value` lines:
  container_start_ms     open_sandbox end to end (image and env cached), median
  exec_sandbox_ms        one `true` by exec in the long-lived container, median
  exec_host_ms           the same command as a host subprocess, median
  exec_overhead_ms       exec_sandbox_ms - exec_host_ms (target <= 50)
  exec_ratio             exec_sandbox_ms / exec_host_ms
  suite_sandbox_s        the sample repo's pytest suite in the sandbox, median
  suite_host_s           the same suite on the host (the bench's own trusted sample), median
  suite_ratio            suite_sandbox_s / suite_host_s (target <= 1.3)
Usage: python bench/sandbox.py [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.sandbox.factory import open_sandbox
from orchestrator.store.setup import add_repo, init_workspace

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "sample-repo"
ENV = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b"}
ENV |= {"GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
PYTEST = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"]


def _ms(seconds: list[float]) -> float:
    return round(statistics.median(seconds) * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    rounds = parser.parse_args().rounds
    base = Path(tempfile.mkdtemp(prefix="converge-bench-sandbox-"))
    try:
        src = base / "sample"
        shutil.copytree(SAMPLE, src)
        for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "sample"]):
            subprocess.run(["git", *args], cwd=src, env=ENV, check=True)
        ws = init_workspace(base / "ws")
        add_repo(ws, str(src), name="sample")
        tree = base / "tree"
        worktree_add = ["git", "worktree", "add", "-q", "--detach", str(tree), "HEAD"]
        subprocess.run(worktree_add, cwd=ws.src / "sample", check=True)
        with open_sandbox(ws, "sample", tree, label="bench-warm"):
            pass  # image and env built once, outside the measurements
        starts = []
        for _ in range(max(3, rounds // 4)):
            began = time.perf_counter()
            with open_sandbox(ws, "sample", tree, label="bench-start"):
                starts.append(time.perf_counter() - began)
        with open_sandbox(ws, "sample", tree, label="bench") as box:
            box.run(["true"])
            in_box = [box.run(["true"]).duration for _ in range(rounds)]
            on_host = []
            for _ in range(rounds):
                began = time.perf_counter()
                subprocess.run(["true"], check=True)
                on_host.append(time.perf_counter() - began)
            suite_box = [box.run(PYTEST).duration for _ in range(5)]
        suite_host = []
        host_env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        }
        for _ in range(5):
            began = time.perf_counter()
            subprocess.run([sys.executable, *PYTEST[1:]], cwd=src, env=host_env, check=True, capture_output=True)
            suite_host.append(time.perf_counter() - began)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    sandbox_ms, host_ms = _ms(in_box), _ms(on_host)
    figures = {
        "container_start_ms": _ms(starts),
        "exec_sandbox_ms": sandbox_ms,
        "exec_host_ms": host_ms,
        "exec_overhead_ms": round(sandbox_ms - host_ms, 1),
        "exec_ratio": round(sandbox_ms / host_ms, 1),
        "suite_sandbox_s": round(statistics.median(suite_box), 3),
        "suite_host_s": round(statistics.median(suite_host), 3),
        "suite_ratio": round(statistics.median(suite_box) / statistics.median(suite_host), 2),
    }
    for name, value in figures.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
