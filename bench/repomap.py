"""Repo map costs on a generated repo the size of Django 5.2 (6,890 files, 2,818 of them Python). Prints
`name: value` lines:

  load_1m                    the machine's load average when the cold build started (the cores are shared)
  files                      files in the generated repo
  python_files               Python files among them (modules + tests)
  python_mb                  their size, MB
  cold_build_s               first map of the commit: every Python file parsed (in parallel), cache written
                             (target < 15 on 2 cores)
  warm_build_s               the same map again from the cache, in a new process's view (target: far below cold)
  one_file_update_s          RepoMap.update() after editing one module
  render_s                   ranking and rendering for a goal within 2,000 tokens
  selected_tests             tests_for() one changed module, out of all test files
Usage: python bench/repomap.py [--files N] [--python N]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.agents import repomap
from orchestrator.agents.repomap import build_repo_map, build_repo_map_at

OTHER_SUFFIXES = (".html", ".txt", ".po", ".js", ".css", ".json")


def module_text(rnd: random.Random, package: str, n: int, modules: list[str]) -> str:
    """A module of about 60-600 lines: imports of earlier modules, classes with methods, functions."""
    deps = rnd.sample(modules, min(len(modules), rnd.randint(0, 5)))
    lines = [f'"""Module {n} of {package}: generated for the benchmark."""', "", "import os", "import re", ""]
    lines += [f"from {dep} import helper_{dep.rsplit('_', 1)[-1]}" for dep in deps]
    for c in range(rnd.randint(1, 7)):
        lines += ["", "", f"class Thing{n}x{c}(object):", f'    """A thing, number {c}."""', ""]
        for m in range(rnd.randint(2, 12)):
            lines += [
                f"    def method_{m}(self, value: int, scale: float = {m}.0) -> float:",
                f'        """Scale ``value`` by {m}."""',
                f"        result = value * scale + {m}",
                "        if result > 100:",
                "            return result / 2",
                "        return result",
                "",
            ]
    for f in range(rnd.randint(1, 8)):
        lines += ["", "", f"def function_{f}(text: str, limit: int = {f}) -> list[str]:"]
        lines += [f"    parts = re.split(r'\\s+', text)[:{f + 1}]", "    return [p.strip() for p in parts if p]"]
    lines += ["", "", f"def helper_{n}() -> int:", f"    return {n}", ""]
    return "\n".join(lines)


def generate(root: Path, files: int, python: int) -> None:
    """A repo of ``files`` files, ``python`` of them Python (a tenth tests) in packages of about 20 modules
    (about 6.5 kB a module: Django's Python files average that)."""
    rnd = random.Random(7)
    tests = python // 10
    modules: list[str] = []
    for n in range((python - tests) * 20 // 21):  # one package __init__ per 20 modules
        package = f"proj/pkg{n // 20}"
        folder = root / package
        if not folder.exists():
            folder.mkdir(parents=True)
            (folder / "__init__.py").write_text(f'"""Package {n // 20}."""\n')
        name = f"mod_{n}"
        (folder / f"{name}.py").write_text(module_text(rnd, package, n, modules[-200:]))
        modules.append(f"{package.replace('/', '.')}.{name}")
    (root / "tests").mkdir()
    for t in range(tests):
        target = modules[t * len(modules) // tests]
        number = target.rsplit("_", 1)[-1]
        body = (
            f"from {target} import helper_{number}\n\n\ndef test_helper():\n    assert helper_{number}() == {number}\n"
        )
        (root / "tests" / f"test_mod_{number}.py").write_text(body)
    written = sum(1 for _ in root.rglob("*.py"))
    for k in range(files - written):
        folder = root / "proj" / "assets" / f"a{k // 100}"
        folder.mkdir(parents=True, exist_ok=True)
        suffix = OTHER_SUFFIXES[k % len(OTHER_SUFFIXES)]
        (folder / f"file_{k}{suffix}").write_text(f"asset {k}\n" * rnd.randint(1, 40))
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "g"]):
        subprocess.run(["git", *args], cwd=root, check=True)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6890)
    parser.add_argument("--python", type=int, default=2818)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo, cache = Path(tmp) / "repo", Path(tmp) / "cache"
        generate(repo, args.files, args.python)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
        load = os.getloadavg()[0]
        cold = timed(lambda: build_repo_map_at(repo, head, cache))
        repomap._HELD.clear()  # what a new process sees: the cache file, not this one's memory
        warm = timed(lambda: build_repo_map_at(repo, head, cache))
        rmap = build_repo_map(repo, cache)
        tested = sorted(p for p in rmap.files if p.startswith("tests/"))[len(rmap.files) % 97]
        target = next(p for p in sorted(rmap.files) if p.endswith("/" + tested.removeprefix("tests/test_")))
        (repo / target).write_text((repo / target).read_text() + "\n\ndef added() -> None:\n    pass\n")
        update = timed(lambda: rmap.update([target]))
        render = timed(lambda: rmap.render("change method_3 of Thing1400x0 in mod_1400", 2000))
        selected = rmap.tests_for([target])
        python = [p for p in rmap.files if p.endswith(".py")]
        size = sum((repo / p).stat().st_size for p in python) / 1e6
        print(f"load_1m: {load:.2f}")
        print(f"files: {len(rmap.files)}")
        print(f"python_files: {len(python)}")
        print(f"python_mb: {size:.1f}")
        print(f"cold_build_s: {cold:.3f}")
        print(f"warm_build_s: {warm:.3f}")
        print(f"one_file_update_s: {update:.4f}")
        print(f"render_s: {render:.3f}")
        print(f"selected_tests: {len(selected)} of {sum(1 for p in python if p.startswith('tests/'))}")


if __name__ == "__main__":
    main()
