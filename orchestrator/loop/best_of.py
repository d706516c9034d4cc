"""Best of N: several candidates per attempt, verified side by side; the best one goes on alone.

With ``candidates`` N above 1 in the run's state (``--candidates``, ``run.candidates``) a model
agent's step is asked N times: the card's sampling, then other seeds at warmer temperatures.
Each answer becomes its own candidate (step ``3c2`` is candidate 2 of step 3, kept under
``refs/converge/candidates/<run>/3c2-<attempt>``), and its verification goes to the executor
as soon as it is committed, while the model writes the next one. The verify node waits for them
all, ranks them (:mod:`orchestrator.gate.rank`) and keeps the ranking beside the attempt; the
winner goes on to judge, sign and review as a lone candidate does, the others stay under their
refs and are named in the run's ADR. Each file is keyed by candidate, so a resumed run asks,
applies and verifies nothing twice, and the ranking, written once, names the same winner.
"""

from __future__ import annotations

from concurrent.futures import Future, wait
from functools import partial

from orchestrator.agents import run as agent
from orchestrator.agents.cards import LoadedCard, get_card
from orchestrator.agents.edits import EditProposal, failure_of
from orchestrator.errors import EditError, ModelError
from orchestrator.gate import candidates
from orchestrator.gate.apply import candidate, commit_proposal
from orchestrator.gate.judge import judge
from orchestrator.gate.rank import Entrant, Ranking, diff_lines, rank
from orchestrator.gate.verify_job import Verified, candidate_job, verify_candidate
from orchestrator.loop import failures, records
from orchestrator.loop.state import (
    Deps,
    Outcome,
    RunState,
    attempt_file,
    candidate_file,
    candidate_key,
    changeset_id,
    current_step,
    feedback_on_tests,
)
from orchestrator.scale.base import Executor
from orchestrator.scale.factory import is_remote
from orchestrator.store import generations, runs
from orchestrator.store.reports import TestReport
from orchestrator.store.runs import FailureClass
from orchestrator.store.storage import atomic_write, atomic_write_json, read_json


