"""`converge stats`: workspace metrics over every run."""

from __future__ import annotations

from typing import Any

import typer

from orchestrator.cli._common import JsonFlag, emit_json, emit_table, handled, say, workspace
from orchestrator.ops import stats as stats_mod


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.0%}"


def _render(found: dict[str, Any]) -> None:
    r, s, rb, t = found["runs"], found["steps"], found["reproducible_builds"], found["time_per_step"]
    say(
        f"runs: {r['completed']}/{r['finished']} finished runs completed ({_pct(r['success_rate'])}), "
        f"{r['total']} in all"
    )
    say(f"steps: {s['promoted']}/{s['total']} promoted ({_pct(s['success_rate'])})")
    if rb["checked"]:
        say(f"reproducible builds: {rb['identical']}/{rb['checked']} checked twice ({_pct(rb['rate'])})")
    else:
        say(f"reproducible builds: not checked ({rb['verified']} verified attempts; see run.reproducibility_check)")
    mean = t["mean_seconds"]
    say(f"time per step: {'n/a' if mean is None else f'{mean:.1f}s'} mean over {t['steps_measured']} step(s)")
    rules = found["policy_rejections"]
    if rules:
        emit_table(
            "policy rejections by rule",
            ["rule", "reject", "review"],
            [[k, v["reject"], v["review"]] for k, v in rules.items()],
        )
    rows = []
    for repo, trend in found["test_time_trend"].items():
        series = " → ".join(f"g{p['generation']} {p['seconds']:.2f}s" for p in trend["points"]) or "-"
        change = "" if trend["change"] is None else f"{trend['change']:+.0%}"
        rows.append(
            [repo, found["rollbacks"].get(repo, 0), series, change, "REGRESSION" if trend["regression"] else ""]
        )
    emit_table("repos", ["repo", "rollbacks", "test time by generation", "change", ""], rows)
    evals = found["evals"]
    if evals:
        emit_table(
            "evals",
            ["id", "suite", "coder", "finished", "solved", "rate"],
            [
                [e["id"], e["suite"] + (f" (tags: {', '.join(e['tags'])})" if e["tags"] else ""),
                 e["models"].get("coder", ""), f"{e['finished']}/{e['planned']}", f"{e['solved']}/{e['valid']}",
                 _pct(e["rate"]["rate"]) if e["rate"] else "n/a"]
                for e in evals
            ],
        )  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add `converge stats` to ``app``."""

    @app.command("stats")
    @handled
    def stats(json_out: JsonFlag = False) -> None:
        """Workspace metrics over all runs. With --json, these keys (stable; rates null when nothing to divide):

        runs: total, finished, completed, success_rate (completed / finished).

        steps: total, promoted, outcomes, success_rate (promoted / steps).

        reproducible_builds: verified, checked, identical, rate (identical / checked attempts; null if none checked).

        policy_rejections: rule id -> reject, review, total (verdict reasons that asked for more than approval).

        rollbacks: repo -> number of rolled-back generations.

        time_per_step: steps_measured, mean_seconds (file times; includes waits for review).

        test_time_trend: repo -> points (generation, status, changeset, seconds, selection; oldest first),
        median_seconds, change ((last - first) / first), regression (last > 1.2 x median).

        evals: newest first, id, created, suite, builtin, tags, models (role -> binding), planned, finished,
        solved, valid, invalid, rate (solved, valid, rate, low, high: the 95% Wilson interval) — see `converge eval`.
        """
        found = stats_mod.compute(workspace())
        if json_out:
            emit_json(found)
        else:
            _render(found)
