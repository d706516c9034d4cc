"""Running evals: each task trial in a throwaway workspace, through the full gate, then the hidden check.

    start_eval(ws, EvalRequest)  -> EvalOutcome     a new eval of a suite
    resume_eval(ws, eval_id)     -> EvalOutcome     the task trials a killed or interrupted eval did not finish
    run_task(TaskJob)            -> TaskResult      one trial (what an executor runs)

A trial: a new workspace in ``cache/eval/<id>/work/`` holding the task's start tree as
generation 0; the check on that tree (passing: the task is invalid); a run of the goal as
``converge refine --auto-approve`` would do it; and, if the run promoted anything, the check
on the final generation in a fresh sandbox. The trial's workspace is removed when it ends.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import UsageError
from orchestrator.evals import classify, drive, sandbox_check, store, throwaway, wiring
from orchestrator.evals.stats import summarize
from orchestrator.evals.store import EvalSpec, FailureClass, Summary, TaskResult
from orchestrator.evals.suite import BUILTIN, Suite, Task, answers_path, builtin_path, load_suite
from orchestrator.sandbox.base import SandboxBackend
from orchestrator.scale.base import Executor
from orchestrator.scale.factory import executor_for
from orchestrator.store import generations
from orchestrator.store.storage import file_lock
from orchestrator.store.workspace import Workspace

OnResult = Callable[[TaskResult, Summary], None]
TRASH = ".trash"


@dataclass(frozen=True)
class EvalRequest:
    """What ``converge eval run`` asks for."""

    suite: Suite
    models: dict[str, str] = field(default_factory=dict)  # ROLE -> binding given with --model
    repeat: int = 1
    parallel: int = 1
    tags: list[str] = field(default_factory=list)
    # the sandboxes' backend (None: the workspace's); a live object, so the trials run on this machine
    backend: SandboxBackend | None = None


@dataclass(frozen=True)
class EvalOutcome:
    """An eval as it stands: what was asked, every result so far (in task order), the figures."""

    spec: EvalSpec
    results: list[TaskResult]
    summary: Summary

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.spec.id,
            "suite": self.spec.suite.model_dump(),
            "models": self.spec.models,
            "broken": self.spec.broken,
            "summary": self.summary.model_dump(mode="json"),
            "results": [store.to_json_line(r) for r in self.results],
        }


@dataclass(frozen=True)
class TaskJob:
    """One trial of one task, as an executor receives it (plain values only)."""

    workspace: Path  # the user's workspace
    eval_id: str
    task: Task
    trial: int
    bindings: dict[str, str]
    backend: SandboxBackend | None = None  # set only for the local executor (see EvalRequest.backend)


def start_eval(
    ws: Workspace,
    request: EvalRequest,
    on_result: OnResult | None = None,
    on_start: Callable[[EvalSpec], None] | None = None,
) -> EvalOutcome:
    """Run ``request.suite`` (its tasks carrying every tag asked for), ``repeat`` times each.

    ``on_start`` hears of the eval once its record exists (its id is what a resume needs).
    """
    if request.repeat < 1:
        raise UsageError(f"--repeat {request.repeat}: must be at least 1")
    if request.parallel < 1:
        raise UsageError(f"--parallel {request.parallel}: must be at least 1")
    tasks = request.suite.select(request.tags)
    if not tasks:
        wanted = f" carrying tag(s) {', '.join(request.tags)}" if request.tags else ""
        raise UsageError(f"suite {request.suite.name} ({request.suite.path}) has no runnable task{wanted}")
    spec = EvalSpec(
        id=store.new_id(),
        created=store.now(),
        suite=store.SuiteRef(name=request.suite.name, path=str(request.suite.path), builtin=request.suite.builtin),
        models=wiring.resolve_bindings(ws, request.models),
        repeat=request.repeat,
        tags=request.tags,
        parallel=request.parallel,
        tasks={t.name: t.digest for t in tasks},
        task_tags={t.name: t.spec.tags for t in tasks},
        broken={b.name: b.error for b in request.suite.broken},
    )
    store.create(ws, spec)
    if on_start is not None:
        on_start(spec)
    return _run(ws, spec, {t.name: t for t in tasks}, request.parallel, on_result, request.backend)


def reference_eval(
    ws: Workspace,
    tags: list[str] | None = None,
    on_result: OnResult | None = None,
    *,
    parallel: int = 1,
    backend: SandboxBackend | None = None,
    suite_dir: Path | None = None,
    answers: Path | None = None,
) -> EvalOutcome:
    """The built-in suite (or a copy of it at ``suite_dir``) with its reference answers (``answers``) as
    planner and coder (a replay model).

    It measures Converge, not a model: the answers solve every task, so a task left unsolved
    is the harness's or the gate's doing. What the self canary compares between two Converges.
    """
    binding = f"replay:{answers or answers_path()}"
    suite = load_suite(suite_dir or builtin_path(), BUILTIN, builtin=True)
    models = {"planner": binding, "coder": binding}
    request = EvalRequest(suite=suite, models=models, tags=tags or [], parallel=parallel, backend=backend)
    return start_eval(ws, request, on_result)


def resume_eval(
    ws: Workspace, eval_id: str, parallel: int | None = None, on_result: OnResult | None = None
) -> EvalOutcome:
    """Finish an eval: run the task trials it has no result for; the finished ones are not run again."""
    spec = store.load_spec(ws, eval_id)
    suite = load_suite(Path(spec.suite.path), spec.suite.name, spec.suite.builtin)
    found = {t.name: t for t in suite.tasks}
    for name, digest in spec.tasks.items():
        if name not in found:
            raise UsageError(f"eval {eval_id}: task {name} is no longer in {spec.suite.path}; start a new eval")
        if found[name].digest != digest:
            raise UsageError(f"eval {eval_id}: task {name} changed since the eval started; start a new eval")
    return _run(ws, spec, found, parallel or spec.parallel, on_result)


def show(ws: Workspace, eval_id: str) -> EvalOutcome:
    """An eval's results and figures, as recorded."""
    spec = store.load_spec(ws, eval_id)
    results = _ordered(spec, store.load_results(ws, eval_id))
    return EvalOutcome(spec, results, summarize(spec, results))


