"""`converge doctor [--clean]`: what is ready and what is missing, each with the fix."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli._common import JsonFlag, emit_json, emit_table, handled, say, workspace
from orchestrator.errors import ConfigError, WorkspaceError
from orchestrator.ops.doctor import Check, DoctorContext, run_checks
from orchestrator.store.workspace import Workspace


def register(app: typer.Typer) -> None:
    """Add `doctor` to ``app``."""

    @app.command("doctor")
    @handled
    def doctor(
        clean: Annotated[
            bool,
            typer.Option(
                "--clean",
                help="Remove orphan sandbox containers and stale sandbox worktrees; trim the prompt cache to size.",
            ),
        ] = False,
        json_out: JsonFlag = False,
    ) -> None:
        """Check the sandbox engine, image, models and keys; exit 1 if something is missing."""
        ws: Workspace | None
        config_problem: Check | None = None
        try:
            ws = workspace()
        except WorkspaceError:
            ws = None
        except ConfigError as exc:
            # the one thing doctor must still diagnose: report it, check what does not need the config
            ws = None
            config_problem = Check("config", "missing", str(exc), "edit .converge/converge.toml (see README)")
        ctx = DoctorContext(ws, clean=clean)
        checks = ([config_problem] if config_problem else []) + run_checks(ctx)
        ok = all(c.status != "missing" for c in checks)
        if json_out:
            emit_json({"ok": ok, "checks": [c.to_json() for c in checks], "cleaned": ctx.cleaned})
        else:
            emit_table(
                "converge doctor",
                ["check", "status", "detail", "fix"],
                [[c.name, c.status, c.detail, c.fix or ""] for c in checks],
            )
            for item in ctx.cleaned:
                say(f"removed {item}")
        if not ok:
            raise typer.Exit(1)
