"""`converge mcp` driven by the MCP SDK's own client over stdio, against a real workspace and the Docker sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.types import CallToolResult

from orchestrator.store import changesets, generations
from orchestrator.store.setup import add_repo
from orchestrator.store.workspace import Workspace
from tests.conftest import GIT_ENV, ROOT, MakeRepo, converge, git

# The Docker SDK's exec streams leave their unix socket to the garbage collector (see test_changesets).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)

TOOLS = {
    "capabilities",
    "repos",
    "generations",
    "read_file",
    "repo_map",
    "submit_patch",
    "changeset",
    "refine",
    "run",
    "sandbox_run",
}
STOCK = "inventory/stock.py"
REPORT = "inventory/report.py"
CI_PATCH = """\
diff --git a/.github/workflows/ci.yml b/.github/workflows/ci.yml
new file mode 100644
--- /dev/null
+++ b/.github/workflows/ci.yml
@@ -0,0 +1 @@
+on: push
"""

Scenario = Callable[[ClientSession], Awaitable[None]]


def drive(ws: Workspace, scenario: Scenario, log: Path) -> None:
    """Start `python -m orchestrator -w WS mcp` as the SDK's stdio client does, and run ``scenario`` against it."""
    env = {k: v for k, v in os.environ.items() if k != "CONVERGE_WORKSPACE"} | GIT_ENV
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "orchestrator", "-w", str(ws.root), "mcp"], env=env, cwd=ROOT
    )

    async def session() -> None:
        with log.open("a") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as client:
                await client.initialize()
                await scenario(client)

    anyio.run(session)


async def call(client: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool call that must succeed; its structured result."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, f"{tool}: {_text(result)}"
    assert result.structured_content is not None
    return result.structured_content


async def fails(client: ClientSession, tool: str, **arguments: Any) -> str:
    """A tool call that must fail; its one-line message."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"{tool} did not fail: {_text(result)}"
    text = _text(result)
    assert "\n" not in text
    return text


def _text(result: CallToolResult) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def resource(client: ClientSession, uri: str) -> Any:
    contents = (await client.read_resource(uri)).contents
    return json.loads(getattr(contents[0], "text", ""))


def _state(ws: Workspace) -> tuple[set[tuple[str, int]], str]:
    """Every file of the workspace outside the disposable cache/ with its size, and every ref of the sample repo."""
    found = (p.relative_to(ws.root) for p in ws.root.rglob("*") if p.is_file())
    files = {(str(p), (ws.root / p).stat().st_size) for p in found if p.parts[0] != "cache"}
    return files, git(ws.src / "sample", "for-each-ref")


def _repo_state(ws: Workspace) -> tuple[str, str, str, list[str]]:
    """What a command run in a sandbox must leave as it was: the checkout, the refs, the worktrees, the changesets."""
    repo = ws.src / "sample"
    listing = git(repo, "status", "--porcelain", "--ignored"), git(repo, "for-each-ref"), git(repo, "worktree", "list")
    return (*listing, [cs.id for cs in changesets.list_changesets(ws)])


def _reviewer(ws: Workspace, tmp_path: Path) -> None:
    """A person's SSH key, so that `converge changeset approve` can sign."""
    key = tmp_path / "alice_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f", str(key)], check=True)
    cfg = ws.state / "converge.toml"
    cfg.write_text(cfg.read_text() + f'\n[signing]\nuser_key = "{key}"\nuser_principal = "alice@example.com"\n')


def _patch(src: Path, rel: str, old: str, new: str) -> str:
    """The unified diff of one replacement in ``src`` (left unchanged)."""
    target = src / rel
    original = target.read_text()
    assert old in original
    target.write_text(original.replace(old, new, 1))
    diff = git(src, "diff") + "\n"
    target.write_text(original)
    return diff


# --- what the server offers -------------------------------------------------------------------


def test_every_tool_has_a_schema_and_the_server_says_what_an_agent_cannot_do(
    sample_ws: Workspace, tmp_path: Path
) -> None:
    async def scenario(client: ClientSession) -> None:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == TOOLS  # nothing approves, rejects, promotes, rolls back or edits policy
        for tool in tools.values():
            assert tool.input_schema["type"] == "object"
            assert tool.output_schema is not None
            assert tool.description and len(tool.description) > 40 and "\n" not in tool.description
        assert tools["submit_patch"].input_schema["required"] == ["repo", "patch", "message"]
        assert tools["read_file"].input_schema["required"] == ["repo", "path"]
        looks, acts = tools["repos"].annotations, tools["submit_patch"].annotations
        assert looks is not None and looks.read_only_hint
        assert acts is not None and acts.destructive_hint is False

        said = await call(client, "capabilities")
        cannot = " ".join(said["cannot"])
        for what in ("approve", "reject", "promote", "policy", "roll back"):
            assert what in cannot
        assert said["limits"]["patch_bytes"] == 2 * 1024 * 1024

    drive(sample_ws, scenario, tmp_path / "server.log")


