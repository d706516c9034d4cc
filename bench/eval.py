"""Cost of `converge eval` itself, beside the runs and checks it drives, in one eval.

Runs ``--tasks`` tasks of the built-in suite (tool and model tasks alternately) in a temporary
workspace with the suite's reference answers as the replay model, one at a time, through
``runner.start_eval``: per task a throwaway workspace, the check on the start tree, the
refinement run (Docker sandbox, policy, signing) and the check on the final generation.

The eval's wall time splits into the runs (``start_run`` to its return), the checks (start
tree and final tree, each a fresh sandbox) and the rest: the harness (suite loading, the
throwaway workspace and its repo, model wiring, classification, results and summary files,
the executor). With replay answers a run takes seconds, so this share is the harness's
worst case; a real model's minutes make it smaller still.

Prints `name: value` lines:
  tasks                   task trials run
  eval_wall_s             start_eval, call to return
  task_wall_s             median wall time of one task trial (and task_wall_s.<task> for each)
  run_s / check_s         medians per task: inside the run; inside the two checks
  harness_s               eval_wall_s - all run time - all check time
  harness_per_task_s      harness_s / tasks
  harness_overhead_share  harness_s / (all run time + all check time) (target < 0.05)
  check_share             all check time / eval_wall_s (for information: the price of hidden checks)
Usage: python bench/eval.py [--tasks N] [--parallel K]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from itertools import chain, zip_longest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.evals.runner import EvalRequest, start_eval
from orchestrator.evals.suite import BUILTIN, Suite, answers_path, builtin_path, load_suite
from orchestrator.store.setup import init_workspace


def pick(suite: Suite, count: int) -> Suite:
    """``count`` tasks, tool and model ones alternately, so both kinds of run are measured."""
    tool = [t for t in suite.tasks if "tool" in t.spec.tags]
    model = [t for t in suite.tasks if "model" in t.spec.tags]
    mixed = [t for t in chain.from_iterable(zip_longest(tool, model)) if t is not None][:count]
    return Suite(suite.name, suite.path, suite.builtin, tuple(mixed), ())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--parallel", type=int, default=1)
    args = parser.parse_args()
    suite = pick(load_suite(builtin_path(), BUILTIN, builtin=True), args.tasks)
    binding = f"replay:{answers_path()}"
    with tempfile.TemporaryDirectory(prefix="converge-bench-eval-") as tmp:
        ws = init_workspace(Path(tmp) / "ws")
        request = EvalRequest(suite=suite, models={"planner": binding, "coder": binding}, parallel=args.parallel)
        started = time.perf_counter()
        outcome = start_eval(ws, request)
        wall = time.perf_counter() - started
    results = outcome.results
    unsolved = [r.task for r in results if not r.solved]
    if unsolved:
        raise SystemExit(f"reference answers failed on {unsolved}: the harness is not what is measured then")
    runs = sum(r.run_seconds for r in results)
    checks = sum(r.check_seconds for r in results)
    harness = wall - (runs + checks) / args.parallel
    print(f"tasks: {len(results)}")
    print(f"eval_wall_s: {wall:.2f}")
    print(f"task_wall_s: {statistics.median(r.seconds for r in results):.2f}")
    for r in results:
        print(f"task_wall_s.{r.task}: {r.seconds:.2f}")
    print(f"run_s: {statistics.median(r.run_seconds for r in results):.2f}")
    print(f"check_s: {statistics.median(r.check_seconds for r in results):.2f}")
    print(f"harness_s: {harness:.2f}")
    print(f"harness_per_task_s: {harness / len(results):.3f}")
    print(f"harness_overhead_share: {harness / ((runs + checks) / args.parallel):.3f}")
    print(f"check_share: {checks / args.parallel / wall:.3f}")


if __name__ == "__main__":
    main()
