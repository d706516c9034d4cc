"""Figures of evals: solve rates with 95% Wilson intervals, per tag, and paired comparisons.

The solve rate counts valid trials only (an invalid task has nothing to solve). Two evals
are compared task by task: a task counts as solved in an eval when more than half of its
trials were; tasks that changed are "flipped", and McNemar's exact test says how likely so
many flips in one direction would be by chance.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from orchestrator.evals.store import EvalSpec, Rate, Summary, TaskResult

Z95 = 1.959963984540054


def wilson(solved: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of ``solved`` successes in ``n`` trials (None when ``n`` is 0)."""
    if n <= 0:
        return None
    p = solved / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - spread), min(1.0, centre + spread)


def rate(solved: int, valid: int) -> Rate:
    """A solve rate and its interval, rounded for reading."""
    interval = wilson(solved, valid)
    return Rate(
        solved=solved,
        valid=valid,
        rate=round(solved / valid, 4) if valid else None,
        low=round(interval[0], 4) if interval else None,
        high=round(interval[1], 4) if interval else None,
    )


def summarize(spec: EvalSpec, results: list[TaskResult]) -> Summary:
    """The figures of ``spec``'s eval from the results recorded so far."""
    valid = [r for r in results if not r.invalid]
    tags = sorted({tag for r in results for tag in r.tags})
    by_tag = {
        tag: rate(sum(r.solved for r in valid if tag in r.tags), sum(tag in r.tags for r in valid)) for tag in tags
    }
    failures = Counter(str(r.failure) for r in valid if r.failure is not None)
    return Summary(
        id=spec.id,
        suite=spec.suite.name,
        models=spec.models,
        planned=len(spec.jobs()),
        finished=len(results),
        complete=len(results) >= len(spec.jobs()),
        solved=sum(r.solved for r in valid),
        valid=len(valid),
        invalid=len(results) - len(valid),
        rate=rate(sum(r.solved for r in valid), len(valid)),
        by_tag=by_tag,
        failures=dict(sorted(failures.items())),
        broken=len(spec.broken),
        seconds=round(sum(r.seconds for r in results), 2),
        tokens_in=sum(r.tokens_in for r in results),
        tokens_out=sum(r.tokens_out for r in results),
        model_seconds=round(sum(r.model_seconds for r in results), 2),
    )


@dataclass(frozen=True)
class TaskChange:
    """One task in two evals: solved trials out of valid ones in each (None: not run or invalid there)."""

    task: str
    a: tuple[int, int] | None
    b: tuple[int, int] | None

    @property
    def solved_a(self) -> bool | None:
        return _majority(self.a)

    @property
    def solved_b(self) -> bool | None:
        return _majority(self.b)

    @property
    def flipped(self) -> str | None:
        """``"solved"`` (now solved), ``"unsolved"`` (no longer), or None."""
        if self.solved_a is None or self.solved_b is None or self.solved_a == self.solved_b:
            return None
        return "solved" if self.solved_b else "unsolved"


@dataclass(frozen=True)
class Comparison:
    """Eval A against eval B."""

    a: str
    b: str
    rate_a: Rate
    rate_b: Rate
    tasks: list[TaskChange] = field(default_factory=list)
    p_value: float | None = None  # McNemar's exact test over the tasks both evals ran

    @property
    def now_solved(self) -> list[str]:
        return [t.task for t in self.tasks if t.flipped == "solved"]

    @property
    def now_unsolved(self) -> list[str]:
        return [t.task for t in self.tasks if t.flipped == "unsolved"]

    def to_json(self) -> dict[str, object]:
        return {
            "a": {"id": self.a, **self.rate_a.model_dump()},
            "b": {"id": self.b, **self.rate_b.model_dump()},
            "tasks": [{"task": t.task, "a": _pair(t.a), "b": _pair(t.b), "flipped": t.flipped} for t in self.tasks],
            "flipped": {"solved": self.now_solved, "unsolved": self.now_unsolved},
            "p_value": self.p_value,
        }


def compare(a: EvalSpec, results_a: list[TaskResult], b: EvalSpec, results_b: list[TaskResult]) -> Comparison:
    """Per task and overall: what changed from eval ``a`` to eval ``b``."""
    counts_a, counts_b = _per_task(results_a), _per_task(results_b)
    names = list(dict.fromkeys([*a.tasks, *b.tasks]))
    changes = [TaskChange(name, counts_a.get(name), counts_b.get(name)) for name in names]
    paired = [c for c in changes if c.solved_a is not None and c.solved_b is not None]
    gained = sum(c.flipped == "solved" for c in paired)
    lost = sum(c.flipped == "unsolved" for c in paired)
    valid_a = [r for r in results_a if not r.invalid]
    valid_b = [r for r in results_b if not r.invalid]
    return Comparison(
        a=a.id,
        b=b.id,
        rate_a=rate(sum(r.solved for r in valid_a), len(valid_a)),
        rate_b=rate(sum(r.solved for r in valid_b), len(valid_b)),
        tasks=changes,
        p_value=mcnemar_exact(gained, lost) if paired else None,
    )


def mcnemar_exact(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs at one half."""
    n = gained + lost
    if n == 0:
        return 1.0
    k = min(gained, lost)
    tail: float = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return round(min(1.0, 2 * tail), 4)


def _per_task(results: list[TaskResult]) -> dict[str, tuple[int, int]]:
    found: dict[str, tuple[int, int]] = {}
    for r in results:
        if r.invalid:
            continue
        solved, valid = found.get(r.task, (0, 0))
        found[r.task] = (solved + r.solved, valid + 1)
    return found


def _majority(pair: tuple[int, int] | None) -> bool | None:
    if pair is None or pair[1] == 0:
        return None
    return pair[0] * 2 > pair[1]


def _pair(pair: tuple[int, int] | None) -> dict[str, int] | None:
    return None if pair is None else {"solved": pair[0], "valid": pair[1]}
