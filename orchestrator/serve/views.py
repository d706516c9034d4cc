"""What each page shows, gathered from the workspace into typed values (templates only lay them out).

A damaged or missing part of a changeset (no attestation, an unreadable verdict) is named in
``problems`` and the rest is still shown: a reviewer must be able to look at what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup
from pydantic import ValidationError

from orchestrator.errors import ConvergeError, UsageError
from orchestrator.gate import audit
from orchestrator.models import budget, runtime
from orchestrator.models.budget import Entry
from orchestrator.models.registry import ModelRecord
from orchestrator.ops import stats
from orchestrator.serve import charts
from orchestrator.serve.diffs import Diff, highlight
from orchestrator.signing import keys
from orchestrator.store import changesets, generations, keyfiles
from orchestrator.store.changesets import Changeset
from orchestrator.store.generations import Generation
from orchestrator.store.reports import TestReport
from orchestrator.store.storage import read_json
from orchestrator.store.workspace import Workspace


@dataclass(frozen=True)
class ReasonView:
    """One reason a policy rule gave."""

    rule: str
    message: str
    decision: str
    risk: str
    where: str


@dataclass(frozen=True)
class Signature:
    """One signature on the attestation and whose key made it."""

    principal: str
    keyid: str


@dataclass
class ChangesetPage:
    """Everything the changeset page shows."""

    cs: Changeset
    diff: Diff | None = None
    report: TestReport | None = None
    reasons: list[ReasonView] = field(default_factory=list)
    subjects: list[tuple[str, str, str]] = field(default_factory=list)
    digests: list[tuple[str, str]] = field(default_factory=list)
    signatures: list[Signature] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def failing_output(self) -> str:
        """The test command's output when something failed (nothing when all passed)."""
        report, cmd = self.report, self.report.command if self.report else None
        if report is None or cmd is None or report.ok:
            return ""
        return (cmd.stdout_tail + "\n" + cmd.stderr_tail).strip()


def changeset_list(ws: Workspace) -> list[Changeset]:
    """Changesets, the pending ones first, each group newest first."""
    return sorted(changesets.list_changesets(ws), key=lambda c: c.status != "pending")


def _reasons(verdict: Any, cs: Changeset) -> list[ReasonView]:
    detail = verdict.get("detail") if isinstance(verdict, dict) else None
    found = detail.get("reasons") if isinstance(detail, dict) else None
    if not isinstance(found, list):  # an older or damaged verdict: the record's plain reasons
        return [ReasonView("", r, cs.verdict, cs.risk, "") for r in cs.reasons]
    views = []
    for r in found:
        if isinstance(r, dict):
            where = str(r.get("file") or "") + (f":{r['line']}" if r.get("line") else "")
            views.append(
                ReasonView(str(r.get("rule", "")), str(r.get("message", "")), str(r.get("decision", "")),
                           str(r.get("risk", "")), where)
            )  # fmt: skip
    return views


def _attestation(ws: Workspace, page: ChangesetPage) -> None:
    cs = page.cs
    try:
        env = changesets.read_envelope(ws.root / cs.attestation)
        statement = json.loads(keys.payload_of(env))
    except (ConvergeError, ValueError) as exc:
        page.problems.append(f"attestation: {str(exc).removeprefix('attestation: ')}")
        return
    allowed = keyfiles.read_allowed_signers(keyfiles.allowed_signers_path(ws))
    owners = {keyfiles.fingerprint(k): p for p, ks in allowed.items() for k in ks}
    for sig in env.get("signatures") or []:
        if isinstance(sig, dict):
            keyid = str(sig.get("keyid", "?"))
            page.signatures.append(Signature(owners.get(keyid, "unknown key"), keyid))
    if not isinstance(statement, dict):
        page.problems.append("attestation: payload is not a JSON object")
        return
    for subject in statement.get("subject") or []:
        for algo, digest in ((subject.get("digest") or {}) if isinstance(subject, dict) else {}).items():
            page.subjects.append((str(subject.get("name", "")), str(algo), str(digest)))
    predicate = statement.get("predicate") or {}
    for part in ("diff", "tests", "policy", "sbom", "model", "sandbox", "base"):
        value = predicate.get(part) if isinstance(predicate, dict) else None
        if isinstance(value, dict):
            for key in ("sha256", "image", "commit"):
                if value.get(key):
                    page.digests.append((f"{part}.{key}", str(value[key])))


