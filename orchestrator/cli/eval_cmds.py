"""`converge eval run|list|show|compare|resume`: task suites through the full gate, and their figures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.cli._common import JsonFlag, emit_json, emit_table, err_console, handled, progress, say, workspace
from orchestrator.evals import runner, stats, store, suite, wiring
from orchestrator.evals.suite import resolve

if TYPE_CHECKING:
    from orchestrator.evals.runner import EvalOutcome, OnResult
    from orchestrator.evals.store import EvalSpec, Rate, Summary, TaskResult

eval_app = typer.Typer(help="Evaluate models and agents on task suites with hidden checks.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the `eval` command group to ``app``."""
    app.add_typer(eval_app, name="eval")


@eval_app.command("run")
@handled
def run(
    suite: Annotated[str, typer.Argument(help="`refactor` (built in), `test` (the workspace's test/), or a path.")],
    model: Annotated[
        list[str] | None, typer.Option("--model", help="ROLE=MODEL for this eval, e.g. coder=coder7b (repeatable).")
    ] = None,
    repeat: Annotated[int, typer.Option("--repeat", help="Trials of each task.")] = 1,
    parallel: Annotated[int, typer.Option("--parallel", help="Tasks at once (bounded by cores and memory).")] = 1,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only tasks carrying this tag (repeatable).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Run every task of SUITE in a throwaway workspace through the full gate, then its hidden check.

    With --json, one document: id, suite, models, broken, summary (solved, valid, invalid, rate with its
    95% interval, by_tag, failures) and results, one per task trial with at least task, solved, invalid,
    failure, seconds, tokens_in, tokens_out.
    """

    ws = workspace()
    found = resolve(ws, suite)
    for broken in found.broken:
        progress(f"converge: error: {broken.error}")
    request = runner.EvalRequest(
        suite=found, models=wiring.parse_overrides(model or []), repeat=repeat, parallel=parallel, tags=tag or []
    )
    total = len(found.select(request.tags)) * max(repeat, 1)

    def on_start(spec: EvalSpec) -> None:
        progress(f"eval {spec.id}: {total} task trial(s) of suite {spec.suite.name}; if interrupted: "
                 f"converge eval resume {spec.id}")  # fmt: skip

    with _progress_bar(total) as on_result:
        outcome = runner.start_eval(ws, request, on_result, on_start)
    _render(outcome, json_out)
    if found.broken:
        raise typer.Exit(2)


@eval_app.command("resume")
@handled
def resume(
    eval_id: Annotated[str, typer.Argument(help="Eval id (see `converge eval list`).")],
    parallel: Annotated[int | None, typer.Option("--parallel", help="Tasks at once (default: as started).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Finish an interrupted or killed eval: the task trials without a result run, the others are kept."""

    ws = workspace()
    spec = store.load_spec(ws, eval_id)
    left = len(spec.jobs()) - len({(r.task, r.trial) for r in store.load_results(ws, eval_id)})
    with _progress_bar(max(left, 0)) as on_result:
        outcome = runner.resume_eval(ws, eval_id, parallel, on_result)
    _render(outcome, json_out)


@eval_app.command("show")
@handled
def show(
    eval_id: Annotated[str, typer.Argument(help="Eval id (see `converge eval list`).")], json_out: JsonFlag = False
) -> None:
    """One eval: per task whether it was solved, the failure class, time and tokens; the figures."""

    _render(runner.show(workspace(), eval_id), json_out)


@eval_app.command("list")
@handled
def list_(json_out: JsonFlag = False) -> None:
    """The suites known (built in, and the workspace's test/) and the evals run in this workspace."""

    ws = workspace()
    suites = suite.known(ws)
    evals = [(spec, store.load_summary(ws, spec.id)) for spec in store.list_specs(ws)]
    if json_out:
        emit_json(
            {
                "suites": [
                    {"name": s.name, "path": str(s.path), "builtin": s.builtin, "tasks": len(s.tasks),
                     "broken": len(s.broken)}
                    for s in suites
                ],
                "evals": [
                    {"id": spec.id, "suite": spec.suite.name, "created": spec.created, "models": spec.models,
                     "summary": summary.model_dump(mode="json") if summary else None}
                    for spec, summary in evals
                ],
            }
        )  # fmt: skip
        return
    emit_table(
        "suites",
        ["name", "tasks", "broken", "path"],
        [[s.name + (" (built in)" if s.builtin else ""), len(s.tasks), len(s.broken), s.path] for s in suites],
    )
    emit_table(
        "evals",
        ["id", "suite", "created", "coder", "solved", "rate (95% interval)"],
        [
            [spec.id, spec.suite.name, spec.created, spec.models.get("coder", ""),
             f"{summary.solved}/{summary.valid}" + ("" if summary.complete else " (unfinished)") if summary else "-",
             _rate(summary.rate) if summary else "-"]
            for spec, summary in evals
        ],
    )  # fmt: skip


@eval_app.command("compare")
@handled
def compare(
    a: Annotated[str, typer.Argument(help="The first eval id.")],
    b: Annotated[str, typer.Argument(help="The second eval id.")],
    json_out: JsonFlag = False,
) -> None:
    """Eval A against eval B: solve rates with 95% intervals, per-task changes, the tasks that flipped."""

    ws = workspace()
    found = stats.compare(
        store.load_spec(ws, a), store.load_results(ws, a), store.load_spec(ws, b), store.load_results(ws, b)
    )
    if json_out:
        emit_json(found.to_json())
        return
    say(f"A {a}: {_rate(found.rate_a)}")
    say(f"B {b}: {_rate(found.rate_b)}")

    def cell(pair: tuple[int, int] | None) -> str:
        return "-" if pair is None else f"{pair[0]}/{pair[1]}"

    rows = [[t.task, cell(t.a), cell(t.b), t.flipped or ""] for t in found.tasks]
    emit_table("tasks (solved/valid trials)", ["task", "A", "B", "flipped"], rows)
    say(f"now solved: {', '.join(found.now_solved) or 'none'}")
    say(f"no longer solved: {', '.join(found.now_unsolved) or 'none'}")
    if found.p_value is not None:
        say(f"McNemar exact p = {found.p_value} (chance of flips this lopsided if nothing changed)")


@contextmanager
def _progress_bar(total: int) -> Iterator[OnResult]:
    """A rich progress bar on stderr, advanced by each finished task trial."""
    bar = Progress(
        TextColumn("[bold]eval"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )
    tracked = bar.add_task("", total=total)

    def on_result(result: TaskResult, summary: Summary) -> None:
        mark = "solved" if result.solved else "invalid" if result.invalid else str(result.failure)
        bar.update(tracked, advance=1, description=f"{summary.solved} solved; last: {result.task} {mark}")

    with bar:
        yield on_result


def _rate(r: Rate) -> str:
    if r.rate is None or r.low is None or r.high is None:
        return f"{r.solved}/{r.valid}"
    return f"{r.rate:.0%} ({r.solved}/{r.valid}; {r.low:.0%}-{r.high:.0%})"


def _render(outcome: EvalOutcome, json_out: bool) -> None:
    if json_out:
        emit_json(outcome.to_json())
        return
    summary = outcome.summary

    def name(r: TaskResult) -> str:
        return r.task + (f" #{r.trial + 1}" if outcome.spec.repeat > 1 else "")

    rows = [
        [name(r), "yes" if r.solved else "invalid" if r.invalid else "no", r.failure or "", f"{r.seconds:.1f}s",
         f"{r.tokens_in}/{r.tokens_out}"]
        for r in outcome.results
    ]  # fmt: skip
    emit_table(f"eval {outcome.spec.id}", ["task", "solved", "class", "time", "tokens in/out"], rows)
    for r in outcome.results:
        if r.failure is not None:
            say(f"  {name(r)}: {r.failure}: {r.reason}")
    state = "" if summary.complete else f" (unfinished: {summary.finished}/{summary.planned}; `converge eval resume`)"
    say(f"suite {summary.suite}: solved {_rate(summary.rate)}, {summary.invalid} invalid{state}")
    for tag, tag_rate in summary.by_tag.items():
        say(f"  {tag}: {_rate(tag_rate)}")
    if summary.failures:
        say("failures: " + ", ".join(f"{k} {v}" for k, v in summary.failures.items()))
    tokens = f"{summary.tokens_in}/{summary.tokens_out}"
    say(f"time {summary.seconds:.0f}s, model {summary.model_seconds:.0f}s, tokens in/out {tokens}")
