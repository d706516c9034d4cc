"""The refinement loop: one LangGraph StateGraph per run, checkpointed in `.converge/runs.sqlite`.

    plan ─► propose ─► apply ─► verify ─► judge ─► sign ─► review ─► advance ─► (next step | END)
               ▲          │        │         │                │
               └──────────┴────────┴─────────┴── retry ◄──────┘  (attempts left: feedback to propose)
                                                   └─ give_up ─► advance  (budget spent: step failed)

Nodes are plain functions returning partial state updates; the state holds ids, paths and
digests only, big things (proposals, reports, the plan) live in files under
``cache/runs/<run>/``. Every side effect is keyed by run/step/attempt so that a run killed at
any point and resumed repeats none: proposals are read back from their file, the candidate
commit from its ref, the changeset from the store, the generation from the lineage.

The graph calls the pieces (agents, models, gate, sandbox); the pieces never call the graph.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from orchestrator.agents import cards
from orchestrator.agents.cards import LoadedCard, Plan
from orchestrator.agents.edits import EditProposal
from orchestrator.errors import ConvergeError, EditError, ModelError, UsageError
from orchestrator.gate import candidates, stages
from orchestrator.loop import attempts, runs
from orchestrator.loop.attempts import Deps, ModelFactory, RunState
from orchestrator.store import changesets, generations
from orchestrator.store.reports import TestReport
from orchestrator.store.storage import atomic_write, atomic_write_json, file_lock, read_json
from orchestrator.store.workspace import Workspace

__all__ = ["CHECKPOINTS", "Deps", "ModelFactory", "RunResult", "RunState", "build_graph", "resume_run", "start_run"]

CHECKPOINTS = "runs.sqlite"


# --- the graph ------------------------------------------------------------------------------


class _Nodes:
    """The nodes of the graph: plain methods returning partial state updates."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.ws = deps.ws
        self.cards = cards.load_cards(deps.ws)
        self.cfg = deps.ws.config()

    def budget_check(self, s: RunState) -> None:
        if time.time() - s["started"] > self.cfg.run.wall_time:
            raise BudgetSpentError(f"wall time budget of {self.cfg.run.wall_time:.0f}s spent")
        if s.get("tokens", 0) > self.cfg.run.max_tokens:
            raise BudgetSpentError(f"token budget of {self.cfg.run.max_tokens} spent")

    def plan(self, s: RunState) -> RunState:
        plan_file = runs.run_dir(self.ws, s["run_id"]) / "plan.json"
        if plan_file.exists():  # resumed after the plan was made
            found = Plan.model_validate(read_json(plan_file))
            return {"steps": [st.model_dump() for st in found.steps], "step": 0, "attempt": 1}
        self.deps.on_event("plan: asking the planner")
        card = cards.get_card(self.cards, "planner")
        current = generations.current(self.ws, s["repo"]).commit
        repo_map = attempts.repo_map(self.ws, s["repo"], s["goal"], current)
        prompt = cards.build_prompt(card.card, goal=s["goal"], repo_map=repo_map)
        # deterministic tool agents first: cheaper and safer, so offered before model agents
        editors = sorted(
            (n for n, c in self.cards.items() if c.card.role in ("coder", "tool")),
            key=lambda n: (self.cards[n].card.kind != "tool", n),
        )
        schema = attempts.plan_schema(editors, s["max_steps"])
        request = attempts.request(card, prompt, schema)
        from orchestrator.models.runtime import complete_json

        value, completion = complete_json(
            self.deps.model_for(card), request, schema, retries=card.card.budgets.attempts
        )
        found = cards.check_plan(Plan.model_validate(value), self.cards)
        found = found.model_copy(update={"steps": found.steps[: s["max_steps"]]})
        atomic_write_json(plan_file, found.model_dump())
        _model_event(self.deps, s, "planner", completion)
        _record(self.ws, s, steps_planned=len(found.steps))
        runs.write_adr(self.ws, runs.load(self.ws, s["run_id"]))
        self.deps.on_event(f"plan: {len(found.steps)} step(s)")
        return {
            "steps": [st.model_dump() for st in found.steps],
            "step": 0,
            "attempt": 1,
            "tokens": completion.tokens_out,
        }

    def propose(self, s: RunState) -> RunState:
        self.budget_check(s)
        step = attempts.current_step(s)
        path = attempts.attempt_file(self.ws, s, "proposal.json")
        current = generations.current(self.ws, s["repo"])
        base = current.commit
        update: RunState = {
            "base": base,
            "base_generation": current.number,
            "proposal": str(path),
            "feedback": s.get("feedback", ""),
        }
        if path.exists():
            return update
        card = cards.get_card(self.cards, step.agent)
        self.deps.on_event(f"step {s['step'] + 1} attempt {s['attempt']}: {step.agent} proposes ({step.title})")
        if card.card.kind == "tool":
            proposal = attempts.tool_proposal(self.deps, s, card, base)
            if proposal is None:
                atomic_write_json(path, {"summary": "no change", "edits": []})
                return {**update, "outcome": "no-change"}
            atomic_write(path, proposal.model_dump_json(indent=2))
            return update
        repo_map = attempts.repo_map(self.ws, s["repo"], s["goal"], base)
        prompt = cards.build_prompt(
            card.card,
            goal=s["goal"],
            repo_map=repo_map,
            step=step,
            feedback=attempts.with_files(s.get("feedback", ""), self.ws.repo_path(s["repo"]), step.targets, base),
        )
        from orchestrator.models.runtime import complete_json

        try:
            schema = attempts.edits_schema()
            value, completion = complete_json(
                self.deps.model_for(card), attempts.request(card, prompt, schema), schema, retries=1
            )
            proposal = EditProposal.model_validate(value)
        except (ModelError, ValidationError) as exc:
            atomic_write_json(path.with_suffix(".error.json"), {"error": str(exc)})
            return {**update, "outcome": "retry", "feedback": attempts.clip(str(exc))}
        atomic_write(path, proposal.model_dump_json(indent=2))
        _model_event(self.deps, s, step.agent, completion)
        return {**update, "tokens": completion.tokens_out, "outcome": ""}

    def apply(self, s: RunState) -> RunState:
        if Path(s["proposal"]).exists() and not json.loads(Path(s["proposal"]).read_text()).get("edits"):
            return {"outcome": "no-change"}
        cs_id = attempts.changeset_id(s)
        kept = candidates.kept_commit(self.ws.repo_path(s["repo"]), s["run_id"], s["step"] + 1, s["attempt"])
        if kept is not None:
            return {"commit": kept[1], "changeset": cs_id, "outcome": ""}
        proposal = EditProposal.model_validate_json(Path(s["proposal"]).read_text())
        cand = attempts.candidate(self.ws, s, s["base"])
        message = f"{attempts.current_step(s).title}\n\n{proposal.summary}"
        try:  # nothing lives in a worktree between nodes: verify checks the kept commit out afresh
            commit, applied = stages.commit_proposal(self.ws, cand, proposal, message, cs_id)
        except EditError as exc:
            return {"outcome": "retry", "feedback": attempts.clip(str(exc))}
        self.deps.on_event(f"  applied {len(applied.paths)} file(s): {', '.join(applied.paths)}")
        cand.keep("candidates", unkept=True)  # kept_commit above saw neither ref
        return {"commit": commit, "changeset": cs_id, "outcome": ""}

    def verify(self, s: RunState) -> RunState:
        report_file = attempts.attempt_file(self.ws, s, "tests.json")
        image_file = attempts.attempt_file(self.ws, s, "image")
        if report_file.exists() and image_file.exists():
            report = TestReport.model_validate_json(report_file.read_text())
        else:
            more = s["step"] + 1 < len(s["steps"])  # not for a retry: the retry node warms its own, behind the proposal
            report, image = attempts.run_tests(self.deps, s, self.cfg.run.full_suite_before_promote, warm_next=more)
            atomic_write(image_file, image)
            atomic_write(report_file, report.model_dump_json(indent=2))
            cmd = report.command
            runs.run_log(
                self.ws,
                s["run_id"],
                "tests",
                step=s["step"] + 1,
                attempt=s["attempt"],
                summary=report.summary,
                selection=report.selection,
                argv=cmd.argv if cmd else None,
                exit_code=cmd.exit_code if cmd else None,
                seconds=cmd.duration if cmd else None,
            )
        image = image_file.read_text()
        self.deps.on_event(f"  tests: {report.summary}")
        if report.broken:
            attempts.move_candidate(self.ws, s, "failed")
            return {"report": str(report_file), "outcome": "retry", "feedback": attempts.test_feedback(report)}
        return {"report": str(report_file), "image": image, "outcome": ""}

    def judge(self, s: RunState) -> RunState:
        verdict_file = attempts.attempt_file(self.ws, s, "verdict.json")
        report = TestReport.model_validate_json(Path(s["report"]).read_text())
        if verdict_file.exists():
            found = read_json(verdict_file)
        else:
            who = attempts.provenance(self.deps, self.cards, s)
            j = stages.judge(self.ws, s["repo"], s["base"], s["commit"], report, who=who)
            found = {"decision": j.decision, "risk": j.risk, "reasons": j.reasons, "detail": j.detail}
            atomic_write_json(verdict_file, found)
            runs.run_log(
                self.ws,
                s["run_id"],
                "verdict",
                step=s["step"] + 1,
                attempt=s["attempt"],
                **{k: found[k] for k in ("decision", "risk", "reasons")},
            )
        self.deps.on_event(f"  policy: {found['decision']} (risk {found['risk']})")
        if found["decision"] == "reject":
            attempts.move_candidate(self.ws, s, "failed")
            reasons = "; ".join(found["reasons"]) or "rejected"
            return {"outcome": "retry", "feedback": attempts.clip(f"Policy rejected the change: {reasons}")}
        return {"outcome": ""}

    def sign(self, s: RunState) -> RunState:
        cs_id = s["changeset"]
        if not changesets.exists(self.ws, cs_id):
            report = TestReport.model_validate_json(Path(s["report"]).read_text())
            found = read_json(attempts.attempt_file(self.ws, s, "verdict.json"))
            judgement = stages.Judgement(found["decision"], found["risk"], found["reasons"], found["detail"])
            number = s.get("base_generation")
            if number is None:  # a checkpoint written before propose noted it: find the base in the lineage
                number = next(g.number for g in generations.lineage(self.ws, s["repo"]) if g.commit == s["base"])
            message = attempts.current_step(s).title
            stages.sign(
                self.ws,
                s["repo"],
                cs_id,
                base=s["base"],
                base_generation=number,
                commit=s["commit"],
                report=report,
                judgement=judgement,
                who=attempts.provenance(self.deps, self.cards, s),
                message=message,
                sandbox_image=s.get("image") or None,
            )
        self.deps.on_event(f"  signed changeset {cs_id}")
        return {}

    def review(self, s: RunState) -> RunState:
        cs = stages.review(self.ws, changesets.load(self.ws, s["changeset"]), s["auto_approve"])
        if cs.status == "pending":
            _record(self.ws, s, status="waiting_review", waiting_on=cs.id)
            self.deps.on_event(f"  waiting for review: converge changeset approve {cs.id}  (or reject)")
            from langgraph.types import interrupt

            interrupt({"changeset": cs.id, "verdict": cs.verdict, "risk": cs.risk})
            cs = changesets.load(self.ws, cs.id)
            _record(self.ws, s, status="running", waiting_on=None)
        if cs.status == "rejected":
            return {"outcome": "rejected", "feedback": attempts.clip(f"A reviewer rejected the change: {cs.reason}")}
        if cs.status != "approved":
            return {"outcome": "retry", "feedback": "The change was not approved."}
        self.deps.on_event(f"  promoted: generation {cs.generation}")
        return {"outcome": "promoted"}

    def advance(self, s: RunState) -> RunState:
        step = attempts.current_step(s)
        outcome = s.get("outcome") or "failed"
        if outcome == "retry":
            outcome = "failed"
        cs = s.get("changeset") if outcome in ("promoted", "rejected") else None
        gen = changesets.load(self.ws, cs).generation if cs and changesets.exists(self.ws, cs) else None
        done = {
            "step": s["step"] + 1,
            "title": step.title,
            "agent": step.agent,
            "outcome": outcome,
            "attempts": s["attempt"],
            "changeset": cs,
            "generation": gen,
            "reason": "" if outcome == "promoted" else s.get("feedback", "")[:500],
        }
        self.deps.on_event(f"step {s['step'] + 1}: {outcome}")
        so_far = [runs.StepOutcome.model_validate(d) for d in [*s.get("done", []), done]]
        _record(  # `converge runs` shows progress while the run goes on, or after it was killed
            self.ws,
            s,
            steps=so_far,
            steps_planned=len(s["steps"]),
            changesets=[d.changeset for d in so_far if d.changeset],
            tokens=s.get("tokens", 0),
        )
        return {
            "done": [done],
            "step": s["step"] + 1,
            "attempt": 1,
            "feedback": "",
            "outcome": "",
            "changeset": "",
            "commit": "",
        }

    def retry(self, s: RunState) -> RunState:
        self.deps.on_event(f"  attempt {s['attempt']} failed: {s.get('feedback', '').splitlines()[0][:200]}")
        if self.deps.sandboxes is not None:
            self.deps.sandboxes.warm(s["base"])  # ready by the time the next proposal is, unless one is on its way
        return {"attempt": s["attempt"] + 1}


