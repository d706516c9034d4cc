"""Workspace: init, discovery, registering repos, and the CLI's answers to bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.errors import ConfigError, RepoError, UsageError, WorkspaceError
from orchestrator.store import generations
from orchestrator.store.setup import add_repo, init_workspace
from orchestrator.store.storage import atomic_write_all
from orchestrator.store.workspace import LAYOUT, Workspace, find_workspace
from tests.conftest import MakeRepo, converge, git


def test_init_lays_out_the_template_and_is_idempotent(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "w")
    for part in LAYOUT:
        assert (ws.root / part).is_dir()
    assert (ws.state / "converge.toml").is_file()
    (ws.spec / "note.md").write_text("mine")
    again = init_workspace(tmp_path / "w")
    assert again.root == ws.root
    assert (ws.spec / "note.md").read_text() == "mine"


def test_init_refuses_a_foreign_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "thesis.tex").write_text("x")
    with pytest.raises(WorkspaceError, match=r"thesis\.tex"):
        init_workspace(tmp_path / "d")


def test_discovery_order_flag_env_parent(tmp_path: Path) -> None:
    a = init_workspace(tmp_path / "a")
    b = init_workspace(tmp_path / "b")
    deep = a.root / "src" / "x" / "y"
    deep.mkdir(parents=True)
    assert find_workspace(None, environ={}, cwd=deep).root == a.root
    assert find_workspace(None, environ={"CONVERGE_WORKSPACE": str(b.root)}, cwd=deep).root == b.root
    assert find_workspace(a.root, environ={"CONVERGE_WORKSPACE": str(b.root)}).root == a.root
    with pytest.raises(WorkspaceError, match="no workspace found"):
        find_workspace(None, environ={}, cwd=tmp_path)


def test_add_registers_clone_at_generation_zero(ws, make_repo: MakeRepo) -> None:  # type: ignore[no-untyped-def]
    src = make_repo()
    record = add_repo(ws, str(src), name="inv")
    gen = generations.current(ws, "inv")
    assert record.name == "inv"
    assert gen.number == 0
    assert gen.commit == git(src, "rev-parse", "HEAD")
    assert (ws.src / "inv" / "inventory" / "stock.py").is_file()
    assert git(ws.src / "inv", "rev-parse", "refs/converge/gen/0") == gen.commit
    assert git(ws.src / "inv", "symbolic-ref", "--short", "HEAD") == "converge", "a branch, not a detached HEAD"


def test_add_refuses_duplicates_and_non_git(ws, make_repo: MakeRepo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_repo()
    add_repo(ws, str(src), name="inv")
    with pytest.raises(RepoError, match="'inv' is already registered"):
        add_repo(ws, str(src), name="inv")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(RepoError, match="not a git repository"):
        add_repo(ws, str(plain))
    with pytest.raises(UsageError, match="no such path"):
        add_repo(ws, str(tmp_path / "missing"))


def test_corrupt_config_names_file_and_key(ws) -> None:  # type: ignore[no-untyped-def]
    (ws.state / "converge.toml").write_text("[run]\nmax_steps = -3\n")
    with pytest.raises(ConfigError, match=r"^converge.toml: run.max_steps: "):
        ws.config()
    (ws.state / "converge.toml").write_text("[run\n")
    with pytest.raises(ConfigError, match=r"converge\.toml: not valid TOML"):
        ws.config()
    (ws.state / "converge.toml").write_text("[sandbox]\nnetwork = true\n")
    with pytest.raises(ConfigError, match=r"sandbox\.network: Extra inputs are not permitted"):
        ws.config()


def test_env_overrides_file(ws) -> None:  # type: ignore[no-untyped-def]
    (ws.state / "converge.toml").write_text("[run]\nmax_steps = 4\n")
    assert ws.config().run.max_steps == 4

    assert load_config(ws.state, environ={"CONVERGE_RUN__MAX_STEPS": "9"}).run.max_steps == 9
    assert load_config(ws.state, {"run": {"max_steps": 2}}, environ={"CONVERGE_RUN__MAX_STEPS": "9"}).run.max_steps == 2


# --- the command line: JSON, exit codes, one-line errors --------------------------------------


def test_cli_init_add_repos_json(tmp_path: Path, make_repo: MakeRepo) -> None:
    src = make_repo()
    w = tmp_path / "w"
    assert converge("init", str(w), "--json", check=True).returncode == 0
    out = converge("-w", str(w), "add", str(src), "--name", "inv", "--json", check=True)
    assert json.loads(out.stdout)["generation"] == 0
    listed = json.loads(converge("repos", "--json", env={"CONVERGE_WORKSPACE": str(w)}, check=True).stdout)
    assert [(r["name"], r["generation"]) for r in listed] == [("inv", 0)]
    gens = json.loads(converge("generation", "list", "inv", "--json", cwd=w / "src", check=True).stdout)
    assert [(g["number"], g["status"], g["parent"]) for g in gens] == [(0, "current", None)]


BAD_INPUT = [
    (["add", "{plain}"], "not a git repository"),
    (["add", "{tmp}/nope"], "no such path"),
    (["add", "{src}", "--name", "inv"], "already registered"),
    (["generation", "list", "ghost"], "unknown repo 'ghost'"),
    (["rollback", "inv", "--to", "-1"], "generations start at 0"),
    (["rollback", "inv"], "no parent to roll back to"),
    (["rollback", "inv", "--to", "7"], "--to 7: generation 7 of 'inv' does not exist"),
    (["add", "{src}", "--name", ""], "--name: give a name"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path, make_repo: MakeRepo, args: list[str], message: str) -> None:
    src = make_repo()
    plain = tmp_path / "plain"
    plain.mkdir()
    w = tmp_path / "w"
    converge("init", str(w), check=True)
    converge("-w", str(w), "add", str(src), "--name", "inv", check=True)
    filled = [a.format(plain=plain, tmp=tmp_path, src=src) for a in args]
    proc = converge("-w", str(w), *filled)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_missing_workspace_and_corrupt_config(tmp_path: Path) -> None:
    proc = converge("repos", cwd=tmp_path)
    assert proc.returncode == 2
    assert "no workspace found" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    w = tmp_path / "w"
    converge("init", str(w), check=True)
    (w / ".converge" / "converge.toml").write_text("[models]\nmemory_budget = 'lots'\n")
    proc = converge("-w", str(w), "add", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.startswith("converge: error: converge.toml: models.memory_budget:")


def test_cli_debug_shows_traceback(tmp_path: Path) -> None:
    proc = converge("--debug", "repos", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr


@pytest.mark.parametrize("content", [b"[]", b'{"repos": [{"x": 1}]}', b"\xff\xfe", b"{"])
def test_a_damaged_registry_is_named_not_a_traceback(tmp_path: Path, content: bytes) -> None:
    w = tmp_path / "w"
    converge("init", str(w), check=True)
    (w / ".converge" / "repos.json").write_bytes(content)
    proc = converge("-w", str(w), "repos", "--json")
    assert proc.returncode == 2
    assert proc.stderr.startswith("converge: error: ") and "repos.json: corrupt" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert json.loads(proc.stdout)["error"]["kind"] == "WorkspaceError"  # --json: one document, even now


def test_files_written_together_are_whole_or_absent(tmp_path: Path) -> None:

    big = bytes(range(256)) * 1000
    first, second = tmp_path / "a" / "one.json", tmp_path / "b" / "two.bin"
    atomic_write_all([(first, b"{}\n"), (second, big)], mode=0o600)
    assert first.read_bytes() == b"{}\n" and second.read_bytes() == big
    assert oct(second.stat().st_mode & 0o777) == "0o600"

    (tmp_path / "blocked").write_text("a file where a directory should be")
    with pytest.raises(OSError):
        atomic_write_all([(first, b"new\n"), (tmp_path / "blocked" / "x", b"y")])
    assert first.read_bytes() == b"{}\n"  # nothing renamed: the second could not even be written
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["blocked", "one.json", "two.bin"]


def test_a_missing_clone_is_listed_as_broken_and_remove_archives_the_repo(sample_ws: Workspace) -> None:
    shutil.rmtree(sample_ws.src / "sample")
    proc = converge("-w", str(sample_ws.root), "repos", "--json")
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)
    assert row["status"] == "broken" and "converge remove sample" in row["problem"]
    stats = converge("-w", str(sample_ws.root), "stats", "--json")
    assert stats.returncode == 0 and "sample" in json.loads(stats.stdout)["broken_repos"]
    removed = converge("-w", str(sample_ws.root), "remove", "sample", "--json", check=True)
    assert json.loads(converge("-w", str(sample_ws.root), "repos", "--json", check=True).stdout) == []
    assert (Path(json.loads(removed.stdout)["archive"]) / "record.json").is_file()


def test_remove_keeps_the_clone_with_its_refs(sample_ws: Workspace) -> None:
    head = git(sample_ws.src / "sample", "rev-parse", "refs/converge/head")
    archive = Path(
        json.loads(converge("-w", str(sample_ws.root), "remove", "sample", "--json", check=True).stdout)["archive"]
    )
    assert git(archive / "src", "rev-parse", "refs/converge/gen/0") == head
    assert not (sample_ws.src / "sample").exists()
    again = converge("-w", str(sample_ws.root), "remove", "sample")
    assert again.returncode == 2 and "unknown repo 'sample'" in again.stderr
