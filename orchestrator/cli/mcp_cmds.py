"""`converge mcp`: Converge's gate as an MCP server over stdio, for other agents."""

from __future__ import annotations

import typer

from orchestrator.cli._common import handled, workspace


def register(app: typer.Typer) -> None:
    """Add ``mcp`` to ``app``."""

    @app.command("mcp")
    @handled
    def mcp() -> None:
        """An MCP server over stdio: other agents submit patches through Converge's gate (no approving, no rollback)."""
        from orchestrator.mcp.server import serve  # noqa: PLC0415  lazy: the MCP SDK loads only for this command

        serve(workspace())