def _after(node: str, cards: dict[str, LoadedCard]) -> Callable[[RunState], str]:
    nexts = {"propose": "apply", "apply": "verify", "verify": "judge", "judge": "sign"}

    def route(s: RunState) -> str:
        outcome = s.get("outcome", "")
        if outcome == "no-change":
            return "advance"
        if outcome in ("retry", "rejected"):
            return "retry" if s["attempt"] < attempts.attempts(cards, s) else "advance"
        return nexts[node]

    return route


def _after_review(cards: dict[str, LoadedCard]) -> Callable[[RunState], str]:
    def route(s: RunState) -> str:
        if s.get("outcome") in ("retry", "rejected") and s["attempt"] < attempts.attempts(cards, s):
            return "retry"
        return "advance"

    return route


def build_graph(deps: Deps) -> Any:
    """The uncompiled StateGraph of a refinement run, its nodes bound to ``deps``."""
    from langgraph.graph import END, START, StateGraph

    n = _Nodes(deps)
    g = StateGraph(RunState)
    for name in ("plan", "propose", "apply", "verify", "judge", "sign", "review", "advance", "retry"):
        g.add_node(name, getattr(n, name))
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", lambda s: END if s.get("plan_only") else "propose")
    for node in ("propose", "apply", "verify", "judge"):
        g.add_conditional_edges(node, _after(node, n.cards))
    g.add_edge("sign", "review")
    g.add_conditional_edges("review", _after_review(n.cards))
    g.add_edge("retry", "propose")
    g.add_conditional_edges("advance", lambda s: "propose" if s["step"] < len(s["steps"]) else END)
    return g


