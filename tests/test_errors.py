"""The error table: real docker, git and llama.cpp exceptions become the right ConvergeError and exit code."""

from __future__ import annotations

import contextlib
import errno
import gc
import inspect
import re
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors
import git
import jinja2
import pytest
import requests
import typer
from llama_cpp import Llama

from orchestrator import errors
from orchestrator.cli._common import EXIT_CODES, exit_code, handled
from orchestrator.errors import (
    ConvergeError,
    DiskFull,
    GitError,
    ModelError,
    RepoError,
    SandboxError,
    UsageError,
    translate,
)
from orchestrator.models.llama import quiet_stderr
from tests.conftest import MakeRepo

ROOT = Path(__file__).resolve().parent.parent


def raised(make: Callable[[], object]) -> Exception:
    """The exception ``make`` raises (it must raise one)."""
    try:
        make()
    except Exception as exc:
        return exc
    raise AssertionError("expected an exception")


def test_git_exceptions(tmp_path: Path, make_repo: MakeRepo) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    where = "registering"
    cases = [
        (raised(lambda: git.Repo(plain)), git.InvalidGitRepositoryError, RepoError,
         f"{where}: not a git repository; give the top directory"),
        (raised(lambda: git.Repo(tmp_path / "gone")), git.NoSuchPathError, RepoError,
         f"{where}: no such path; give the top directory"),
        (raised(lambda: git.Repo.clone_from(str(tmp_path / "nowhere"), tmp_path / "dest")), git.GitCommandError,
         GitError, f"{where}: fatal: repository '{tmp_path / 'nowhere'}' does not exist"),
        (raised(lambda: subprocess.run(["git", "rev-parse", "--verify", "nope"], cwd=make_repo(), check=True,
                                       capture_output=True, text=True)),
         subprocess.CalledProcessError, GitError, f"{where}: fatal: Needed a single revision"),
    ]  # fmt: skip
    for exc, third_party, kind, message in cases:
        assert isinstance(exc, third_party)
        found = translate(exc, "git", where)
        assert type(found) is kind and exit_code(found) == 2
        assert str(found).startswith(message) and "\n" not in str(found), str(found)


def test_docker_exceptions_are_sandbox_failures_not_usage_errors(tmp_path: Path) -> None:
    socket = f"unix://{tmp_path / 'no-engine.sock'}"
    detect = raised(lambda: docker.DockerClient(base_url=socket))  # asks the engine for its API version
    client = docker.DockerClient(base_url=socket, version="1.41")
    ping = raised(client.ping)
    client.close()
    assert type(detect) is docker.errors.DockerException
    assert isinstance(ping, requests.exceptions.RequestException)
    found = [translate(exc, "docker", "no Docker engine answers") for exc in (detect, ping)]
    del detect, ping
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()  # docker-py leaks the socket of a refused connection (as connect() knows)
    for error in found:
        assert type(error) is SandboxError and exit_code(error) == 125
        assert str(error).startswith("no Docker engine answers: ") and "\n" not in str(error)
        assert str(error).endswith(f"; {errors.ENGINE_FIX}")


@pytest.mark.docker
def test_an_engine_answer_is_a_sandbox_failure() -> None:
    with contextlib.closing(docker.from_env()) as client:
        exc = raised(lambda: client.containers.get("converge-no-such-container"))
    assert isinstance(exc, docker.errors.NotFound) and isinstance(exc, docker.errors.APIError)
    found = translate(exc, "docker", "sandbox container")
    assert type(found) is SandboxError and exit_code(found) == 125 and "converge doctor" in str(found)


def test_llama_exceptions(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + b"\0" * 64)
    with quiet_stderr():
        load = raised(lambda: Llama(model_path=str(garbage), verbose=False))
    found = translate(load, "llama", f"{garbage}: llama.cpp cannot load it")
    assert type(found) is ModelError and exit_code(found) == 2
    assert str(found).startswith(f"{garbage}: llama.cpp cannot load it: ") and "\n" not in str(found)
    template = raised(lambda: jinja2.Template("{% for m in messages %}"))
    assert isinstance(template, jinja2.TemplateError)
    found = translate(template, "llama", "chat template of model 'm' rejects the prompt")
    assert type(found) is ModelError and str(found).endswith("; fix the model's chat template")


def test_a_full_disk_is_its_own_error_at_every_boundary(tmp_path: Path) -> None:
    full = raised(lambda: Path("/dev/full").write_text("x"))
    assert isinstance(full, OSError) and full.errno == errno.ENOSPC
    quota = OSError(errno.EDQUOT, "Disk quota exceeded", str(tmp_path / "f"))
    git_full = git.GitCommandError(["git", "commit"], 128, stderr="fatal: write error: No space left on device")
    for exc in (full, quota, git_full):
        for boundary in ("docker", "git", "llama", "os"):
            found = translate(exc, boundary, "writing")
            assert type(found) is DiskFull and exit_code(found) == 74, (boundary, exc)
            assert str(found).endswith("free space on that device, then run the command again")


def test_the_cli_maps_os_errors_through_the_table(tmp_path: Path) -> None:
    @handled
    def write(path: Path) -> None:
        path.write_text("x")

    with pytest.raises(typer.Exit) as full:
        write(Path("/dev/full"))
    assert full.value.exit_code == 74
    with pytest.raises(typer.Exit) as missing:
        write(tmp_path / "no" / "such" / "dir")
    assert missing.value.exit_code == 2
    assert type(translate(raised((tmp_path / "none").read_text), "os")) is UsageError


def test_every_rule_of_the_table_has_a_case_above() -> None:
    source = Path(__file__).read_text()
    for rule in errors.TABLE:
        if rule.raised != "builtins.Exception":  # each boundary's catch-all
            module, _, name = rule.raised.rpartition(".")
            assert f"{module.split('.')[0]}." in source and f".{name}" in source, f"no case for {rule.raised}"


def test_exit_codes_match_the_tree_in_the_errors_docstring() -> None:
    doc = errors.__doc__ or ""
    for kind, code in EXIT_CODES:
        assert re.search(rf"{kind.__name__}\s+exit {code}:", doc), kind.__name__
    assert exit_code(SandboxError("x")) == 125 and exit_code(errors.ConflictError("x")) == 1


def test_every_error_class_is_raised_somewhere() -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "orchestrator").rglob("*.py") if p.name != "errors.py")
    made_by_translate = {rule.becomes.__name__ for rule in errors.TABLE} | {"DiskFull"}
    groups = {"ConvergeError", "BadInput", "Refused"}
    for name, kind in inspect.getmembers(errors, inspect.isclass):
        if issubclass(kind, ConvergeError) and name not in groups:
            assert f"raise {name}(" in source or name in made_by_translate, f"{name} is never raised"
