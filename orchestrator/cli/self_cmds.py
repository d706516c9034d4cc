"""`converge self check|upgrade|rollback|status`: Converge's own changesets and installations."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from orchestrator.cli._common import JsonFlag, emit_json, handled, progress, say, workspace
from orchestrator.errors import VerificationFailed
from orchestrator.selfhost import checks, install


def _describe(doc: dict[str, Any]) -> None:
    cur, prev = doc.get("current"), doc.get("previous")
    if cur:
        say(f"current: generation {cur['generation']} ({cur['commit'][:12]}) at {cur['path']}")
    else:
        say("current: none (run `converge self upgrade`)")
    if prev:
        say(f"previous: generation {prev['generation']} ({prev['commit'][:12]})")
    say(f"launcher: {doc['launcher']}")


def register(app: typer.Typer) -> None:
    """Add the `self` command group to ``app``."""
    group = typer.Typer(help="Converge's own source: checks, upgrade and rollback.", no_args_is_help=True)
    app.add_typer(group, name="self")

    @group.command("check")
    @handled
    def check(
        changeset: Annotated[str, typer.Argument(help="Changeset id on `self`.")], json_out: JsonFlag = False
    ) -> None:
        """Run the self-tests and the canary of a `self` changeset in the sandbox; store the results."""
        from orchestrator.selfhost import canary as self_canary  # noqa: PLC0415  lazy: the canary loads the loop

        progress(f"self check of {changeset}: tests ({checks.TEST_MARKERS}) and canary, in the sandbox")
        tests, canary = self_canary.check(workspace(), changeset)
        if json_out:
            emit_json({"changeset": changeset, "self_tests": tests.model_dump(), "canary": canary.model_dump()})
        else:
            say(f"self-tests: {'pass' if tests.ok else 'FAIL'} ({tests.summary})")
            say(f"canary: {'pass' if canary.ok else 'FAIL'} ({canary.detail})")
        if not (tests.ok and canary.ok):
            if not json_out:
                raise VerificationFailed(f"changeset {changeset}: self check did not pass")
            raise typer.Exit(1)

    @group.command("upgrade")
    @handled
    def upgrade(json_out: JsonFlag = False) -> None:
        """Switch the installation to the newest approved generation of `self` (the previous one is kept)."""
        doc = install.upgrade(workspace())
        if json_out:
            emit_json(doc)
        else:
            say("upgraded" if doc["changed"] else "already current")
            _describe(doc)

    @group.command("rollback")
    @handled
    def rollback(json_out: JsonFlag = False) -> None:
        """Switch back to the previous installation (a link swap: nothing is rebuilt)."""
        doc = install.rollback(workspace())
        if json_out:
            emit_json(doc)
        else:
            say("rolled back")
            _describe(doc)

    @group.command("status")
    @handled
    def status(json_out: JsonFlag = False) -> None:
        """The current and previous installations and the launcher path."""
        doc = install.status(workspace())
        if json_out:
            emit_json(doc)
        else:
            _describe(doc)
