"""The policy engine: every rule applied to a change, and a reviewer's findings that can only raise the verdict.

:func:`evaluate` judges a :class:`~orchestrator.policy.change.ChangeInput` — built by git, never
by a model — against a :class:`~orchestrator.policy.model.Policy`. Nothing inside the repo (a
README, a comment, a docstring) is read as an instruction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.policy.change import ChangeInput
from orchestrator.policy.model import Policy
from orchestrator.policy.rules import RULES
from orchestrator.policy.verdict import Decision, Finding, Reason, Risk, Verdict, combine


def evaluate(change: ChangeInput, policy: Policy) -> Verdict:
    """Judge ``change`` against ``policy``: deterministic, and blind to any text in the repo."""
    return combine(reason for rule in RULES for reason in rule(change, policy))


def apply_reviewer_findings(verdict: Verdict, findings: Iterable[Finding | Mapping[str, Any]]) -> Verdict:
    """Add a reviewer's findings: risk and decision can only go up (a medium/high finding means review)."""
    extra = []
    for item in findings:
        finding = item if isinstance(item, Finding) else Finding.model_validate(item)
        decision = Decision.APPROVE if finding.severity == Risk.LOW else Decision.REVIEW
        extra.append(
            Reason(
                rule="reviewer",
                message=finding.message,
                file=finding.file,
                line=finding.line,
                decision=decision,
                risk=finding.severity,
            )
        )
    raised = combine([*verdict.reasons, *extra])
    return Verdict(
        verdict=max(verdict.verdict, raised.verdict, key=lambda d: d.rank),
        risk=max(verdict.risk, raised.risk, key=lambda r: r.rank),
        reasons=(*verdict.reasons, *extra),
    )