class BudgetSpentError(ConvergeError):
    """A run budget (wall time, tokens) is spent: the run fails."""

    exit_code = 1


def _model_event(deps: Deps, s: RunState, agent: str, completion: Any) -> None:
    rate = completion.tokens_out / completion.seconds if completion.seconds > 0 else 0.0
    deps.on_event(f"  model ({agent}): {completion.tokens_out} tokens in {completion.seconds:.1f}s ({rate:.1f} tok/s)")
    runs.run_log(
        deps.ws,
        s["run_id"],
        "model",
        agent=agent,
        step=s.get("step", 0) + 1,
        attempt=s.get("attempt", 1),
        tokens_in=completion.tokens_in,
        tokens_out=completion.tokens_out,
        seconds=round(completion.seconds, 3),
    )


def _record(ws: Workspace, s: RunState, **changes: Any) -> None:
    record = runs.load(ws, s["run_id"])
    runs.save(ws, record.model_copy(update=changes))


# --- running ---------------------------------------------------------------------------------


@contextmanager
def checkpointer(ws: Workspace) -> Iterator[Any]:
    """The SQLite checkpointer of the workspace, owning its connection."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(ws.state / CHECKPOINTS, check_same_thread=False, timeout=30)
    try:
        _write_ahead_log(conn)
        # a commit reaches the OS without waiting for the disk: a killed Converge loses no
        # checkpoint; a power cut may lose the last few, and resume redoes those (idempotent) nodes
        conn.execute("PRAGMA synchronous=NORMAL")
        saver = SqliteSaver(conn)
        saver.setup()
        yield saver
    finally:
        conn.close()


def _write_ahead_log(conn: sqlite3.Connection, patience: float = 30.0) -> None:
    """Put the checkpoint database in WAL mode (it stays so, in the file), waiting out other processes.

    Switching needs the database to itself, and SQLite answers "database is locked" at once,
    without its busy timeout, when two runs starting together both try: the one refused
    tries again until the other has switched it (or ``patience`` runs out).
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class RunResult(BaseModel):
    """How a run ended, for the command line."""

    record: runs.RunRecord
    exit_code: int