def _run(
    ws: Workspace,
    spec: EvalSpec,
    tasks: dict[str, Task],
    parallel: int,
    on_result: OnResult | None,
    backend: SandboxBackend | None = None,
) -> EvalOutcome:
    folder = store.eval_dir(ws, spec.id)
    with file_lock(folder / "lock", f"eval {spec.id}"):
        shutil.rmtree(folder / "work", ignore_errors=True)  # what a killed run of this eval left
        results = store.load_results(ws, spec.id)
        done = {(r.task, r.trial) for r in results}
        jobs = [TaskJob(ws.root, spec.id, tasks[name], trial, spec.models, backend) for name, trial in spec.jobs()]
        todo = [job for job in jobs if (job.task.name, job.trial) not in done]
        if todo:
            # [scale] engine: local threads here, or Ray tasks (nodes that see this workspace at the same path)
            pool: Executor = executor_for(ws, workers=parallel, local=backend is not None)
            # finished trials' workspaces are deleted behind the next trial, not in its way
            trash = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval-trash")
            try:
                for future in as_completed([pool.submit(run_task, job) for job in todo]):
                    result = future.result()
                    trash.submit(_empty, folder / "work" / TRASH)
                    store.append_result(ws, spec.id, result)
                    results.append(result)
                    summary = summarize(spec, results)
                    store.save_summary(ws, summary)
                    if on_result is not None:
                        on_result(result, summary)
            finally:
                pool.close(wait=False)  # on an interrupt: the queued trials never start
                trash.shutdown(wait=True)
                shutil.rmtree(folder / "work" / TRASH, ignore_errors=True)
        summary = summarize(spec, results)
        store.save_summary(ws, summary)
    return EvalOutcome(spec, _ordered(spec, results), summary)


def _empty(folder: Path) -> None:
    for path in folder.iterdir() if folder.is_dir() else ():
        shutil.rmtree(path, ignore_errors=True)


