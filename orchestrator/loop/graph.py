"""The refinement loop: one LangGraph StateGraph per run — nodes and routing only.

    plan ─► propose ─► apply ─► verify ─► judge ─► sign ─► review ─► advance ─► (next step | END)
               ▲          │        │         │                │
               └──────────┴────────┴─────────┴── retry ◄──────┘  (attempts left: feedback to propose)

Each node calls one function of the part that owns its stage (agents, gate) and keeps what it got
in a file of the attempt, so a node resumed after a kill reads it back instead of doing it again.
With several candidates per attempt (best of N), propose, apply and verify are :mod:`best_of`'s:
N proposals, each verified through the executor, one winner going on to judge.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from orchestrator.agents import run as agent
from orchestrator.agents.cards import LoadedCard, Plan, get_card, load_cards
from orchestrator.agents.edits import EditProposal, failure_of
from orchestrator.agents.grounding import PlanRejected
from orchestrator.agents.tools import propose_with_tool
from orchestrator.errors import ConvergeError, EditError, ModelError
from orchestrator.gate import candidates
from orchestrator.gate.apply import candidate, commit_proposal
from orchestrator.gate.judge import Judgement, judge
from orchestrator.gate.review import review
from orchestrator.gate.sign import sign
from orchestrator.gate.verify import verify
from orchestrator.loop import adr, failures, records
from orchestrator.loop.best_of import BestOf
from orchestrator.loop.state import (
    Deps,
    Outcome,
    RunState,
    RunStopped,
    attempt_file,
    attempts_allowed,
    changeset_id,
    current_step,
    feedback_on_tests,
    key,
    outcome,
)
from orchestrator.store import changesets, generations, runs
from orchestrator.store.reports import TestReport
from orchestrator.store.runs import FailureClass
from orchestrator.store.storage import atomic_write, atomic_write_json, read_json


class BudgetSpentError(ConvergeError):
    """A run budget (wall time, tokens) is spent: the run fails."""

    exit_code = 1


class Nodes:
    """The nodes of the graph: plain methods returning partial state updates."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.ws = deps.ws
        self.cards = load_cards(deps.ws)
        self.cfg = deps.ws.config()
        self.best = BestOf(deps, self.cards)

    def plan(self, s: RunState) -> RunState:
        plan_file = runs.run_dir(self.ws, s["run_id"]) / "plan.json"
        if not plan_file.exists():  # else resumed after the plan was made
            self.deps.on_event("plan: asking the planner")
            card = get_card(self.cards, "planner")
            current = generations.current(self.ws, s["repo"]).commit
            site, model = self.deps.site(s["repo"], current), self.deps.model_for(card)
            try:
                planned = agent.plan_for(site, card, model, self.cards, goal=s["goal"], max_steps=s["max_steps"])
            except (PlanRejected, ModelError) as exc:
                failures.plan_failed(self.ws, s["run_id"], str(exc))
                raise
            answer = planned.answer
            atomic_write_json(plan_file, answer.value.model_dump())
            records.model_event(self.deps, s, "planner", answer.completion)
            failures.planned(self.ws, s["run_id"], planned, plan_file.with_name("findings.json"))
            runs.update(self.ws, s["run_id"], steps_planned=len(answer.value.steps))
            adr.write_adr(self.ws, runs.load(self.ws, s["run_id"]))
            self.deps.on_event(f"plan: {len(answer.value.steps)} step(s)")
            tokens = answer.completion.tokens_out
        else:
            tokens = 0
        found = Plan.model_validate(read_json(plan_file))
        return {"steps": [st.model_dump() for st in found.steps], "step": 0, "attempt": 1, "tokens": tokens}

    def propose(self, s: RunState) -> RunState:
        self._budget_check(s)
        if self.best.applies_to(s):
            return self.best.propose(s)
        step = current_step(s)
        path = attempt_file(self.ws, s, "proposal.json")
        current = generations.current(self.ws, s["repo"])
        update: RunState = {
            "base": current.commit,
            "base_generation": current.number,
            "proposal": str(path),
            "candidate": 0,
        }
        if path.exists():
            return update
        card = get_card(self.cards, step.agent)
        self.deps.on_event(f"step {s['step'] + 1} attempt {s['attempt']}: {step.agent} proposes ({step.title})")
        site = self.deps.site(s["repo"], current.commit)
        if card.card.kind == "tool":
            found = propose_with_tool(site, card, title=step.title, goal=s["goal"], targets=step.targets)
            proposal = found.proposal or EditProposal(summary=found.note, edits=[])  # no edits: why, for the record
            atomic_write(path, proposal.model_dump_json(indent=2))
            return {**update, "outcome": Outcome.NONE} if found.proposal else self._no_change(proposal)
        feedback = [s["feedback"]] if s.get("feedback") else []
        try:
            answer = agent.propose_for(
                site, card, self.deps.model_for(card), goal=s["goal"], step=step, feedback=feedback
            )
        except ModelError as exc:
            atomic_write_json(path.with_suffix(".error.json"), {"error": str(exc)})
            return {**update, **failures.retry(str(exc), FailureClass.ANSWER_INVALID)}
        atomic_write(path, answer.value.model_dump_json(indent=2))
        records.model_event(self.deps, s, step.agent, answer.completion)
        return {**update, "tokens": answer.completion.tokens_out, "outcome": Outcome.NONE}

    def apply(self, s: RunState) -> RunState:
        if self.best.applies_to(s):
            return self.best.apply(s)
        proposal = EditProposal.model_validate_json(Path(s["proposal"]).read_text())
        if not proposal.edits:
            return self._no_change(proposal)
        cs_id = changeset_id(s)
        kept = candidates.kept_commit(self.ws.repo_path(s["repo"]), s["run_id"], s["step"] + 1, s["attempt"])
        if kept is not None:
            return {"commit": kept[1], "changeset": cs_id, "outcome": Outcome.NONE}
        cand = candidate(self.ws, s["repo"], key(s), s["base"])
        message = f"{current_step(s).title}\n\n{proposal.summary}"
        try:  # nothing lives in a worktree between nodes: verify checks the kept commit out afresh
            commit, applied = commit_proposal(self.ws, cand, proposal, message, cs_id)
        except EditError as exc:
            return failures.retry(str(exc), failure_of(exc))
        self.deps.on_event(f"  applied {len(applied.paths)} file(s): {', '.join(applied.paths)}")
        cand.keep("candidates", unkept=True)  # kept_commit above saw neither ref
        return {"commit": commit, "changeset": cs_id, "outcome": Outcome.NONE}

    def verify(self, s: RunState) -> RunState:
        if self.best.applies_to(s):
            return self.best.verify(s)
        report_file, image_file = attempt_file(self.ws, s, "tests.json"), attempt_file(self.ws, s, "image")
        if not (report_file.exists() and image_file.exists()):
            more = s["step"] + 1 < len(s["steps"])  # not for a retry: the retry node warms its own
            found = verify(
                self.ws,
                s["repo"],
                s["base"],
                s["commit"],
                key(s),
                pool=self.deps.sandboxes,
                backend=self.deps.sandbox_backend,
                full=self.cfg.run.full_suite_before_promote,
                warm_next=more,
                on_event=self.deps.on_event,
            )
            if found.repeat is not None:
                atomic_write_json(attempt_file(self.ws, s, "repro.json"), {"identical": found.reproducible})
                self.deps.on_event(f"  reproducible: {'yes' if found.reproducible else 'no'} ({found.repeat.summary})")
            records.keep_verification(found.report, found.image, found.baseline, partial(attempt_file, self.ws, s))
            records.tests_event(self.deps, s, found.report)
        report = TestReport.model_validate_json(report_file.read_text())
        self.deps.on_event(f"  tests: {report.summary}")
        if report.broken:
            self._drop_candidate(s)
            return {"report": str(report_file), **failures.retry(feedback_on_tests(report), FailureClass.TESTS_FAILED)}
        return {"report": str(report_file), "image": image_file.read_text(), "outcome": Outcome.NONE}

    def judge(self, s: RunState) -> RunState:
        verdict_file = attempt_file(self.ws, s, "verdict.json")
        if verdict_file.exists():
            found = Judgement.model_validate_json(verdict_file.read_text())
        else:
            report = TestReport.model_validate_json(Path(s["report"]).read_text())
            baseline = records.kept_baseline(attempt_file(self.ws, s, "baseline.json"))
            found = judge(
                self.ws,
                s["repo"],
                s["base"],
                s["commit"],
                report,
                who=records.provenance(self.deps, self.cards, s),
                baseline=baseline,
            )
            atomic_write(verdict_file, found.model_dump_json(indent=2))
            runs.run_log(self.ws, s["run_id"], "verdict", step=s["step"] + 1, attempt=s["attempt"], **found.summary)
        self.deps.on_event(f"  policy: {found.decision} (risk {found.risk})")
        if found.decision == "reject":
            self._drop_candidate(s)
            reasons = "; ".join(found.reasons) or "rejected"
            return failures.retry(f"Policy rejected the change: {reasons}", FailureClass.POLICY)
        return {"outcome": Outcome.NONE}

    def sign(self, s: RunState) -> RunState:
        if not changesets.exists(self.ws, s["changeset"]):
            number = s.get("base_generation")
            if number is None:  # a checkpoint written before propose noted it: find the base in the lineage
                number = next(g.number for g in generations.lineage(self.ws, s["repo"]) if g.commit == s["base"])
            sign(
                self.ws,
                s["repo"],
                s["changeset"],
                base=s["base"],
                base_generation=number,
                commit=s["commit"],
                report=TestReport.model_validate_json(Path(s["report"]).read_text()),
                judgement=Judgement.model_validate_json(attempt_file(self.ws, s, "verdict.json").read_text()),
                who=records.provenance(self.deps, self.cards, s),
                message=current_step(s).title,
                sandbox_image=s.get("image") or None,
            )
        self.deps.on_event(f"  signed changeset {s['changeset']}")
        return {}

    def review(self, s: RunState) -> RunState:
        cs = review(self.ws, changesets.load(self.ws, s["changeset"]), s["auto_approve"])
        if cs.status == "pending":
            runs.update(self.ws, s["run_id"], status="waiting_review", waiting_on=cs.id)
            self.deps.on_event(f"  waiting for review: converge changeset approve {cs.id}  (or reject)")
            interrupt({"changeset": cs.id, "verdict": str(cs.verdict), "risk": str(cs.risk)})
            cs = changesets.load(self.ws, cs.id)
            runs.update(self.ws, s["run_id"], status="running", waiting_on=None)
        if cs.status == "rejected":
            return failures.retry(
                f"A reviewer rejected the change: {cs.reason}", FailureClass.REJECTED, Outcome.REJECTED
            )
        if cs.status != "approved":
            return {"outcome": Outcome.RETRY, "feedback": "The change was not approved."}
        self.deps.on_event(f"  promoted: generation {cs.generation}")
        return {"outcome": Outcome.PROMOTED}

    def advance(self, s: RunState) -> RunState:
        step = current_step(s)
        ended = outcome(s)
        if ended in (Outcome.NONE, Outcome.RETRY):
            ended = Outcome.FAILED
        failed = failures.record(self.ws, s) if ended in (Outcome.FAILED, Outcome.REJECTED) else s.get("failures", [])
        cs = s.get("changeset") if ended in (Outcome.PROMOTED, Outcome.REJECTED) else None
        gen = changesets.load(self.ws, cs).generation if cs and changesets.exists(self.ws, cs) else None
        done = runs.StepOutcome(
            step=s["step"] + 1,
            title=step.title,
            agent=step.agent,
            outcome=ended.value,
            attempts=s["attempt"],
            changeset=cs,
            generation=gen,
            reason="" if ended == Outcome.PROMOTED else s.get("feedback", ""),
            failures=[FailureClass(f) for f in failed],
        )
        self.deps.on_event(f"step {s['step'] + 1}: {ended.value}")
        so_far = [runs.StepOutcome.model_validate(d) for d in s.get("done", [])] + [done]
        runs.update(  # `converge runs` shows progress while the run goes on, or after it was killed
            self.ws,
            s["run_id"],
            steps=so_far,
            steps_planned=len(s["steps"]),
            changesets=[d.changeset for d in so_far if d.changeset],
            tokens=s.get("tokens", 0),
        )
        reset: RunState = {"step": s["step"] + 1, "attempt": 1, "feedback": "", "changeset": "", "commit": ""}
        reset |= {"failure": "", "failures": [], "candidate": 0}
        return {**reset, "done": [done.model_dump(mode="json")], "outcome": Outcome.NONE}

    def retry(self, s: RunState) -> RunState:
        reason = (s.get("feedback") or "no reason given").splitlines()[0]
        self.deps.on_event(f"  attempt {s['attempt']} failed: {reason}")
        if self.deps.sandboxes is not None:
            self.deps.sandboxes.warm(s["base"])  # ready by the time the next proposal is, unless one is on its way
        return {"attempt": s["attempt"] + 1, "failure": "", "failures": failures.record(self.ws, s)}

    # --- helpers of the nodes ---------------------------------------------------------------------

    def _no_change(self, proposal: EditProposal) -> RunState:
        """A step with nothing to change ends so, saying why (a tool's dry run found nothing)."""
        self.deps.on_event(f"  {proposal.summary or 'no change'}")
        return {"outcome": Outcome.NO_CHANGE, "feedback": proposal.summary}

    def _budget_check(self, s: RunState) -> None:
        if time.time() - s["started"] > self.cfg.run.wall_time:
            raise BudgetSpentError(f"wall time budget of {self.cfg.run.wall_time:.0f}s spent")
        if s.get("tokens", 0) > self.cfg.run.max_tokens:
            raise BudgetSpentError(f"token budget of {self.cfg.run.max_tokens} spent")

    def _drop_candidate(self, s: RunState) -> None:
        cand = candidate(self.ws, s["repo"], key(s), s["base"])
        cand.commit_sha = s["commit"]
        cand.keep("failed")


