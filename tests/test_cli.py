"""The command table: `converge --help` without loading commands, listings without heavy packages, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli import COMMANDS, module_commands
from orchestrator.store.reports import CommandResult, TestReport
from orchestrator.store.workspace import Workspace
from tests.conftest import converge

# What a listing must not load: each costs 0.1-0.5 s of start-up (bench/cli.py measures the result).
HEAVY = ("docker", "git", "langgraph", "llama_cpp", "cyclonedx", "cryptography", "jsonschema", "detect_secrets")
LISTINGS = (["repos"], ["runs"], ["generation", "list", "sample"], ["changeset", "list"])


def imported(*args: str) -> set[str]:
    """Modules a real `converge ARGS` imports (from ``-X importtime``); the command must succeed."""
    proc = converge(*args, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 0, proc.stderr
    lines = [ln.split("|")[-1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")]
    found = set(lines[1:])  # the first line is the header
    assert "orchestrator.cli" in found
    return found


def test_each_summary_is_the_start_of_its_commands_help() -> None:
    for name, (module, summary) in COMMANDS.items():
        command = module_commands(module)[name]
        assert (command.help or "").startswith(summary.rstrip(".")), name


def test_help_lists_every_command_and_loads_none() -> None:
    modules = imported("--help")
    assert not [m for m in modules if m.startswith("orchestrator.cli.") or m.split(".")[0] in (*HEAVY, "pydantic")]
    output = converge("--help", check=True).stdout
    assert all(f"  {name} " in output for name in COMMANDS)


@pytest.mark.parametrize("args", LISTINGS, ids=" ".join)
def test_a_listing_loads_no_heavy_package(sample_ws: Workspace, args: list[str]) -> None:
    modules = imported("-w", str(sample_ws.root), *args)
    assert not sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_an_unknown_command_is_a_usage_error() -> None:
    proc = converge("nope")
    assert proc.returncode == 2 and "No such command 'nope'" in proc.stderr


def test_a_sandbox_failure_is_not_a_usage_error(sample_ws: Workspace, tmp_path: Path) -> None:
    proc = converge(
        "-w", str(sample_ws.root), "sandbox", "run", "sample", "--", "true",
        env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"},
    )  # fmt: skip
    assert proc.returncode == 125, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("converge: error: no Docker engine:") and "make setup" in line


def test_an_error_with_json_is_one_json_document_on_stdout(tmp_path: Path) -> None:
    proc = converge("-w", str(tmp_path / "nowhere"), "repos", "--json")
    assert proc.returncode == 2
    error = json.loads(proc.stdout)["error"]
    assert error["exit"] == 2 and error["kind"] == "WorkspaceError" and "not a Converge workspace" in error["message"]


def test_a_bad_environment_value_is_named_as_the_variable(tmp_path: Path) -> None:
    converge("init", str(tmp_path / "w"), check=True)
    proc = converge("-w", str(tmp_path / "w"), "repos", env={"CONVERGE_SANDBOX__TIMEOUT": "soon"})
    assert proc.returncode == 2
    assert "environment variable CONVERGE_SANDBOX__TIMEOUT: sandbox.timeout" in proc.stderr
    assert "converge.toml" not in proc.stderr


def test_model_use_refuses_a_role_no_card_runs_on(tmp_path: Path) -> None:
    converge("init", str(tmp_path / "w"), check=True)
    proc = converge("-w", str(tmp_path / "w"), "model", "use", "default", "--role", "wizard")
    assert proc.returncode == 2 and "--role 'wizard'" in proc.stderr and "coder, planner" in proc.stderr


def test_a_hung_suite_is_reported_as_timed_out() -> None:
    command = CommandResult(argv=["python", "-m", "pytest"], exit_code=124, duration=600.0, timed_out=True)
    assert TestReport(ran=False, command=command).summary == "tests timed out after 600s"