def test_instructions_tell_the_agent_that_approval_and_rollback_stay_with_the_person(
    sample_ws: Workspace, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CONVERGE_WORKSPACE"}
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "orchestrator", "-w", str(sample_ws.root), "mcp"], env=env, cwd=ROOT
    )

    async def session() -> str:
        with (tmp_path / "server.log").open("w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as client:
                return (await client.initialize()).instructions or ""

    instructions = anyio.run(session)
    assert "You cannot approve or reject a changeset" in instructions
    assert "roll a repo\nback" in instructions


def test_reads_repos_generations_files_maps_and_resources(sample_ws: Workspace, tmp_path: Path) -> None:
    source = sample_ws.src / "sample"
    head = generations.current(sample_ws, "sample").commit

    async def scenario(client: ClientSession) -> None:
        repos = await call(client, "repos")
        assert repos["repos"] == [{"name": "sample", "generation": 0, "commit": head, "is_self": False}]
        lineage = await call(client, "generations", repo="sample")
        assert (lineage["current"], [g["status"] for g in lineage["generations"]]) == (0, ["current"])

        stock = await call(client, "read_file", repo="sample", path=STOCK)
        assert stock["content"] == (source / STOCK).read_text()
        assert (stock["generation"], stock["truncated"]) == (0, False)
        same = await call(client, "read_file", repo="sample", path="./inventory//stock.py", generation=0)
        assert same["path"] == STOCK and same["content"] == stock["content"]

        mapped = await call(client, "repo_map", repo="sample", goal="normalise sku", budget=400)
        assert mapped["files"] == 7 and mapped["map"].startswith("Repository map")
        assert "def normalise_sku(sku)" in mapped["map"]

        listed = {str(r.uri) for r in (await client.list_resources()).resources}
        assert {"converge://changesets/pending", "converge://repos", "converge://repos/sample/generation"} <= listed
        assert await resource(client, "converge://changesets/pending") == []
        current = await resource(client, "converge://repos/sample/generation")
        assert (current["name"], current["generation"], current["commit"]) == ("sample", 0, head)

    drive(sample_ws, scenario, tmp_path / "server.log")


def test_hostile_input_gets_the_cli_message_and_changes_nothing(sample_ws: Workspace, tmp_path: Path) -> None:
    w = ["-w", str(sample_ws.root)]
    cli_unknown = converge(*w, "generation", "list", "nope").stderr.strip()
    assert cli_unknown.startswith("converge: error: unknown repo 'nope'")
    cli_changeset = converge(*w, "changeset", "show", "abcd1234").stderr.strip()
    before = _state(sample_ws)

    async def scenario(client: ClientSession) -> None:
        huge = "+" * (50 * 1024 * 1024)
        said = await fails(client, "submit_patch", repo="sample", patch=huge, message="everything")
        assert said == (
            f"converge: error: patch: {len(huge)} bytes is over the 2 MiB limit of one patch; "
            "split the change into smaller patches"
        )
        assert await fails(client, "submit_patch", repo="nope", patch=CI_PATCH, message="m") == cli_unknown
        assert await fails(client, "generations", repo="nope") == cli_unknown
        climb = "../ws/.converge/repos.json"
        assert "'..' is not allowed" in await fails(client, "read_file", repo="sample", path=climb)
        assert "'..' is not allowed" in await fails(client, "read_file", repo="sample", path="inventory/../../x")
        assert "absolute" in await fails(client, "read_file", repo="sample", path="/etc/passwd")
        assert "inside .git/" in await fails(client, "read_file", repo="sample", path=".git/config")
        assert "a directory" in await fails(client, "read_file", repo="sample", path="inventory")
        assert "no such file" in await fails(client, "read_file", repo="sample", path="missing.py")
        said = await fails(client, "read_file", repo="sample", path=STOCK, generation=7)
        assert said == "converge: error: generation 7 of sample: no such generation (known: 0)"
        assert await fails(client, "changeset", id="abcd1234") == cli_changeset
        assert "not an id" in await fails(client, "changeset", id="../../.converge/repos")
        assert "not an id" in await fails(client, "run", id="x/../../y")
        assert "unknown run 'r-none'" in await fails(client, "run", id="r-none")
        assert "NUL" in await fails(client, "sandbox_run", repo="sample", command=["echo", "a\0b"])
        assert "command: empty" in await fails(client, "sandbox_run", repo="sample", command=[])
        assert "budget 10: must be between 256 and 50000" in await fails(client, "repo_map", repo="sample", budget=10)
        assert "budget: Input should be a valid integer" in await fails(
            client, "repo_map", repo="sample", budget="lots"
        )
        assert "goal: empty" in await fails(client, "refine", repo="sample", goal="  ")
        assert "max_steps 99" in await fails(client, "refine", repo="sample", goal="g", max_steps=99)
        assert "message: empty" in await fails(client, "submit_patch", repo="sample", patch=CI_PATCH, message="")
        with pytest.raises(Exception, match="unknown repo 'nope'"):
            await client.read_resource("converge://repos/nope/generation")

    drive(sample_ws, scenario, tmp_path / "server.log")
    assert _state(sample_ws) == before
    assert not (sample_ws.cache / "mcp").exists()


# --- through the gate, in the Docker sandbox ----------------------------------------------------


@pytest.mark.docker
def test_a_submitted_patch_is_a_signed_pending_changeset_that_a_person_approves(
    ws: Workspace, make_repo: MakeRepo, tmp_path: Path
) -> None:
    _reviewer(ws, tmp_path)
    src = make_repo(name="sample-src")
    add_repo(ws, str(src), name="sample")
    w = ["-w", str(ws.root)]
    found: dict[str, str] = {}

    async def submit(client: ClientSession) -> None:
        done = await call(client, "submit_patch", repo="sample", patch=CI_PATCH, message="add CI")
        assert (done["status"], done["verdict"], done["risk"]) == ("pending", "review", "high")
        assert done["generation"] is None
        assert done["tests"] == "5 passed, 0 failed, 0 errors, 0 skipped"
        assert "converge changeset approve" in done["next"] and "you cannot" in done["next"]
        again = await call(client, "submit_patch", repo="sample", patch=CI_PATCH, message="add CI")
        assert again["id"] == done["id"]  # the same patch is the same changeset

        shown = await call(client, "changeset", id=done["id"][:8])
        assert (shown["status"], shown["verified"], shown["problems"], shown["tests_failed"]) == (
            "pending",
            True,
            [],
            [],
        )
        assert "+on: push" in shown["diff"]
        pending = await resource(client, "converge://changesets/pending")
        assert [c["id"] for c in pending] == [done["id"]]
        listed = {str(r.uri) for r in (await client.list_resources()).resources}
        assert f"converge://changesets/{done['id']}" in listed
        assert (await resource(client, f"converge://changesets/{done['id']}"))["verdict"] == "review"
        found["id"] = done["id"]

        # the gate says no: a secret is rejected by the policy (an answer, not an error) ...
        secret = 'API_KEY = "Zx81bQ2LmN4pR7sT9vW3yA6cE0gH5jK8"\n'
        leaky = _patch(src, REPORT, "import math\n", "import math\n\n" + secret)
        rejected = await call(client, "submit_patch", repo="sample", patch=leaky, message="add a key")
        assert (rejected["status"], rejected["verdict"]) == ("rejected", "reject")
        assert "secret" in str(rejected["reason"]).lower()
        # ... failing tests make no changeset, and a patch that does not apply is bad input
        broken = _patch(src, REPORT, "key=lambda item: item.unit_price", "key=lambda item: -item.unit_price")
        said = await fails(client, "submit_patch", repo="sample", patch=broken, message="break cheapest")
        assert said.startswith("converge: error: changeset ") and "tests do not pass in the sandbox" in said
        stale = "--- a/nope.py\n+++ b/nope.py\n@@ -1 +1 @@\n-x\n+y\n"
        assert "does not apply" in await fails(client, "submit_patch", repo="sample", patch=stale, message="m")

    drive(ws, submit, tmp_path / "server.log")
    cs_id = found["id"]
    assert generations.current(ws, "sample").number == 0  # nothing promoted by the agent

    listed = json.loads(converge(*w, "changeset", "list", "--status", "pending", "--json", check=True).stdout)
    assert [c["id"] for c in listed] == [cs_id]
    shown = json.loads(converge(*w, "changeset", "show", cs_id, "--json", check=True).stdout)
    assert [s["principal"] for s in shown["signatures"]] == ["converge@workspace"]
    assert converge(*w, "changeset", "verify", cs_id).returncode == 0
    commit = shown["commit"]
    verified = subprocess.run(["git", "verify-commit", commit], cwd=ws.src / "sample", capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr

    approved = json.loads(converge(*w, "changeset", "approve", cs_id, "--json", check=True).stdout)
    assert (approved["status"], approved["generation"], approved["decided_by"]) == ("approved", 1, "alice@example.com")

    async def after(client: ClientSession) -> None:
        lineage = await call(client, "generations", repo="sample")
        assert [(g["number"], g["status"], g["changesets"]) for g in lineage["generations"]] == [
            (0, "superseded", []),
            (1, "current", [cs_id]),
        ]
        shown = await call(client, "changeset", id=cs_id)
        assert (shown["status"], shown["generation"], shown["verified"]) == ("approved", 1, True)
        assert (await call(client, "read_file", repo="sample", path=".github/workflows/ci.yml"))["content"] == (
            "on: push\n"
        )
        said = await fails(client, "read_file", repo="sample", path=".github/workflows/ci.yml", generation=0)
        assert "no such file" in said
        assert await resource(client, "converge://changesets/pending") == []

    drive(ws, after, tmp_path / "server.log")


@pytest.mark.docker
def test_sandbox_run_runs_a_command_over_the_current_generation(sample_ws: Workspace, tmp_path: Path) -> None:
    before = _repo_state(sample_ws)

    async def scenario(client: ClientSession) -> None:
        ran = await call(
            client, "sandbox_run", repo="sample", command=["sh", "-c", "ls; echo oops >&2; touch made.txt; exit 3"]
        )
        assert (ran["exit_code"], ran["timed_out"], ran["generation"]) == (3, False, 0)
        assert "inventory" in ran["stdout_tail"] and ran["stderr_tail"] == "oops\n"
        tests = await call(client, "sandbox_run", repo="sample", command=["python", "-m", "pytest", "-q"])
        assert tests["exit_code"] == 0 and "5 passed" in tests["stdout_tail"]
        offline = await call(
            client,
            "sandbox_run",
            repo="sample",
            command=["python", "-c", "import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)"],
        )
        assert offline["exit_code"] != 0  # no network in the sandbox
        assert "timeout 0" in await fails(client, "sandbox_run", repo="sample", command=["true"], timeout=0)
        assert "no such file" in await fails(client, "read_file", repo="sample", path="made.txt")

    drive(sample_ws, scenario, tmp_path / "server.log")
    assert _repo_state(sample_ws) == before  # the sandbox's checkout is thrown away


@pytest.mark.docker
def test_refine_starts_a_background_run_that_waits_for_a_person(sample_ws: Workspace, tmp_path: Path) -> None:
    plan = {
        "goal": "refine",
        "steps": [
            {"title": "Remove unused imports", "agent": "coder", "targets": [STOCK], "acceptance": ["tests pass"]}
        ],
    }
    edit = {"summary": "drop them", "edits": [{"path": STOCK, "search": "import os\nimport sys\n", "replace": ""}]}
    w = ["-w", str(sample_ws.root)]
    for role, answer in (("planner", plan), ("coder", edit)):
        replay = tmp_path / f"{role}.jsonl"
        replay.write_text(json.dumps({"text": json.dumps(answer)}) + "\n")
        converge(*w, "model", "use", f"replay:{replay}", "--role", role, check=True)
    found: dict[str, Any] = {}

    async def scenario(client: ClientSession) -> None:
        started = await call(client, "refine", repo="sample", goal="drop os and sys from stock.py", max_steps=1)
        assert started["status"] == "starting" and started["id"].startswith("r")
        deadline = time.monotonic() + 600  # a bound for a hung run, not a speed target
        progress = await call(client, "run", id=started["id"])
        while progress["status"] in ("starting", "running") and time.monotonic() < deadline:
            await anyio.sleep(0.5)
            progress = await call(client, "run", id=started["id"])
        found.update(progress)

    drive(sample_ws, scenario, tmp_path / "server.log")
    assert found["status"] == "waiting_review", found["log_tail"]
    assert "you cannot approve" in found["next"]
    assert f"signed changeset {found['waiting_on']}" in found["log_tail"]
    cs = changesets.load(sample_ws, found["waiting_on"])
    assert (cs.status, cs.run) == ("pending", found["id"])  # never auto-approved through MCP
    assert generations.current(sample_ws, "sample").number == 0
    listed = json.loads(converge(*w, "runs", "--json", check=True).stdout)
    assert [(r["id"], r["status"]) for r in listed] == [(found["id"], "waiting_review")]


def test_refine_takes_a_run_id_from_its_starter_only_when_it_is_a_new_name(sample_ws: Workspace) -> None:
    w = ["-w", str(sample_ws.root)]
    bad = converge(*w, "refine", "sample", "--goal", "g", "--run-id", "../escape")
    assert bad.returncode == 2
    assert "converge: error: --run-id '../escape': letters, digits, '.', '_' and '-' only" in bad.stderr
    assert not (sample_ws.state / "runs").exists()
