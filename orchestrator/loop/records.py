"""What the nodes record as a run goes: progress lines for people, run-log lines, provenance, and
the feedback a failed attempt sends back to the model — shared by a single candidate and best of N."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from orchestrator.agents.cards import LoadedCard
from orchestrator.gate.provenance import Provenance
from orchestrator.loop.state import Deps, RunState, current_step
from orchestrator.models.backends import Completion
from orchestrator.policy.baseline import TestComparison
from orchestrator.store import runs
from orchestrator.store.reports import TestReport
from orchestrator.store.storage import atomic_write


def provenance(deps: Deps, cards: dict[str, LoadedCard], s: RunState) -> Provenance:
    """Who proposes the current step: its agent card and, for a model agent, the model's digest."""
    card = cards[current_step(s).agent]
    model_sha = deps.model_for(card).identity.sha256 if card.card.kind == "model" else None
    return Provenance(
        author=f"agent:{card.name}",
        agent_card_sha256=card.digest,
        model_sha256=model_sha,
        run=s["run_id"],
        step=s["step"] + 1,
        attempt=s["attempt"],
    )


def model_event(deps: Deps, s: RunState, agent_name: str, completion: Completion) -> None:
    """A model call: a progress line and a run-log line (tokens, seconds)."""
    rate = completion.tokens_out / completion.seconds if completion.seconds > 0 else 0.0
    deps.on_event(
        f"  model ({agent_name}): {completion.tokens_out} tokens in {completion.seconds:.1f}s ({rate:.1f} tok/s)"
    )
    runs.run_log(
        deps.ws,
        s["run_id"],
        "model",
        agent=agent_name,
        step=s.get("step", 0) + 1,
        attempt=s.get("attempt", 1),
        tokens_in=completion.tokens_in,
        tokens_out=completion.tokens_out,
        seconds=round(completion.seconds, 3),
    )


def tests_event(deps: Deps, s: RunState, report: TestReport, candidate: int = 0) -> None:
    """A run-log line of a candidate's tests (``candidate`` 0: the attempt's only one)."""
    cmd = report.command
    more = {"candidate": candidate} if candidate else {}
    runs.run_log(
        deps.ws,
        s["run_id"],
        "tests",
        step=s["step"] + 1,
        attempt=s["attempt"],
        summary=report.summary,
        selection=report.selection,
        argv=cmd.argv if cmd else None,
        exit_code=cmd.exit_code if cmd else None,
        seconds=cmd.duration if cmd else None,
        **more,
    )


def keep_verification(
    report: TestReport, image: str, baseline: TestComparison | None, at: Callable[[str], Path]
) -> None:
    """A verification's files (``at(name)``: where each goes), the report last: a report on disk means the
    rest is there too, so a killed run that finds it verifies nothing again."""
    if baseline is not None:
        atomic_write(at("baseline.json"), baseline.model_dump_json(indent=2))
    atomic_write(at("image"), image)
    atomic_write(at("tests.json"), report.model_dump_json(indent=2))


def kept_baseline(path: Path) -> TestComparison | None:
    """What a kept verification found the candidate lost against its base (None: not compared)."""
    return TestComparison.model_validate_json(path.read_text()) if path.exists() else None
