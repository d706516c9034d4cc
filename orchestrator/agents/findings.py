"""Tool findings: what each deterministic tool agent would change, read from a dry run in the sandbox.

Before planning, every tool card with a ``dry_run`` reports its findings by rule and file
(:func:`dry_runs`); :func:`summary` writes them for the planner beside what each agent does.
A goal that names a kind of change a tool card declares (its ``[[changes]]`` goals) is
matched to that tool (:func:`matched_tools`), and a tool step runs only the rule families it
is about, on Python files only (:func:`scoped_argv`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable, Sequence

from pydantic import BaseModel, Field

from orchestrator.agents.cards import AgentCard, ChangeFamily, LoadedCard, ReportFormat
from orchestrator.errors import ConvergeError, SandboxError
from orchestrator.sandbox.base import SandboxBackend
from orchestrator.sandbox.pool import SandboxPool, sandbox_at
from orchestrator.store.reports import CommandResult
from orchestrator.store.workspace import Workspace

PYTHON_SUFFIXES = (".py", ".pyi")
FORMAT_CODE = "format"  # the rule of a formatter's finding: the file would be reformatted
_CHECK_LINE = re.compile(r"^(?P<path>[^:\s][^:]*):\d+:\d+: (?P<code>[A-Z]+[0-9]+) (?P<fix>\[\*\] )?")
_FORMAT_LINES = (
    re.compile(r"^Would reformat: (?P<path>.+)$"),  # ruff before 0.9
    re.compile(r"^\s*--> (?P<path>.+?):\d+:\d+$"),  # ruff's full output
    re.compile(r"^(?P<path>[^:\s][^:]*):\d+:\d+: unformatted"),  # ruff's concise output
)
_WORD = re.compile(r"[a-z0-9]+")
FILES_SHOWN = 6
Run = Callable[[list[str]], CommandResult]  # runs argv in the sandbox over the tree


class Finding(BaseModel):
    """One thing a tool would change: a file, the rule, and whether the tool fixes it by itself."""

    path: str
    rule: str
    fixable: bool = True


class ToolReport(BaseModel):
    """A tool agent's dry run: its findings, or why it could not run."""

    agent: str
    findings: list[Finding] = Field(default_factory=list)
    error: str = ""

    def files(self, rules: Iterable[str] | None = None) -> list[str]:
        """The files with fixable findings (of ``rules``, when given), sorted."""
        wanted = set(rules) if rules is not None else None
        return sorted({f.path for f in self.findings if f.fixable and (wanted is None or f.rule in wanted)})


# --- reading a dry run -----------------------------------------------------------------------------


def read_report(fmt: ReportFormat, result: CommandResult) -> list[Finding]:
    """The findings in a dry run's output; SandboxError when the tool itself failed."""
    ok = (0,) if fmt == "ruff-check" else (0, 1)  # `ruff format --check` exits 1 when it would reformat
    if result.timed_out or result.oom_killed or result.exit_code not in ok:
        detail = (result.stderr_tail or result.stdout_tail).strip().splitlines()
        raise SandboxError(
            f"`{shlex.join(result.argv)}` exited {result.exit_code}"
            + (f": {detail[-1]}" if detail else "")
            + (" (is it installed in the sandbox environment?)" if result.exit_code in (126, 127) else "")
        )
    found: list[Finding] = []
    for line in result.stdout_tail.splitlines():
        if fmt == "ruff-check":
            match = _CHECK_LINE.match(line)
            if match:
                found.append(Finding(path=_rel(match["path"]), rule=match["code"], fixable=bool(match["fix"])))
            continue
        for pattern in _FORMAT_LINES:
            match = pattern.match(line)
            if match:
                found.append(Finding(path=_rel(match["path"]), rule=FORMAT_CODE))
                break
    return [f for f in found if f.path.endswith(PYTHON_SUFFIXES)]


def _rel(path: str) -> str:
    """A path the tool printed, relative to the repository root (the sandbox runs in ``/src``)."""
    return path.strip().removeprefix("/src/").removeprefix("./")


# --- which tool a goal or a step is about ----------------------------------------------------------


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _serves(phrase: str, words: Sequence[str]) -> bool:
    """Every word of ``phrase`` occurs in ``words`` (a word of four letters or more also as a prefix)."""
    return all(any(w == p or (len(p) >= 4 and w.startswith(p)) for w in words) for p in _words(phrase))


def families_for(card: AgentCard, text: str) -> list[ChangeFamily]:
    """The kinds of change of tool ``card`` that ``text`` (a goal, a step's title) asks for."""
    words = _words(text)
    return [family for family in card.changes if any(_serves(goal, words) for goal in family.goals)]


def matched_tools(goal: str, cards: dict[str, LoadedCard]) -> dict[str, list[ChangeFamily]]:
    """Tool agents whose declared kinds of change the goal asks for, by name (sorted), with those kinds; a goal
    that names the agent or asks for all it does (the card's ``goals``) asks for every kind it declares."""
    found = {}
    words = _words(goal)
    for name in sorted(cards):
        card = cards[name].card
        if card.kind != "tool":
            continue
        families = families_for(card, goal)
        if not families and (name in goal or any(_serves(phrase, words) for phrase in card.goals)):
            families = list(card.changes)
        if families:
            found[name] = families
    return found