def start_run(
    deps: Deps,
    repo: str,
    goal: str,
    *,
    plan_only: bool = False,
    max_steps: int | None = None,
    auto_approve: bool = False,
    run_id: str | None = None,
) -> RunResult:
    """Start a run of ``goal`` on ``repo`` and drive it until it ends or waits for review."""
    ws = deps.ws
    ws.repo(repo)
    if not goal.strip():
        raise UsageError("--goal: give the goal in words")
    cfg = ws.config()
    rid = run_id or runs.new_run_id()
    steps = max_steps if max_steps is not None else cfg.run.max_steps
    if steps <= 0:
        raise UsageError(f"--max-steps {steps}: must be at least 1")
    cards.load_cards(ws)  # a broken card is reported before a run record exists that could never go on
    record = runs.RunRecord(id=rid, repo=repo, goal=goal, pid=_pid(), started=runs.now())
    state: RunState = {
        "run_id": rid,
        "repo": repo,
        "goal": goal,
        "auto_approve": auto_approve,
        "plan_only": plan_only,
        "max_steps": steps,
        "started": time.time(),
        "tokens": 0,
        "done": [],
    }
    with _driving(ws, rid):
        runs.save(ws, record)
        deps.on_event(f"run {rid}: {repo}: {goal}")
        return _drive(deps, rid, state)