def _ordered(spec: EvalSpec, results: list[TaskResult]) -> list[TaskResult]:
    rank = {job: n for n, job in enumerate(spec.jobs())}
    return sorted(results, key=lambda r: rank.get((r.task, r.trial), len(rank)))


def run_task(job: TaskJob) -> TaskResult:
    """One trial of one task; never raises: a failure is the result's ``error`` class, named in one line."""
    started = time.monotonic()
    user = Workspace(job.workspace)
    work = store.eval_dir(user, job.eval_id) / "work"
    work.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{job.task.name}-{job.trial}-", dir=work))
    result = TaskResult(task=job.task.name, trial=job.trial, tags=job.task.spec.tags, digest=job.task.digest)
    try:
        result = _trial(user, job, folder, result)
    except Exception as exc:  # one task's crash is that task's result; the eval goes on with the others
        update = {"failure": FailureClass.ERROR, "reason": classify.one_line(f"{type(exc).__name__}: {exc}")}
        result = result.model_copy(update=update)
    finally:
        _discard(folder, work / TRASH)
    return result.model_copy(update={"seconds": round(time.monotonic() - started, 3)})


def _discard(folder: Path, trash: Path) -> None:
    """Move a finished trial's workspace to the trash (one rename), to be deleted off the eval's critical path."""
    try:
        trash.mkdir(exist_ok=True)
        folder.rename(trash / folder.name)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)


def _trial(user: Workspace, job: TaskJob, folder: Path, result: TaskResult) -> TaskResult:
    task = job.task
    logs = store.eval_dir(user, job.eval_id) / "tasks" / f"{task.name}-{job.trial}"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    ws, repo = throwaway.make(user, task, folder)
    start = sandbox_check.start_tree(user, ws, repo, generations.current(ws, repo).commit, task, job.backend)
    result = result.model_copy(update={"check_seconds": start.seconds})
    if start.passed:
        return result.model_copy(update={"invalid": True, "reason": "the check already passes on the start tree"})
    model_for, meter = wiring.task_models(user, job.bindings, task.name, logs / "model-calls.jsonl")
    events = logs / "events.log"

    def on_event(text: str) -> None:
        with events.open("a", encoding="utf-8") as handle:
            handle.write(text + "\n")

    began = time.monotonic()
    try:
        record = drive.refine(
            ws,
            repo,
            task.spec.goal,
            model_for=model_for,
            max_steps=task.spec.max_steps,
            on_event=on_event,
            backend=job.backend,
        )
    finally:
        metered = {"tokens_in": meter.tokens_in, "tokens_out": meter.tokens_out}
        spent = {"model_seconds": round(meter.seconds, 3), "run_seconds": round(time.monotonic() - began, 3)}
        result = result.model_copy(update=metered | spent)
    failure, reason = classify.classify_run(record, drive.run_events(ws, record.id), drive.plan_written(ws, record.id))
    final = generations.current(ws, repo)
    result = result.model_copy(
        update={
            "run": record.id,
            "run_status": record.status,
            "steps": len(record.steps),
            "attempts": sum(s.attempts for s in record.steps),
            "agents": [s.agent for s in record.steps],
            "generation": final.number,
            "failure": failure,
            "reason": reason,
            "attempt_failures": {k.value: n for k, n in record.failures.items()},
        }
    )
    if final.number == 0:  # nothing promoted: the tree is the start tree, whose check fails
        if failure is None:
            return result.model_copy(update={"failure": FailureClass.CHECK_FAILED, "reason": "the run changed nothing"})
        return result
    check = sandbox_check.run_check(ws, repo, final.commit, task, label=f"eval-check-{task.name}", backend=job.backend)
    result = result.model_copy(
        update={"check_exit": check.exit_code, "check_seconds": round(result.check_seconds + check.seconds, 3)}
    )
    if check.passed:
        return result.model_copy(update={"solved": True, "failure": None, "reason": ""})
    if failure is not None:
        return result  # the run failed a later step: that is the reason, not the check
    why = sandbox_check.last_line(check.tail) or f"exit {check.exit_code}"
    return result.model_copy(
        update={"failure": FailureClass.CHECK_FAILED, "reason": classify.one_line(f"check: {why}")}
    )
