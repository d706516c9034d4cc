"""`converge serve`: the local review web app."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli._common import handled, progress, say, workspace

DEFAULT_PORT = 8750


def register(app: typer.Typer) -> None:
    """Add `converge serve` to ``app``."""

    @app.command("serve")
    @handled
    def serve(
        port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")] = DEFAULT_PORT,
        host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback by default).")] = "127.0.0.1",
        allow_remote: Annotated[
            bool,
            typer.Option(
                "--allow-remote",
                help="Listen on a non-loopback --host: whoever reaches it with the token can approve and roll back.",
            ),
        ] = False,
    ) -> None:
        """Review in the browser: runs, changesets, generations, models, stats. Prints a URL with a session token."""
        from orchestrator.serve import server  # noqa: PLC0415  lazy: the web stack loads only for this command

        server.serve(workspace(), host, port, allow_remote, announce=say, warn=progress)