def resume_run(deps: Deps, run_id: str) -> RunResult:
    """Continue a run from its last checkpoint (after a kill, or after a review decision).

    A run another process is driving is refused (ConflictError, naming that process).
    """
    runs.load(deps.ws, run_id)  # an unknown id is named before any lock is taken
    with _driving(deps.ws, run_id):
        record = runs.load(deps.ws, run_id)
        if record.status in ("completed", "failed"):
            return RunResult(record=record, exit_code=0 if record.status == "completed" else 1)
        if record.status == "waiting_review" and record.waiting_on:
            cs = changesets.load(deps.ws, record.waiting_on)
            if cs.status == "pending":
                return RunResult(record=record, exit_code=0)
        runs.save(deps.ws, record.model_copy(update={"status": "running", "pid": _pid()}))
        deps.on_event(f"run {run_id}: resuming")
        return _drive(deps, run_id, None)


@contextmanager
def _driving(ws: Workspace, run_id: str) -> Iterator[None]:
    """Hold the run's lock while driving it: one process at a time, a second is told which one has it."""
    with file_lock(ws.state / "locks" / f"run-{run_id}.lock", f"run {run_id}"):
        yield


def _drive(deps: Deps, run_id: str, state: RunState | None) -> RunResult:
    from langgraph.types import Command

    ws = deps.ws
    config: Any = {"configurable": {"thread_id": run_id}, "recursion_limit": 500}
    with _sandboxes(deps, run_id, state) as run_deps, checkpointer(ws) as saver:  # the first sandbox starts first
        graph = build_graph(run_deps).compile(checkpointer=saver)
        payload: Any = state
        if state is None:
            snapshot = graph.get_state(config)
            if not snapshot.next and not snapshot.values:
                raise UsageError(f"run {run_id} has no checkpoint to resume from")
            pending = [i for t in snapshot.tasks for i in t.interrupts]
            payload = Command(resume="decided") if pending else None
        try:
            graph.invoke(payload, config, durability="sync")
        except ConvergeError as exc:
            return _finish(ws, run_id, graph.get_state(config).values, "failed", str(exc))
        snapshot = graph.get_state(config)
        values: RunState = snapshot.values
        if snapshot.next:
            record = runs.load(ws, run_id)
            return RunResult(record=record, exit_code=0)
        return _finish(ws, run_id, values, "completed", "")


