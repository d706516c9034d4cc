"""`converge init`, `add` and `remove`: a workspace and the repos registered in it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.agents import warm
from orchestrator.cli._common import JsonFlag, emit_json, handled, say, workspace
from orchestrator.errors import UsageError
from orchestrator.store import generations
from orchestrator.store.setup import add_repo, init_workspace, remove_repo


def register(app: typer.Typer) -> None:
    """Add the workspace commands to ``app``."""

    @app.command("init")
    @handled
    def init(
        path: Annotated[Path, typer.Argument(help="Directory to create the workspace in.")], json_out: JsonFlag = False
    ) -> None:
        """Create a workspace from the template (idempotent)."""
        ws = init_workspace(path)
        if json_out:
            emit_json({"workspace": str(ws.root)})
        else:
            say(f"workspace ready at {ws.root}")

    @app.command("add")
    @handled
    def add(
        source: Annotated[str | None, typer.Argument(help="Git repo path or URL reachable offline.")] = None,
        name: Annotated[
            str | None, typer.Option("--name", help="Name under src/ (default: the source's basename).")
        ] = None,
        is_self: Annotated[bool, typer.Option("--self", help="Register Converge's own source as `self`.")] = False,
        json_out: JsonFlag = False,
    ) -> None:
        """Register a git repo under src/NAME and record generation 0."""
        if source is None and not is_self:
            raise UsageError("add: give a SOURCE path or URL, or --self")
        ws = workspace()
        record = add_repo(ws, source or "", name, is_self)
        gen = generations.current(ws, record.name)
        warm.start(ws, record.name)  # the first run finds the map built
        if json_out:
            emit_json({"name": record.name, "generation": gen.number, "commit": gen.commit, "source": record.source})
        else:
            say(f"registered {record.name} at generation {gen.number} ({gen.commit[:12]})")

    @app.command("remove")
    @handled
    def remove(repo: Annotated[str, typer.Argument(help="Registered repo name.")], json_out: JsonFlag = False) -> None:
        """Unregister a repo; its clone, refs, changesets and proofs stay readable in an archive."""
        archive = remove_repo(workspace(), repo)
        if json_out:
            emit_json({"name": repo, "archive": str(archive)})
        else:
            say(f"removed {repo}; its clone, refs, changesets and proofs are kept (clone in {archive})")
