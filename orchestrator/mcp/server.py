"""The MCP server: the tools and resources of a workspace, its instructions, and errors as the CLI says them.

A tool that fails with a ConvergeError answers ``isError`` with the CLI's one line
(``converge: error: ...``) for the model to read and act on; arguments that fail their schema
are said in one line too. Resources are JSON documents: the pending changesets, each one, and
each repo's current generation; ``resources/list`` names the current ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.types import CallToolResult, Resource, TextContent, ToolAnnotations
from pydantic import BaseModel, ValidationError

from orchestrator import __version__
from orchestrator.errors import BadInput, ConvergeError
from orchestrator.mcp.actions import GateTools
from orchestrator.mcp.background import RunTools
from orchestrator.mcp.reads import ReadTools, changeset_view, repo_info
from orchestrator.store import changesets
from orchestrator.store.workspace import Workspace

INSTRUCTIONS = """\
Converge is the gate for changes to the repos of this workspace: a change is tested in a
network-less sandbox, judged by a declarative policy, signed, and kept as a changeset that a
person approves before it becomes the repo's next generation (and can be rolled back).

Work like this: `repos`, then `repo_map` and `read_file` to find your way; `sandbox_run` to try
commands; `submit_patch` with a unified diff against the current generation; `changeset` to
follow it. `refine` starts Converge's own models on a goal; `run` follows that run.

You cannot approve or reject a changeset, promote a change, change a policy or roll a repo
back: those stay with the person (the `converge` command line or the review page).
`capabilities` lists what you can do and the size limits."""

PENDING_URI = "converge://changesets/pending"
REPOS_URI = "converge://repos"
READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
ADDITIVE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)


def error_line(exc: BaseException) -> str | None:
    """The CLI's one-line message for ``exc``, or None for an exception that is a bug."""
    if isinstance(exc, ConvergeError):
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"converge: error: {text}"
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"converge: error: {where}{exc.strerror or exc}"
    if isinstance(exc, ValidationError):
        said = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return f"converge: error: {said}"
    return None


class ConvergeServer(MCPServer[None]):
    """MCPServer with Converge's errors and a resource list that follows the workspace."""

    def __init__(self, ws: Workspace) -> None:
        super().__init__(name="converge", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING")
        self.ws = ws

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            line = error_line(exc.__cause__) if exc.__cause__ is not None else None
            if line is None:
                raise
            return CallToolResult(content=[TextContent(type="text", text=line)], is_error=True)

    async def list_resources(self) -> list[Resource]:
        listed = await super().list_resources()
        return listed + await anyio.to_thread.run_sync(self._current_resources)

    def _current_resources(self) -> list[Resource]:
        found = [
            Resource(
                uri=f"converge://repos/{record.name}/generation",
                name=f"{record.name} generation",
                description=f"The current generation of {record.name}.",
                mime_type="application/json",
            )
            for record in self.ws.repos()
        ]
        found += [
            Resource(
                uri=f"converge://changesets/{cs.id}",
                name=f"changeset {cs.id}",
                description=f"{cs.repo}: {cs.message.splitlines()[0] if cs.message else cs.id} ({cs.verdict})",
                mime_type="application/json",
            )
            for cs in changesets.list_changesets(self.ws, status="pending")
        ]
        return found


def _document(make: Callable[[], object]) -> str:
    """A resource's JSON; a ConvergeError becomes the resource error a client sees, in the CLI's words."""
    try:
        value = make()
    except ConvergeError as exc:
        line = error_line(exc)
        raise (ResourceNotFoundError(line) if isinstance(exc, BadInput) else ResourceError(line)) from exc
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return json.dumps(data, indent=2, sort_keys=True)


def _described(tool: Callable[..., object]) -> str:
    """The tool's docstring as one paragraph: its description for the model."""
    return " ".join((tool.__doc__ or "").split())


def build_server(ws: Workspace) -> ConvergeServer:
    """The server of ``ws``: its tools, resources and instructions."""
    server = ConvergeServer(ws)
    reads, gate, background = ReadTools(ws), GateTools(ws), RunTools(ws)
    looks: list[Callable[..., BaseModel]] = [reads.capabilities, reads.repos, reads.generations, reads.read_file]
    looks += [reads.repo_map, reads.changeset, background.run]
    acts: list[Callable[..., BaseModel]] = [gate.submit_patch, gate.sandbox_run, background.refine]
    for tools, hints in ((looks, READ_ONLY), (acts, ADDITIVE)):
        for tool in tools:
            server.add_tool(tool, description=_described(tool), annotations=hints)

    @server.resource(PENDING_URI, name="pending changesets", mime_type="application/json")
    def pending() -> str:
        """The changesets waiting for a person's review, newest first."""
        return _document(lambda: [cs.to_json() for cs in changesets.list_changesets(ws, status="pending")])

    @server.resource(REPOS_URI, name="repos", mime_type="application/json")
    def repos() -> str:
        """Every registered repo with its current generation."""
        return _document(reads.repos)

    @server.resource("converge://repos/{repo}/generation", name="generation", mime_type="application/json")
    def generation(repo: str) -> str:
        """The current generation of one repo."""
        return _document(lambda: repo_info(ws, repo))

    @server.resource("converge://changesets/{id}", name="changeset", mime_type="application/json")
    def changeset(id: str) -> str:
        """One changeset: status, verdict, tests, diff, and whether it verifies."""
        return _document(lambda: changeset_view(ws, id))

    return server


def serve(ws: Workspace) -> None:
    """Serve ``ws`` over stdio until the client closes the connection."""
    build_server(ws).run("stdio")
