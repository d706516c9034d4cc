"""`converge policy check`: the policy's verdict on a patch, a commit or the working tree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from orchestrator.cli._common import JsonFlag, emit_json, emit_table, handled, say, workspace
from orchestrator.errors import UsageError
from orchestrator.policy import check as policy_check
from orchestrator.store.reports import TestReport


def _tests(path: Path | None) -> TestReport | None:
    if path is None:
        return None
    try:
        return TestReport.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(f"--tests {path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--tests {path}: cannot read a test report: {getattr(exc, 'strerror', None) or exc}") from exc
    except ValidationError as exc:
        raise UsageError(f"--tests {path}: not a test report: {exc.errors()[0]['msg']}") from exc


def register(app: typer.Typer) -> None:
    """Add the policy commands to ``app``."""
    group = typer.Typer(help="Policies: the rules every changeset is judged by.", no_args_is_help=True)
    app.add_typer(group, name="policy")

    @group.command("check")
    @handled
    def check(
        repo: Annotated[str, typer.Argument(help="Registered repo name.")],
        patch: Annotated[
            Path | None, typer.Option("--patch", help="A unified diff, applied to the current generation.")
        ] = None,
        commit: Annotated[
            str | None, typer.Option("--commit", help="An existing commit, judged against its parent.")
        ] = None,
        tests: Annotated[Path | None, typer.Option("--tests", help="A TestReport JSON file to judge with.")] = None,
        changeset: Annotated[
            str | None, typer.Option("--changeset", help="A changeset, judged again with its stored test report.")
        ] = None,
        json_out: JsonFlag = False,
    ) -> None:
        """Judge a patch, a commit, a changeset, or (with none) the working tree of REPO; exit 1 unless approved."""
        if sum(x is not None for x in (patch, commit, changeset)) > 1:
            raise UsageError("--patch, --commit, --changeset: give one of them")
        ws = workspace()
        report = _tests(tests)
        if changeset is not None:
            result = policy_check.check_changeset(ws, repo, changeset, report)
        elif patch is not None:
            result = policy_check.check_patch(ws, repo, patch, report)
        elif commit is not None:
            result = policy_check.check_commit(ws, repo, commit, report)
        else:
            result = policy_check.check_worktree(ws, repo, report)
        verdict = result.verdict
        if json_out:
            emit_json(result.to_json())
        else:
            say(f"verdict: {verdict.verdict}  risk: {verdict.risk}  ({result.base[:12]}..{result.result[:12]})")
            if verdict.reasons:
                emit_table(
                    "reasons",
                    ["rule", "decision", "where", "message"],
                    [
                        [r.rule, r.decision, f"{r.file}:{r.line}" if r.line else (r.file or ""), r.message]
                        for r in verdict.reasons
                    ],
                )
        if verdict.verdict != "approve":
            raise typer.Exit(1)
