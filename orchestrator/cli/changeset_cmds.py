"""`converge submit`, `converge changeset list|show|verify|approve|reject`, `converge export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli._common import JsonFlag, emit_json, emit_table, handled, say, workspace
from orchestrator.cli.run_cmds import continue_run
from orchestrator.errors import ConvergeError, SignatureError
from orchestrator.store import changesets, keyfiles
from orchestrator.store.storage import read_json
from orchestrator.store.workspace import Workspace

RepoArg = Annotated[str, typer.Argument(help="Registered repo name.")]
IdArg = Annotated[str, typer.Argument(help="Changeset id (or a unique prefix).")]


def _details(ws: Workspace, cs: changesets.Changeset) -> dict[str, object]:
    """The changeset with its diff, verdict and signatures; damaged parts are named, not fatal."""
    diff_path = changesets.artifact_path(ws, cs.id, changesets.DIFF)
    verdict_path = changesets.artifact_path(ws, cs.id, changesets.VERDICT)
    proof = ws.root / cs.attestation
    problems: list[str] = []
    signatures: list[dict[str, str]] | None = []
    if proof.exists():
        try:
            env = changesets.read_envelope(proof)
            allowed = keyfiles.read_allowed_signers(keyfiles.allowed_signers_path(ws))
            owners = {keyfiles.fingerprint(k): p for p, keys in allowed.items() for k in keys}
            signatures = [
                {"keyid": str(s.get("keyid", "?")), "principal": owners.get(str(s.get("keyid")), "?")}
                for s in env.get("signatures", [])
                if isinstance(s, dict)
            ]
        except ConvergeError as exc:
            signatures = None
            problems.append(str(exc))
    policy: object = None
    if verdict_path.exists():
        try:
            policy = read_json(verdict_path)
        except ConvergeError as exc:
            problems.append(str(exc))
    return {
        **cs.to_json(),
        "diff": diff_path.read_text(encoding="utf-8", errors="replace") if diff_path.exists() else None,
        "policy": policy,
        "tests_changed": _tests_changed(policy),
        "signatures": signatures,
        "problems": problems,
    }


def _tests_changed(policy: object) -> list[dict[str, str]]:
    """The verdict's "test changed" notes (allowed edits of existing tests), each with its diff hunk."""
    detail = policy.get("detail", {}) if isinstance(policy, dict) else {}
    reasons = detail.get("reasons", []) if isinstance(detail, dict) else []
    return [
        {"test": str(r.get("message", "")).removeprefix("test changed: "), "hunk": str(r.get("excerpt") or "")}
        for r in reasons
        if isinstance(r, dict) and r.get("rule") == "test-changed"
    ]


@handled
def submit(
    repo: RepoArg,
    patch: Annotated[Path, typer.Option("--patch", help="Unified diff to submit (git diff format).")],
    message: Annotated[str, typer.Option("--message", "-m", help="Commit message.")] = "",
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Promote at once when the policy approves.")
    ] = False,
    json_out: JsonFlag = False,
) -> None:
    """Send a person's patch through the gate: apply, sandbox verify, policy, sign, review."""
    from orchestrator.gate.submit import submit as submit_patch  # noqa: PLC0415  lazy: the gate loads policy, sandbox, docker

    cs = submit_patch(workspace(), repo, patch, message, auto_approve=auto_approve)
    if json_out:
        emit_json(cs.to_json())
    else:
        say(cs.id)
        if cs.status == "pending":
            say(f"pending review (verdict {cs.verdict}, risk {cs.risk}): converge changeset approve {cs.id}")
        elif cs.status == "approved":
            say(f"approved: {repo} is at generation {cs.generation}")
        else:
            say(f"rejected: {cs.reason}")
    if cs.status == "rejected":
        raise typer.Exit(1)  # the gate ran and said no