@contextmanager
def _sandboxes(deps: Deps, run_id: str, state: RunState | None) -> Iterator[Deps]:
    """``deps`` with the run's sandbox pool, its first sandbox starting now (while the planner thinks).

    Converge's own repo verifies through selfhost, which starts its own sandboxes: no pool.
    """
    from orchestrator.sandbox.pool import SandboxPool

    repo = state["repo"] if state is not None else runs.load(deps.ws, run_id).repo
    if deps.sandboxes is not None or deps.ws.repo(repo).is_self or (state or {}).get("plan_only"):
        yield deps
        return
    with SandboxPool(deps.ws, repo, backend=deps.sandbox_backend) as pool:
        pool.warm(generations.current(deps.ws, repo).commit)
        yield replace(deps, sandboxes=pool)


def _finish(ws: Workspace, run_id: str, values: Any, status: runs.RunStatus, reason: str) -> RunResult:
    record = runs.load(ws, run_id)
    done = [runs.StepOutcome.model_validate(d) for d in values.get("done", [])]
    promoted = [d for d in done if d.outcome == "promoted"]
    failed = [d for d in done if d.outcome in ("failed", "rejected")]
    if status == "completed" and failed:  # what was promoted stays promoted; the run did not do all it planned
        first = failed[0]
        status, reason = "failed", f"step {first.step} ({first.title}) {first.outcome}: {first.reason}"[:500]
    elif status == "completed" and done and not promoted and not all(d.outcome == "no-change" for d in done):
        status, reason = "failed", "no step was promoted"
    updated = record.model_copy(
        update={
            "status": status,
            "reason": reason,
            "steps": done,
            "steps_planned": len(values.get("steps", [])),
            "changesets": [d.changeset for d in done if d.changeset],
            "tokens": values.get("tokens", 0),
            "waiting_on": None,
            "seconds": round(time.time() - values.get("started", time.time()), 1),
        }
    )
    runs.save(ws, updated)
    runs.write_adr(ws, updated)
    runs.run_log(ws, run_id, "run", status=status, reason=reason, changesets=updated.changesets)
    return RunResult(record=updated, exit_code=0 if status == "completed" else 1)


def _pid() -> int:
    return os.getpid()
