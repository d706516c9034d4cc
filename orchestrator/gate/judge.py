"""Judge: the policy's verdict on a candidate, as the typed ``Judgement`` the later stages record.

The policy engine is deterministic and reads nothing in the repo as an instruction; a judgement
holds its decision, risk, the reasons that asked for more than approval, and the full verdict.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.gate.provenance import Provenance
from orchestrator.policy.baseline import TestComparison
from orchestrator.policy.change import Author, change_from_commits
from orchestrator.policy.engine import evaluate
from orchestrator.policy.model import load_policies
from orchestrator.store.reports import TestReport
from orchestrator.store.verdicts import Decision, Risk
from orchestrator.store.workspace import Workspace


class Judgement(BaseModel):
    """The policy's verdict on a candidate: what to do, how risky, why (and the engine's full answer)."""

    model_config = ConfigDict(frozen=True)

    decision: Decision
    risk: Risk = Risk.LOW
    reasons: list[str] = Field(default_factory=list)
    detail: dict[str, Any] = Field(default_factory=dict)
    baseline: TestComparison | None = None  # what the candidate lost against its base, as judged

    @property
    def summary(self) -> dict[str, Any]:
        """Decision, risk and reasons: what the changeset and its attestation record."""
        return {"decision": str(self.decision), "risk": str(self.risk), "reasons": self.reasons}


def judge(
    ws: Workspace,
    repo: str,
    base: str,
    commit: str,
    report: TestReport,
    *,
    who: Provenance,
    baseline: TestComparison | None = None,
) -> Judgement:
    """The policy's verdict on ``base..commit`` with its test report and its comparison with the base's."""
    author = Author(agent=None if who.is_human else who.author, model=who.model_sha256)
    change = change_from_commits(ws.repo_path(repo), base, commit, repo, ws.repo(repo).is_self, report, author)
    change = replace(change, baseline=baseline)
    verdict = evaluate(change, load_policies(ws, repo))
    reasons = [f"{r.rule}: {r.message}" for r in verdict.reasons if r.decision != Decision.APPROVE]
    return Judgement(
        decision=verdict.verdict, risk=verdict.risk, reasons=reasons, detail=verdict.to_json(), baseline=baseline
    )