def changeset_page(ws: Workspace, cs_id: str) -> ChangesetPage:
    """The changeset ``cs_id`` with its diff, tests, verdict, attestation and signatures."""
    page = ChangesetPage(cs=changesets.load(ws, cs_id))
    diff_path = changesets.artifact_path(ws, page.cs.id, changesets.DIFF)
    if diff_path.exists():
        page.diff = highlight(diff_path.read_text(encoding="utf-8", errors="replace"))
    else:
        page.problems.append(f"diff: {diff_path.name} is missing")
    report_path = changesets.artifact_path(ws, page.cs.id, changesets.REPORT)
    try:
        page.report = TestReport.model_validate_json(report_path.read_bytes()) if report_path.exists() else None
    except (ValidationError, OSError) as exc:
        page.problems.append(f"test report: {str(exc).splitlines()[0]}")
    verdict: Any = None
    verdict_path = changesets.artifact_path(ws, page.cs.id, changesets.VERDICT)
    try:
        verdict = read_json(verdict_path) if verdict_path.exists() else None
    except ConvergeError as exc:
        page.problems.append(str(exc))
    page.reasons = _reasons(verdict, page.cs)
    _attestation(ws, page)
    return page


def verify(ws: Workspace, cs_id: str) -> list[audit.Problem]:
    """`converge changeset verify`, live: what does not verify now (empty: everything does)."""
    return audit.check(ws, changesets.load(ws, cs_id))


@dataclass(frozen=True)
class Timeline:
    """A repo's generations, newest first, and what rollback can reach."""

    repo: str
    generations: tuple[Generation, ...]
    current: Generation
    messages: dict[str, str]

    def can_roll_back_to(self, gen: Generation) -> bool:
        return gen.status == "superseded"

    def can_roll_forward_to(self, gen: Generation) -> bool:
        return gen.status == "rolled-back"


def timeline(ws: Workspace, repo: str) -> Timeline:
    """The lineage of ``repo`` with each changeset's message."""
    ws.repo(repo)  # an unknown name is a UsageError naming it
    gens = generations.lineage(ws, repo)
    messages = {}
    for gen in gens:
        for cs_id in gen.changesets:
            if changesets.exists(ws, cs_id):
                messages[cs_id] = (changesets.load(ws, cs_id).message.splitlines() or [""])[0]
    current = next(g for g in gens if g.status == "current")
    return Timeline(repo, tuple(reversed(gens)), current, messages)


@dataclass(frozen=True)
class RollbackPlan:
    """What a rollback to ``target`` would do, for the confirmation page."""

    repo: str
    current: Generation
    target: Generation
    abandoned: tuple[Generation, ...]


def rollback_plan(ws: Workspace, repo: str, to: int) -> RollbackPlan:
    """The current generation, the target, and the live generations a rollback to ``to`` would abandon."""
    line = timeline(ws, repo)
    target = next((g for g in line.generations if g.number == to), None)
    if target is None:
        raise UsageError(f"--to {to}: repo {repo!r} has no generation {to}")
    live = [g for g in line.generations if g.status in ("current", "superseded")]
    abandoned = tuple(g for g in live if g.number > to)
    return RollbackPlan(repo, line.current, target, abandoned)


@dataclass(frozen=True)
class ModelsPage:
    """Registered models, role bindings, the memory budget and what is resident now."""

    models: tuple[ModelRecord, ...]
    roles: dict[str, str]
    budget: int
    budget_configured: bool
    resident: tuple[Entry, ...]
    charged: int


def models_page(ws: Workspace) -> ModelsPage:
    """What `converge model list` shows, with the shared memory ledger."""
    registry = runtime.load_registry(ws)
    configured = ws.config().models.memory_budget
    resident = budget.holders(ws.state)
    return ModelsPage(
        models=tuple(registry.models.values()),
        roles=runtime.all_roles(ws),
        budget=configured if configured is not None else runtime.default_budget(),
        budget_configured=configured is not None,
        resident=tuple(resident),
        charged=budget.charged(resident),
    )


@dataclass(frozen=True)
class StatsPage:
    """`converge stats` with its figures drawn as charts."""

    figures: dict[str, Any]
    charts: tuple[tuple[str, Markup], ...]


def stats_page(ws: Workspace) -> StatsPage:
    """The workspace metrics and a chart for each series of them."""
    found = stats.compute(ws)
    escalations = [
        bar
        for rule, counts in found["policy_rejections"].items()
        for bar in (
            charts.Bar(f"{rule} reject", counts["reject"], alt=True),
            charts.Bar(f"{rule} review", counts["review"]),
        )
    ]
    outcomes = [charts.Bar(k, v) for k, v in found["steps"]["outcomes"].items()]
    rollbacks = [charts.Bar(k, v) for k, v in found["rollbacks"].items()]
    drawn = [
        ("step outcomes", charts.bars("step outcomes", outcomes)),
        ("policy escalations by rule", charts.bars("policy escalations by rule", escalations)),
        ("rolled-back generations by repo", charts.bars("rollbacks", rollbacks)),
    ]
    for repo, trend in found["test_time_trend"].items():
        points = [(f"g{p['generation']}", float(p["seconds"])) for p in trend["points"]]
        drawn.append((f"test time by generation: {repo}", charts.line(f"test time of {repo}", points)))
    return StatsPage(found, tuple(drawn))
