"""The `converge` command: the global options and the table of commands, each loaded when it runs.

A command's module (``orchestrator.cli.<module>``, which defines ``register(app)``) is imported
only when that command runs, so `converge runs` does not pay for docker, langgraph or llama.cpp;
`converge --help` reads the summaries from :data:`COMMANDS` and imports no command at all.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import typer.main
from typer.core import TyperGroup

if TYPE_CHECKING:
    from typer import _click


@dataclass
class GlobalOptions:
    """Options given before the command name."""

    workspace: Path | None = None
    debug: bool = False


OPTIONS = GlobalOptions()

# name -> (module under orchestrator.cli that registers it, the line `converge --help` shows);
# tests/test_cli.py checks each line against the command's own help.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("workspace_cmds", "Create a workspace from the template (idempotent)."),
    "add": ("workspace_cmds", "Register a git repo under src/NAME and record generation 0."),
    "remove": (
        "workspace_cmds",
        "Unregister a repo; its clone, refs, changesets and proofs stay readable in an archive.",
    ),
    "repos": ("generation_cmds", "Registered repos with their current generation."),
    "refine": ("run_cmds", "One run: plan, then propose, apply, verify, judge, sign, review and promote each step."),
    "submit": (
        "changeset_cmds",
        "Send a person's patch through the gate: apply, sandbox verify, policy, sign, review.",
    ),
    "runs": ("run_cmds", "Runs, newest first: status, steps, changesets."),
    "resume": ("run_cmds", "Resume an interrupted or killed run from its last checkpoint."),
    "changeset": ("changeset_cmds", "Changesets: signed, attested candidates waiting for or past review."),
    "generation": ("generation_cmds", "Generations: numbered, promoted states of a repo."),
    "rollback": ("generation_cmds", "Make an earlier generation current again, atomically; the abandoned one is kept."),
    "export": ("changeset_cmds", "Push the current generation to the repo's origin as a branch."),
    "model": ("model_cmds", "GGUF models known to the workspace, and which role uses which."),
    "policy": ("policy_cmds", "Policies: the rules every changeset is judged by."),
    "sandbox": ("sandbox_cmds", "Sandboxes: where every build and test command runs."),
    "self": ("self_cmds", "Converge's own source: checks, upgrade and rollback."),
    "stats": ("stats_cmds", "Workspace metrics over all runs."),
    "doctor": ("doctor_cmds", "Check the sandbox engine, image, models and keys; exit 1 if something is missing."),
    "watch": ("watch_cmds", "Keep repo maps fresh and run task files dropped into spec/inbox/."),
    "serve": (
        "serve_cmds",
        "Review in the browser: runs, changesets, generations, models, stats. Prints a URL with a session token.",
    ),
    "eval": ("eval_cmds", "Evaluate models and agents on task suites with hidden checks."),
    "mcp": (
        "mcp_cmds",
        "An MCP server over stdio: other agents submit patches through Converge's gate (no approving, no rollback).",
    ),
}


@functools.cache
def module_commands(module: str) -> dict[str, _click.Command]:
    """The commands ``orchestrator.cli.<module>`` registers, by name (the module is imported here)."""
    scratch = typer.Typer(rich_markup_mode=None, add_completion=False)
    importlib.import_module(f"orchestrator.cli.{module}").register(scratch)
    return dict(typer.main.get_group(scratch).commands)


class LazyCommands(TyperGroup):
    """The top-level group: commands come from :data:`COMMANDS`, each module imported on first use."""

    def list_commands(self, ctx: _click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        return module_commands(COMMANDS[cmd_name][0]).get(cmd_name)

    def format_commands(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, summary) for name, (_, summary) in COMMANDS.items()])


app = typer.Typer(
    name="converge",
    help="Converge: let local models refine your code — sandboxed, signed, always reversible.",
    cls=LazyCommands,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain Click usage errors: "Usage: ..." and one "Error: ..." line
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


def main() -> None:
    """Console-script entry point."""
    app()