# --- routing --------------------------------------------------------------------------------------


def _stoppable(node: Callable[[RunState], RunState], stop: Callable[[], bool]) -> Any:
    """``node``, unless a stop was asked for: then the run ends at the last checkpoint (resume goes on from it)."""

    def run(s: RunState) -> RunState:
        if stop():
            raise RunStopped
        return node(s)

    return run


def _after(node: str, cards: dict[str, LoadedCard]) -> Callable[[RunState], str]:
    nexts = {"propose": "apply", "apply": "verify", "verify": "judge", "judge": "sign"}

    def route(s: RunState) -> str:
        ended = outcome(s)
        if ended == Outcome.NO_CHANGE:
            return "advance"
        if ended in (Outcome.RETRY, Outcome.REJECTED):
            return "retry" if s["attempt"] < attempts_allowed(cards, s) else "advance"
        return nexts[node]

    return route


def _after_review(cards: dict[str, LoadedCard]) -> Callable[[RunState], str]:
    def route(s: RunState) -> str:
        if outcome(s) in (Outcome.RETRY, Outcome.REJECTED) and s["attempt"] < attempts_allowed(cards, s):
            return "retry"
        return "advance"

    return route


def build_graph(deps: Deps) -> Any:
    """The uncompiled StateGraph of a refinement run, its nodes bound to ``deps``."""
    n = Nodes(deps)
    g = StateGraph(RunState)
    for name in ("plan", "propose", "apply", "verify", "judge", "sign", "review", "advance", "retry"):
        g.add_node(name, _stoppable(getattr(n, name), deps.stop_requested))
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", lambda s: END if s.get("plan_only") else "propose")
    for node in ("propose", "apply", "verify", "judge"):
        g.add_conditional_edges(node, _after(node, n.cards))
    g.add_edge("sign", "review")
    g.add_conditional_edges("review", _after_review(n.cards))
    g.add_edge("retry", "propose")
    g.add_conditional_edges("advance", _after_step(n.cfg.run.on_step_failure))
    return g


def _after_step(on_failure: str) -> Callable[[RunState], str]:
    def route(s: RunState) -> str:
        last = s["done"][-1] if s.get("done") else {}
        if on_failure == "stop" and last.get("outcome") in (Outcome.FAILED, Outcome.REJECTED):
            return END  # later steps usually build on this one
        return "propose" if s["step"] < len(s["steps"]) else END

    return route
