"""`converge refine`, `converge runs`, `converge resume`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from orchestrator.cli._common import JsonFlag, emit_json, emit_table, handled, progress, say, workspace
from orchestrator.errors import UsageError
from orchestrator.store import runs
from orchestrator.store.workspace import NAME_RE

if TYPE_CHECKING:
    from orchestrator.loop.driver import RunResult
    from orchestrator.loop.state import Deps


def _deps() -> Deps:
    """What a run needs: the workspace, its models, and a progress line per event."""
    from orchestrator.loop.factory import model_factory  # noqa: PLC0415  lazy: the loop loads langgraph, models, sandbox
    from orchestrator.loop.state import Deps  # noqa: PLC0415  lazy: the loop loads langgraph, models, sandbox

    ws = workspace()
    return Deps(ws=ws, model_for=model_factory(ws), on_event=progress)


def _render(result: RunResult, json_out: bool) -> None:
    record = result.record
    if json_out:
        emit_json(record.to_json())
    else:
        say(f"run {record.id}: {record.status}" + (f" ({record.reason})" if record.reason else ""))
        for step in record.steps:
            extra = f" changeset {step.changeset}" if step.changeset else ""
            gen = f" -> generation {step.generation}" if step.generation is not None else ""
            say(f"  step {step.step} [{step.agent}] {step.title}: {step.outcome}{extra}{gen}")
        if record.waiting_on:
            say(f"  waiting for review: converge changeset show {record.waiting_on}")
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def continue_run(run_id: str | None) -> None:
    """After a review decision: resume the run that waits on it (its progress goes to stderr)."""
    from orchestrator.loop.driver import resume_run  # noqa: PLC0415  lazy: the loop loads langgraph, models, sandbox

    if not run_id:
        return
    ws = workspace()
    try:
        record = runs.load(ws, run_id)
    except UsageError:
        return  # a submitted patch, not a run
    if record.status != "waiting_review":
        return
    result = resume_run(_deps(), run_id)
    progress(f"run {run_id}: {result.record.status}" + (f" ({result.record.reason})" if result.record.reason else ""))


def _check_new_run_id(run_id: str) -> None:
    """``--run-id``: a name (it becomes file names) that no run has yet."""
    if not NAME_RE.match(run_id):
        raise UsageError(f"--run-id {run_id!r}: letters, digits, '.', '_' and '-' only")
    try:
        runs.load(workspace(), run_id)
    except UsageError:
        return
    raise UsageError(f"--run-id {run_id}: that run exists; `converge resume {run_id}` continues it")


def register(app: typer.Typer) -> None:
    """Add the run commands to ``app``."""

    @app.command("refine")
    @handled
    def refine(
        repo: Annotated[str, typer.Argument(help="Registered repo name.")],
        goal: Annotated[str, typer.Option("--goal", help="What the refinement should achieve, in words.")],
        plan_only: Annotated[bool, typer.Option("--plan-only", help="Write the plan and stop.")] = False,
        max_steps: Annotated[int | None, typer.Option("--max-steps", help="Plan steps to execute.")] = None,
        auto_approve: Annotated[
            bool, typer.Option("--auto-approve", help="Promote what policy itself approves without asking.")
        ] = False,
        run_id: Annotated[
            str | None, typer.Option("--run-id", hidden=True, help="Id for the new run (chosen by its starter).")
        ] = None,
        candidates: Annotated[
            int | None,
            typer.Option(
                "--candidates", help="Proposals per attempt, verified side by side; the best goes on (run.candidates)."
            ),
        ] = None,
        json_out: JsonFlag = False,
    ) -> None:
        """One run: plan, then propose, apply, verify, judge, sign, review and promote each step."""
        from orchestrator.loop.driver import start_run  # noqa: PLC0415  lazy: the loop loads langgraph, models, sandbox

        if run_id is not None:
            _check_new_run_id(run_id)
        result = start_run(
            _deps(),
            repo,
            goal,
            plan_only=plan_only,
            max_steps=max_steps,
            auto_approve=auto_approve,
            run_id=run_id,
            candidates=candidates,
        )
        _render(result, json_out)

    @app.command("resume")
    @handled
    def resume(
        run_id: Annotated[str, typer.Argument(help="Run id, or a prefix of one (see `converge runs`).")],
        json_out: JsonFlag = False,
    ) -> None:
        """Resume an interrupted or killed run from its last checkpoint."""
        from orchestrator.loop.driver import resume_run  # noqa: PLC0415  lazy: the loop loads langgraph, models, sandbox

        deps = _deps()
        _render(resume_run(deps, runs.resolve_id(deps.ws, run_id)), json_out)

    @app.command("runs")
    @handled
    def runs_(json_out: JsonFlag = False) -> None:
        """Runs, newest first: status, steps, changesets."""
        records = runs.list_runs(workspace())
        if json_out:
            emit_json([r.to_json() for r in records])
        else:
            emit_table(
                "runs",
                ["id", "repo", "status", "steps", "changesets", "goal"],
                [
                    [r.id, r.repo, r.status, f"{len(r.steps)}/{r.steps_planned}", ", ".join(r.changesets), r.goal[:50]]
                    for r in records
                ],
            )