def step_families(card: AgentCard, title: str, goal: str) -> list[ChangeFamily]:
    """What a tool step is about: the kinds its title or the goal asks for (a small planner's title names one
    of the kinds the goal asks for), else all the card declares."""
    asked = {family.family for family in [*families_for(card, title), *families_for(card, goal)]}
    return [family for family in card.changes if family.family in asked] or list(card.changes)


def rules_of(families: Sequence[ChangeFamily]) -> list[str]:
    return sorted({rule for family in families for rule in family.rules})


def scoped_argv(
    card: AgentCard, argv: Sequence[str], families: Sequence[ChangeFamily], paths: Sequence[str]
) -> list[str]:
    """``argv`` limited to the rule codes of ``families`` (when the card can select rules) and to ``paths``."""
    scoped = list(argv)
    rules = rules_of(families)
    rules += sorted({rule for family in families for rule in family.cleanup} - set(rules))
    if card.rule_option and rules:
        scoped += [card.rule_option, ",".join(rules)]
    return scoped + (list(paths) or ["."])


def python_files(paths: Iterable[str]) -> list[str]:
    """The Python files among ``paths`` (what tool steps may touch: never a README's code blocks)."""
    return sorted({p for p in paths if p.endswith(PYTHON_SUFFIXES)})


# --- dry runs before planning ----------------------------------------------------------------------


def dry_runs(
    ws: Workspace,
    repo: str,
    commit: str,
    cards: dict[str, LoadedCard],
    pool: SandboxPool | None = None,
    backend: SandboxBackend | None = None,
) -> list[ToolReport]:
    """Every tool card's dry run on ``commit``, in one sandbox, limited to the kinds of change it declares.

    A tool that cannot run is reported with its error (the planner is told), never raised: findings are
    evidence for the plan, not a condition of it.
    """
    tools = [cards[n].card for n in sorted(cards) if cards[n].card.kind == "tool" and cards[n].card.dry_run]
    if not tools:
        return []
    try:
        with sandbox_at(ws, repo, commit, pool, backend) as (_tree, box):
            return [_dry_run(card, box.run) for card in tools]
    except ConvergeError as exc:  # no engine, no image, a checkout that failed: the plan goes on without
        return [ToolReport(agent=card.name, error=f"no sandbox: {exc}") for card in tools]


def _dry_run(card: AgentCard, run: Run) -> ToolReport:
    assert card.dry_run is not None and card.report is not None
    try:
        result = run(scoped_argv(card, card.dry_run, card.changes, []))
        return ToolReport(agent=card.name, findings=read_report(card.report, result))
    except SandboxError as exc:
        return ToolReport(agent=card.name, error=str(exc))


# --- what the planner reads ------------------------------------------------------------------------


def summary(cards: dict[str, LoadedCard], reports: Sequence[ToolReport], editors: Sequence[str]) -> str:
    """Each agent that can do a step: what it does, and for tool agents what their dry run would change."""
    by_agent = {r.agent: r for r in reports}
    lines = []
    for name in editors:
        card = cards[name].card
        lines.append(f"- {name}: {card.description}")
        if card.kind != "tool":
            continue
        if card.changes:
            lines.append("  changes: " + "; ".join(_family_words(f) for f in card.changes))
        report = by_agent.get(name)
        if report is not None:
            lines.append("  would change now: " + _findings_words(card, report))
    return "\n".join(lines)


def _family_words(family: ChangeFamily) -> str:
    return family.family + (f" ({', '.join(family.rules)})" if family.rules else "")


def _findings_words(card: AgentCard, report: ToolReport) -> str:
    if report.error:
        return f"unknown (the dry run failed: {report.error[:160]})"
    fixable = [f for f in report.findings if f.fixable]
    if not fixable:
        return "nothing" + (f" ({len(report.findings)} findings it cannot fix itself)" if report.findings else "")
    parts = []
    for family in card.changes or [ChangeFamily(family="changes")]:
        rules = set(family.rules) if family.rules else None
        files = report.files(rules)
        if not files:
            continue
        count = sum(1 for f in fixable if rules is None or f.rule in rules)
        shown = ", ".join(files[:FILES_SHOWN]) + (
            f" and {len(files) - FILES_SHOWN} more" if len(files) > FILES_SHOWN else ""
        )
        parts.append(f"{family.family}: {count} in {shown}")
    return "; ".join(parts) or "nothing"


def tool_note(card: AgentCard, families: Sequence[ChangeFamily], paths: Sequence[str]) -> str:
    """What a tool step that found nothing says, instead of asking anyone to invent a change."""
    kinds = ", ".join(_family_words(f) for f in families) or "changes"
    where = f" in {', '.join(paths[:FILES_SHOWN])}" if paths else ""
    return f"{card.name} found nothing to change ({kinds}){where}; the step is done without a change."