class BestOf:
    """The propose, apply and verify nodes of an attempt with several candidates."""

    def __init__(self, deps: Deps, cards: dict[str, LoadedCard]) -> None:
        self.deps = deps
        self.ws = deps.ws
        self.cards = cards
        self.cfg = deps.ws.config()
        self._inflight: dict[str, Future[Verified]] = {}  # by candidate label; gone with the process

    def applies_to(self, s: RunState) -> bool:
        """Several candidates are wanted and the step's agent is a model (a tool would give N equal ones)."""
        card = self.cards.get(current_step(s).agent)
        return s.get("candidates", 1) > 1 and card is not None and card.card.kind == "model"

    # --- the nodes ---------------------------------------------------------------------------------

    def propose(self, s: RunState) -> RunState:
        current = generations.current(self.ws, s["repo"])
        update: RunState = {"base": current.commit, "base_generation": current.number, "candidate": 0}
        s = {**s, **update}
        step, count = current_step(s), s["candidates"]
        card = get_card(self.cards, step.agent)
        site, model = self.deps.site(s["repo"], current.commit), self.deps.model_for(card)
        feedback = [s["feedback"]] if s.get("feedback") else []
        tokens = 0
        for index in range(1, count + 1):
            path = candidate_file(self.ws, s, index, "proposal.json")
            if not path.exists() and not path.with_suffix(".error.json").exists():
                n, a = s["step"] + 1, s["attempt"]
                self.deps.on_event(f"step {n} attempt {a}: {step.agent} proposes candidate {index} of {count}")
                try:
                    answer = agent.propose_for(
                        site, card, model, goal=s["goal"], step=step, feedback=feedback, variant=index - 1
                    )
                except ModelError as exc:
                    failed = FailureClass.ANSWER_INVALID.value
                    atomic_write_json(path.with_suffix(".error.json"), {"error": str(exc), "failure": failed})
                    continue
                atomic_write(path, answer.value.model_dump_json(indent=2))
                records.model_event(self.deps, s, step.agent, answer.completion)
                tokens += answer.completion.tokens_out
            self._start(s, index)  # its tests run while the model writes the next one
        return {**update, "tokens": tokens, **self._made(s)}

    def apply(self, s: RunState) -> RunState:
        for index in range(1, s["candidates"] + 1):
            self._start(s, index)  # after a resume: what the propose node had not handed on
        return self._made(s)

    def verify(self, s: RunState) -> RunState:
        ranking_file = attempt_file(self.ws, s, "ranking.json")
        if not ranking_file.exists():
            atomic_write(ranking_file, self._rank(s).model_dump_json(indent=2))
        ranking = Ranking.model_validate_json(ranking_file.read_text())
        if ranking.winner is None:
            for standing in ranking.standings:
                if standing.commit is not None:
                    self._keep_failed(s, standing.index, standing.commit)
            return self._feedback(s, ranking)
        won = ranking.standing(ranking.winner)
        self.deps.on_event(f"  candidate {won.index} of {s['candidates']} goes on ({won.tests})")
        report = candidate_file(self.ws, s, won.index, "tests.json")
        image = candidate_file(self.ws, s, won.index, "image").read_text()
        return {
            "candidate": won.index,
            "commit": str(won.commit),
            "changeset": changeset_id(s, won.index),
            "report": str(report),
            "image": image,
            "outcome": Outcome.NONE,
        }

    # --- the candidates ----------------------------------------------------------------------------

    def _made(self, s: RunState) -> RunState:
        """Go on if any candidate has a commit; else try again, or the step is done (no edits at all)."""
        found = [self._commit(s, i) for i in range(1, s["candidates"] + 1)]
        if any(found):
            return {"outcome": Outcome.NONE}
        errors = [self._error(s, i) for i in range(1, s["candidates"] + 1)]
        if all(e == "no edits" for e, _ in errors):
            return {"outcome": Outcome.NO_CHANGE}
        error, failed = next((e, f) for e, f in errors if e != "no edits")
        return failures.retry(error, failed)

    def _start(self, s: RunState, index: int) -> None:
        """Commit candidate ``index`` (once) and hand its verification to the executor (once)."""
        label = candidate_key(s, index).label
        tests = candidate_file(self.ws, s, index, "tests.json")
        if label in self._inflight or tests.exists():
            return
        commit = self._commit(s, index) or self._apply(s, index)
        if commit is None:
            return
        executor = self._executor()
        job = candidate_job(
            self.ws,
            s["repo"],
            s["base"],
            commit,
            candidate_key(s, index),
            full=self.cfg.run.full_suite_before_promote,
            remote=is_remote(executor),
        )
        future = executor.submit(partial(verify_candidate, backend=self.deps.sandbox_backend), job)
        future.add_done_callback(lambda done: self._record(s, index, done))
        self._inflight[label] = future

    def _record(self, s: RunState, index: int, done: Future[Verified]) -> None:
        """Keep a verification as soon as it ends, whatever the node is doing (a kill loses no result)."""
        if done.cancelled() or done.exception() is not None:
            return  # the verify node meets the failure
        found = done.result()
        records.keep_verification(found.report, found.image, found.baseline, partial(candidate_file, self.ws, s, index))

    def _apply(self, s: RunState, index: int) -> str | None:
        error_file = candidate_file(self.ws, s, index, "apply.json")
        proposal_file = candidate_file(self.ws, s, index, "proposal.json")
        if error_file.exists() or not proposal_file.exists():
            return None
        proposal = EditProposal.model_validate_json(proposal_file.read_text())
        if not proposal.edits:
            atomic_write_json(error_file, {"error": "no edits"})
            return None
        cand = candidate(self.ws, s["repo"], candidate_key(s, index), s["base"])
        message = f"{current_step(s).title}\n\n{proposal.summary}"
        try:
            commit, applied = commit_proposal(self.ws, cand, proposal, message, changeset_id(s, index))
        except EditError as exc:
            atomic_write_json(error_file, {"error": str(exc), "failure": failure_of(exc).value})
            return None
        cand.keep("candidates", unkept=True)
        self.deps.on_event(f"  candidate {index}: applied {len(applied.paths)} file(s): {', '.join(applied.paths)}")
        return commit

    def _commit(self, s: RunState, index: int) -> str | None:
        step = candidate_key(s, index).step
        kept = candidates.kept_commit(self.ws.repo_path(s["repo"]), s["run_id"], step, s["attempt"])
        return kept[1] if kept is not None else None

    def _error(self, s: RunState, index: int) -> tuple[str, FailureClass]:
        """Why candidate ``index`` has no commit, and the class of that failure."""
        for suffix in ("apply.json", "proposal.error.json"):
            path = candidate_file(self.ws, s, index, suffix)
            if path.exists():
                found = read_json(path)
                return str(found["error"]), FailureClass(found.get("failure", FailureClass.EDIT_INVALID.value))
        return "no proposal", FailureClass.ANSWER_INVALID

    def _rank(self, s: RunState) -> Ranking:
        """Wait for every candidate's verification, judge those whose tests did not break, and rank them."""
        for index in range(1, s["candidates"] + 1):
            self._start(s, index)
        labels = {candidate_key(s, i).label: i for i in range(1, s["candidates"] + 1)}
        waiting = {label: f for label, f in self._inflight.items() if label in labels}
        wait(list(waiting.values()))
        for label, future in waiting.items():
            future.result()  # a sandbox that failed fails the run, as with one candidate
            self._record(s, labels[label], future)  # done callbacks may still be running: write it here too
        entrants = [self._entrant(s, i) for i in range(1, s["candidates"] + 1)]
        ranking = rank(entrants)
        for standing in ranking.standings:
            outcome = "goes on" if standing.won else f"loses: {standing.why}"
            self.deps.on_event(f"  candidate {standing.index}: {outcome}")
        runs.run_log(
            self.ws,
            s["run_id"],
            "ranking",
            step=s["step"] + 1,
            attempt=s["attempt"],
            winner=ranking.winner,
            standings=[st.model_dump(mode="json") for st in ranking.standings],
        )
        return ranking

    def _entrant(self, s: RunState, index: int) -> Entrant:
        label = f"{candidate_key(s, index).step}-{s['attempt']}"
        commit = self._commit(s, index)
        tests = candidate_file(self.ws, s, index, "tests.json")
        if commit is None or not tests.exists():
            return Entrant(index, label, error=self._error(s, index)[0])
        report = TestReport.model_validate_json(tests.read_text())
        self.deps.on_event(f"  candidate {index}: tests: {report.summary}")
        records.tests_event(self.deps, s, report, candidate=index)
        lines = diff_lines(self.ws.repo_path(s["repo"]), s["base"], commit)
        if report.broken:
            return Entrant(index, label, commit, report=report, diff_lines=lines)
        who = records.provenance(self.deps, self.cards, s)
        baseline = records.kept_baseline(candidate_file(self.ws, s, index, "baseline.json"))
        judged = judge(self.ws, s["repo"], s["base"], commit, report, who=who, baseline=baseline)
        return Entrant(index, label, commit, report=report, judgement=judged, diff_lines=lines)

    def _feedback(self, s: RunState, ranking: Ranking) -> RunState:
        """The retry when no candidate may go on: why the best of them failed, for the model and the record."""
        best = ranking.standings[0]
        tests = candidate_file(self.ws, s, best.index, "tests.json")
        if best.commit is not None and tests.exists():
            report = TestReport.model_validate_json(tests.read_text())
            if report.broken:
                return failures.retry(feedback_on_tests(report), FailureClass.TESTS_FAILED)
            return failures.retry(
                f"Policy rejected the change: {'; '.join(best.reasons) or 'rejected'}", FailureClass.POLICY
            )
        return failures.retry(best.why, self._error(s, best.index)[1])

    def _keep_failed(self, s: RunState, index: int, commit: str) -> None:
        cand = candidate(self.ws, s["repo"], candidate_key(s, index), s["base"])
        cand.commit_sha = commit
        cand.keep("failed")

    def _executor(self) -> Executor:
        if self.deps.executor is None:
            raise RuntimeError("best of N needs Deps.executor; the driver gives one")
        return self.deps.executor
