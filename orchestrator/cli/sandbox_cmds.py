"""`converge sandbox run N -- CMD...` and `converge sandbox image`."""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated

import typer

from orchestrator.cli._common import JsonFlag, emit_json, handled, progress, say, workspace
from orchestrator.sandbox import base, factory
from orchestrator.sandbox.docker_backend import connect
from orchestrator.sandbox.image import ensure_image, resolve
from orchestrator.store import worktrees


def register(app: typer.Typer) -> None:
    """Add the sandbox commands to ``app``."""
    group = typer.Typer(help="Sandboxes: where every build and test command runs.", no_args_is_help=True)
    app.add_typer(group, name="sandbox")

    @group.command("run")
    @handled
    def run(
        repo: Annotated[str, typer.Argument(help="Registered repo name.")],
        command: Annotated[list[str], typer.Argument(help="The command and its arguments (after --).")],
        timeout: Annotated[
            float | None, typer.Option("--timeout", min=0.001, help="Seconds before the command is killed.")
        ] = None,
        json_out: JsonFlag = False,
    ) -> None:
        """Run a command in a fresh sandbox over the current generation of REPO; its exit code passes through."""
        ws = workspace()
        ws.repo(repo)
        with worktrees.generation_worktree(ws, repo) as tree, factory.open_sandbox(ws, repo, tree, label="cli") as box:
            progress(f"sandbox over {repo} ({box.spec.image.tag}): {base.describe(command)}")
            result = box.run(command, timeout)
        if json_out:
            emit_json(result.model_dump(mode="json"))
        else:
            sys.stdout.write(result.stdout_tail)
            sys.stderr.write(result.stderr_tail)
            if result.timed_out:
                progress(f"killed at the {timeout or ws.config().sandbox.timeout:g} s timeout")
            if result.oom_killed:
                progress("killed: out of memory (base.memory)")
        if result.timed_out:
            raise typer.Exit(base.TIMEOUT_EXIT)
        raise typer.Exit(result.exit_code)

    @group.command("image")
    @handled
    def image(json_out: JsonFlag = False) -> None:
        """Build the sandbox base image of the workspace's recipe (offline) unless it exists."""
        spec = resolve(workspace())
        with contextlib.closing(connect()) as client:
            tag = ensure_image(client, spec)
        if json_out:
            emit_json({"tag": tag, "digest": spec.digest, "recipe": str(spec.recipe_path), "mounts": list(spec.mounts)})
        else:
            say(f"{tag} (recipe {spec.recipe_path})")
