"""`converge repos`, `converge generation list` and `converge rollback`: repos and their generations."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli._common import JsonFlag, emit_json, emit_table, handled, progress, say, workspace
from orchestrator.store import generations


def register(app: typer.Typer) -> None:
    """Add the generation commands to ``app``."""
    group = typer.Typer(help="Generations: numbered, promoted states of a repo.", no_args_is_help=True)
    app.add_typer(group, name="generation")

    @app.command("repos")
    @handled
    def repos(json_out: JsonFlag = False) -> None:
        """Registered repos with their current generation."""
        ws = workspace()
        rows = []
        for record in ws.repos():
            row: dict[str, object] = {"name": record.name, "source": record.source, "self": record.is_self}
            broken = generations.problem(ws, record.name)  # a missing or damaged clone is listed, not fatal
            if broken is None:
                gen = generations.current(ws, record.name)
                row |= {"generation": gen.number, "commit": gen.commit, "status": "ok", "problem": None}
            else:
                row |= {"generation": None, "commit": None, "status": "broken", "problem": broken}
            rows.append(row)
        if json_out:
            emit_json(rows)
        else:
            emit_table(
                "repos",
                ["name", "generation", "commit", "source", "status"],
                [
                    [r["name"], r["generation"], str(r["commit"] or "")[:12], r["source"], r["problem"] or "ok"]
                    for r in rows
                ],
            )

    @group.command("list")
    @handled
    def list_(repo: Annotated[str, typer.Argument(help="Registered repo name.")], json_out: JsonFlag = False) -> None:
        """Lineage: number, commit, parent, status, changesets."""
        gens = generations.lineage(workspace(), repo)
        if json_out:
            emit_json([g.to_json() for g in gens])
        else:
            emit_table(
                f"generations of {repo}",
                ["number", "commit", "parent", "status", "changesets", "created"],
                [[g.number, g.commit[:12], g.parent, g.status, ", ".join(g.changesets), g.created] for g in gens],
            )

    @app.command("rollback")
    @handled
    def rollback(
        repo: Annotated[str, typer.Argument(help="Registered repo name.")],
        to: Annotated[
            int | None, typer.Option("--to", help="Generation to make current (default: the parent).")
        ] = None,
        force: Annotated[
            bool, typer.Option("--force", help="Save uncommitted changes under refs/converge/stash/ and go on.")
        ] = False,
        json_out: JsonFlag = False,
    ) -> None:
        """Make an earlier generation current again, atomically; the abandoned one is kept."""
        gen, stash = generations.rollback(workspace(), repo, to, force)
        if stash:
            progress(f"saved uncommitted changes under {stash}")
        if json_out:
            emit_json({**gen.to_json(), "stash": stash})
        else:
            say(f"{repo} is at generation {gen.number} ({gen.commit[:12]})")
