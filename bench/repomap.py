"""Repo map costs on a generated repo. Prints `name: value` lines:

  files                      Python files in the generated repo (modules + tests)
  cold_build_s               first build: every file parsed, cache written
  warm_build_s               rebuild from the cache with nothing changed (target: far below cold)
  one_file_update_s          RepoMap.update() after editing one module
  render_s                   ranking and rendering for a goal within 2,000 tokens
  selected_tests             tests_for() one changed module, out of all test files
Usage: python bench/repomap.py [--modules N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.agents.repomap import build_repo_map


def generate(root: Path, modules: int) -> None:
    """A package of ``modules`` modules, each importing the previous one, with one test file per module."""
    pkg = root / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""A generated package."""\n')
    (root / "tests").mkdir()
    for n in range(modules):
        dep = f"from pkg.mod{n - 1} import value{n - 1}\n" if n else ""
        body = "".join(
            f"\n\ndef helper{n}_{k}(x: int, y: int = {k}) -> int:\n    return x * y + {k}\n" for k in range(8)
        )
        (pkg / f"mod{n}.py").write_text(
            f'"""Module {n} of the generated package."""\n{dep}\n\nclass Thing{n}:\n'
            f"    def run(self, amount: float) -> float:\n        return amount\n{body}\n\n"
            f"def value{n}() -> int:\n    return {n}\n"
        )
        (root / "tests" / f"test_mod{n}.py").write_text(
            f"from pkg.mod{n} import value{n}\n\n\ndef test_value():\n    assert value{n}() == {n}\n"
        )
    for args in (["init", "-q"], ["add", "-A"]):
        subprocess.run(["git", *args], cwd=root, check=True)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo, cache = Path(tmp) / "repo", Path(tmp) / "cache"
        generate(repo, args.modules)
        cold = timed(lambda: build_repo_map(repo, cache))
        start = time.perf_counter()
        rmap = build_repo_map(repo, cache)
        warm = time.perf_counter() - start
        target = f"pkg/mod{args.modules // 2}.py"
        (repo / target).write_text((repo / target).read_text() + "\n\ndef added() -> None:\n    pass\n")
        update = timed(lambda: rmap.update([target]))
        render = timed(lambda: rmap.render(f"change helper{args.modules // 2}_3 of module", 2000))
        selected = rmap.tests_for([target])
        tests = sum(1 for p in rmap.files if p.startswith("tests/"))
        print(f"files: {sum(1 for p in rmap.files if p.endswith('.py'))}")
        print(f"cold_build_s: {cold:.3f}")
        print(f"warm_build_s: {warm:.3f}")
        print(f"one_file_update_s: {update:.4f}")
        print(f"render_s: {render:.3f}")
        print(f"selected_tests: {len(selected)} of {tests}")


if __name__ == "__main__":
    main()
