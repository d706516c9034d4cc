"""The `converge` command: parse, call one library function, render, map errors to exit codes."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli._common import OPTIONS

app = typer.Typer(
    name="converge",
    help="Converge: let local models refine your code — sandboxed, signed, always reversible.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain Click usage errors: "Usage: ..." and one "Error: ..." line
)

# Each module defines `register(app)`; adding a command group is one line here.
COMMAND_MODULES = (
    "orchestrator.cli.workspace_cmds",
    "orchestrator.cli.generation_cmds",
    "orchestrator.cli.sandbox_cmds",
    "orchestrator.cli.doctor_cmds",
    "orchestrator.cli.model_cmds",
    "orchestrator.cli.changeset_cmds",
    "orchestrator.cli.policy_cmds",
    "orchestrator.cli.run_cmds",
    "orchestrator.cli.stats_cmds",
    "orchestrator.cli.self_cmds",
    "orchestrator.cli.watch_cmds",
    "orchestrator.cli.mcp_cmds",
    "orchestrator.cli.serve_cmds",
)


@app.callback()
def _global(
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace", "-w", help="Workspace directory (else $CONVERGE_WORKSPACE, else a parent with .converge/)."
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    OPTIONS.workspace = workspace
    OPTIONS.debug = debug


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    """Console-script entry point."""
    app()