@handled
def list_(
    repo: Annotated[str | None, typer.Option("--repo", help="Only this repo's changesets.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="pending, approved or rejected.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Changesets, newest first."""
    ws = workspace()
    if repo is not None:
        ws.repo(repo)
    found = changesets.list_changesets(ws, repo, status)
    if json_out:
        emit_json([cs.to_json() for cs in found])
        return
    emit_table(
        "changesets",
        ["id", "repo", "status", "verdict", "risk", "generation", "tests", "created"],
        [[c.id, c.repo, c.status, c.verdict, c.risk, c.generation, c.tests, c.created] for c in found],
    )


@handled
def show(cs_id: IdArg, json_out: JsonFlag = False) -> None:
    """One changeset: diff, tests, policy verdict, signatures, attestation."""
    ws = workspace()
    data = _details(ws, changesets.load(ws, cs_id))
    if json_out:
        emit_json(data)
        return
    signatures = data["signatures"]
    assert isinstance(signatures, list)
    for key in ("id", "repo", "status", "commit", "base", "generation", "verdict", "risk", "tests", "attestation"):
        say(f"{key}: {data[key]}")
    for sig in signatures:
        say(f"signed by: {sig['principal']} ({sig['keyid']})")
    for reason in _reasons(data):
        say(f"reason: {reason}")
    changed = data["tests_changed"]
    assert isinstance(changed, list)
    for item in changed:
        say(f"test changed: {item['test']}\n{item['hunk']}")
    say(str(data["diff"] or ""))


def _reasons(data: dict[str, object]) -> list[str]:
    reasons = data.get("reasons")
    return [str(r) for r in reasons] if isinstance(reasons, list) else []


@handled
def verify(cs_id: IdArg, json_out: JsonFlag = False) -> None:
    """Re-check the commit signature and the attestation against git and the stored reports."""
    from orchestrator.gate import audit  # noqa: PLC0415  lazy: the gate loads policy, sandbox, docker

    ws = workspace()
    cs = changesets.load(ws, cs_id)
    problems = audit.check(ws, cs)
    if json_out:
        emit_json(
            {
                "id": cs.id,
                "ok": not problems,
                "problems": [{"field": p.field, "detail": p.detail} for p in problems],
            }
        )
    elif not problems:
        say(f"changeset {cs.id}: commit signature, attestation and every digest verify")
    if problems:
        raise SignatureError(f"changeset {cs.id}: " + "; ".join(str(p) for p in problems))


@handled
def approve(cs_id: IdArg, json_out: JsonFlag = False) -> None:
    """Sign the changeset with your key and promote it (a new generation)."""
    from orchestrator.gate import review  # noqa: PLC0415  lazy: the gate loads policy, sandbox, docker

    cs = review.approve(workspace(), cs_id)
    if json_out:
        emit_json(cs.to_json())
    else:
        say(f"approved {cs.id} by {cs.decided_by}: {cs.repo} is at generation {cs.generation}")
    continue_run(cs.run)


@handled
def reject(
    cs_id: IdArg,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded with the changeset).")],
    json_out: JsonFlag = False,
) -> None:
    """Reject the changeset; its commit stays under refs/converge/failed/cs-<id>."""
    from orchestrator.gate import review  # noqa: PLC0415  lazy: the gate loads policy, sandbox, docker

    cs = review.reject(workspace(), cs_id, reason)
    if json_out:
        emit_json(cs.to_json())
    else:
        say(f"rejected {cs.id}: {cs.reason}")
    continue_run(cs.run)


@handled
def export(
    repo: RepoArg,
    branch: Annotated[
        str | None, typer.Option("--branch", help="Branch in the origin (default converge/gen-N).")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Push the current generation to the repo's origin as a branch (never its checked-out branch)."""
    from orchestrator.gate.export import export as export_generation  # noqa: PLC0415  lazy: the gate loads policy, sandbox, docker

    result = export_generation(workspace(), repo, branch)
    if json_out:
        emit_json(result)
    else:
        say(f"pushed generation {result['generation']} of {repo} to {result['remote']} as {result['branch']}")
        say(f"its signatures verify in the origin with: {result['verify']}")


def register(app: typer.Typer) -> None:
    """Add ``submit``, ``changeset ...`` and ``export`` to ``app``."""
    group = typer.Typer(
        help="Changesets: signed, attested candidates waiting for or past review.", no_args_is_help=True
    )
    app.add_typer(group, name="changeset")
    app.command("submit")(submit)
    group.command("list")(list_)
    group.command("show")(show)
    group.command("verify")(verify)
    group.command("approve")(approve)
    group.command("reject")(reject)
    app.command("export")(export)
