"""Workspace metrics over every run: what `converge stats` prints.

Everything is read back from files the loop already keeps, nothing is tracked twice:

    .converge/runs/<id>.json            run status and step outcomes      -> run and step success
    cache/runs/<run>/<step>-<attempt>.* proposals, tests, verdicts, repro  -> rejections, reproducibility, step time
    refs/converge/ + generation records lineage                           -> rollbacks
    .converge/changesets/<id>/report.json the tests that produced a generation -> test-time trend

Time per step is measured from file modification times, because the run record only keeps a
run's total: a step starts when the previous one ended (``plan.json`` for the first step) and
ends at its newest attempt file or, when it made a changeset, at the changeset record's last
write (its promotion or rejection). So it covers propose, apply, verify, judge, sign and
promote of every attempt, and also any time the step waited for a human decision or the
run was killed before being resumed.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.evals import store as eval_store
from orchestrator.store import changesets, generations, runs
from orchestrator.store.reports import TestReport
from orchestrator.store.storage import read_json
from orchestrator.store.workspace import Workspace

REGRESSION_FACTOR = 1.2  # the last test run is a regression when >20% slower than the median
FINISHED = ("completed", "failed")
_ATTEMPT_FILE = re.compile(r"^(\d+)-(\d+)\.(proposal\.json|tests\.json|verdict\.json|repro\.json|image)$")


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@dataclass(frozen=True)
class _Attempt:
    step: int
    attempt: int
    files: dict[str, Path]


def _attempts(run_folder: Path) -> list[_Attempt]:
    """The attempt files of one run, grouped by (step, attempt)."""
    grouped: dict[tuple[int, int], dict[str, Path]] = {}
    if run_folder.is_dir():
        for path in run_folder.iterdir():
            m = _ATTEMPT_FILE.match(path.name)
            if m:
                grouped.setdefault((int(m[1]), int(m[2])), {})[m[3]] = path
    return [_Attempt(s, a, files) for (s, a), files in sorted(grouped.items())]


def _run_figures(records: list[runs.RunRecord]) -> dict[str, Any]:
    finished = [r for r in records if r.status in FINISHED]
    completed = sum(r.status == "completed" for r in finished)
    steps = [s for r in finished for s in r.steps]
    promoted = sum(s.outcome == "promoted" for s in steps)
    return {
        "runs": {
            "total": len(records),
            "finished": len(finished),
            "completed": completed,
            "success_rate": _rate(completed, len(finished)),
        },
        "steps": {
            "total": len(steps),
            "promoted": promoted,
            "outcomes": dict(sorted(Counter(s.outcome for s in steps).items())),
            "success_rate": _rate(promoted, len(steps)),
        },
    }


def _policy_figures(all_attempts: list[_Attempt]) -> dict[str, dict[str, int]]:
    """Per rule id: how many verdict reasons asked for review or rejected."""
    by_rule: dict[str, Counter[str]] = {}
    for att in all_attempts:
        path = att.files.get("verdict.json")
        if path is None:
            continue
        detail = read_json(path).get("detail") or {}
        for reason in detail.get("reasons", []):
            decision = reason.get("decision")
            if decision in ("review", "reject"):
                by_rule.setdefault(reason["rule"], Counter())[decision] += 1
    return {
        rule: {"reject": c["reject"], "review": c["review"], "total": c["reject"] + c["review"]}
        for rule, c in sorted(by_rule.items())
    }


def _repro_figures(all_attempts: list[_Attempt]) -> dict[str, Any]:
    verified = [a for a in all_attempts if "tests.json" in a.files]
    checked = [a for a in verified if "repro.json" in a.files]
    identical = sum(bool(read_json(a.files["repro.json"]).get("identical")) for a in checked)
    return {
        "verified": len(verified),
        "checked": len(checked),
        "identical": identical,
        "rate": _rate(identical, len(checked)) if checked else None,  # unchecked builds are not irreproducible
    }


def _mtime(path: Path) -> float:
    return path.stat().st_mtime


def _step_seconds(ws: Workspace, record: runs.RunRecord, folder: Path, attempts: list[_Attempt]) -> list[float]:
    """Seconds of each step of a run, from file modification times (see the module docstring)."""
    plan = folder / "plan.json"
    if not plan.exists():
        return []
    changeset_of = {s.step: s.changeset for s in record.steps}
    start = _mtime(plan)
    found = []
    for step in sorted({a.step for a in attempts}):
        ends = [_mtime(p) for a in attempts if a.step == step for p in a.files.values()]
        cs = changeset_of.get(step)
        if cs and changesets.exists(ws, cs):
            ends.append(_mtime(changesets.record_path(ws, cs)))
        end = max(ends)
        found.append(max(0.0, end - start))
        start = end
    return found


def _healthy(ws: Workspace) -> list[str]:
    """The registered repos whose clone is whole (a broken one is left out of the figures, not fatal)."""
    return [repo.name for repo in ws.repos() if generations.problem(ws, repo.name) is None]


def _rollback_figures(ws: Workspace) -> dict[str, int]:
    return {name: sum(g.status == "rolled-back" for g in generations.lineage(ws, name)) for name in _healthy(ws)}


def test_trend(ws: Workspace, repo: str) -> dict[str, Any]:
    """Test duration of the changeset that produced each generation of ``repo``, oldest first."""
    points = []
    for gen in generations.lineage(ws, repo):
        for cs_id in gen.changesets[-1:]:
            report_path = changesets.artifact_path(ws, cs_id, changesets.REPORT)
            if not report_path.exists():
                continue
            report = TestReport.model_validate_json(report_path.read_text())
            if report.command is None:
                continue
            points.append(
                {
                    "generation": gen.number,
                    "status": gen.status,
                    "changeset": cs_id,
                    "seconds": round(report.command.duration, 3),
                    "selection": report.selection,
                }
            )
    seconds = [float(p["seconds"]) for p in points]
    median = statistics.median(seconds) if seconds else None
    change = round((seconds[-1] - seconds[0]) / seconds[0], 4) if len(seconds) >= 2 and seconds[0] > 0 else None
    return {
        "points": points,
        "median_seconds": median,
        "change": change,
        "regression": bool(median and seconds[-1] > REGRESSION_FACTOR * median),
    }


def compute(ws: Workspace) -> dict[str, Any]:
    """Every metric of the workspace, as the JSON document `converge stats --json` prints."""
    records = runs.list_runs(ws)
    all_attempts: list[_Attempt] = []
    step_times: list[float] = []
    for record in records:
        folder = ws.cache / "runs" / record.id
        attempts = _attempts(folder)
        all_attempts += attempts
        if record.status in FINISHED:
            step_times += _step_seconds(ws, record, folder, attempts)
    figures = _run_figures(records)
    return {
        **figures,
        "reproducible_builds": _repro_figures(all_attempts),
        "policy_rejections": _policy_figures(all_attempts),
        "rollbacks": _rollback_figures(ws),
        "time_per_step": {
            "steps_measured": len(step_times),
            "mean_seconds": round(statistics.fmean(step_times), 2) if step_times else None,
        },
        "test_time_trend": {name: test_trend(ws, name) for name in _healthy(ws)},
        "broken_repos": {repo.name: why for repo in ws.repos() if (why := generations.problem(ws, repo.name))},
        "evals": eval_history(ws),
    }


def eval_history(ws: Workspace) -> list[dict[str, Any]]:
    """Every eval of the workspace, newest first: suite, models, how far it got, its solve rate."""
    found = []
    for spec in eval_store.list_specs(ws):
        summary = eval_store.load_summary(ws, spec.id)
        found.append(
            {
                "id": spec.id,
                "created": spec.created,
                "suite": spec.suite.name,
                "builtin": spec.suite.builtin,
                "tags": spec.tags,
                "models": spec.models,
                "planned": len(spec.jobs()),
                "finished": summary.finished if summary else 0,
                "solved": summary.solved if summary else 0,
                "valid": summary.valid if summary else 0,
                "invalid": summary.invalid if summary else 0,
                "rate": summary.rate.model_dump() if summary else None,
            }
        )
    return found
