"""Generations: promote, rollback, lineage, dirty trees, and the CAS under contention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator import generations
from orchestrator.errors import ConflictError, UsageError
from orchestrator.workspace import Workspace
from tests.conftest import converge, git
from tests.gitfixtures import commit_on


def _promote(ws: Workspace, content: str) -> generations.Generation:
    path = ws.src / "sample"
    base = generations.current(ws, "sample").commit
    commit = commit_on(path, base, {"VERSION": content})
    return generations.promote(ws, "sample", commit, base, changesets=[f"cs-{content}"])


def _statuses(ws: Workspace) -> list[tuple[int, str, int | None]]:
    return [(g.number, g.status, g.parent) for g in generations.lineage(ws, "sample")]


def test_promote_moves_head_refs_and_tree(sample_ws: Workspace) -> None:
    gen = _promote(sample_ws, "1")
    path = sample_ws.src / "sample"
    assert gen.number == 1 and gen.parent == 0
    assert git(path, "rev-parse", "refs/converge/head") == gen.commit
    assert git(path, "rev-parse", "HEAD") == gen.commit
    assert (path / "VERSION").read_text() == "1"
    assert _statuses(sample_ws) == [(0, "superseded", None), (1, "current", 0)]
    assert generations.lineage(sample_ws, "sample")[1].changesets == ("cs-1",)


def test_rollback_keeps_the_abandoned_generation(sample_ws: Workspace) -> None:
    _promote(sample_ws, "1")
    g2 = _promote(sample_ws, "2")
    path = sample_ws.src / "sample"
    back, stash = generations.rollback(sample_ws, "sample")
    assert (back.number, stash) == (1, None)
    assert (path / "VERSION").read_text() == "1"
    assert git(path, "rev-parse", "refs/converge/failed/2") == g2.commit
    assert git(path, "rev-parse", "refs/converge/gen/2") == g2.commit
    assert _statuses(sample_ws) == [(0, "superseded", None), (1, "current", 0), (2, "rolled-back", 1)]
    g3 = _promote(sample_ws, "3")
    assert (g3.number, g3.parent) == (3, 1)


def test_rollback_to_an_older_generation_abandons_everything_above(sample_ws: Workspace) -> None:
    for n in "123":
        _promote(sample_ws, n)
    generations.rollback(sample_ws, "sample", to=0)
    path = sample_ws.src / "sample"
    assert not (path / "VERSION").exists()
    assert [s for _, s, _ in _statuses(sample_ws)] == ["current", "rolled-back", "rolled-back", "rolled-back"]
    with pytest.raises(UsageError, match="--to 2: not a live generation"):
        generations.rollback(sample_ws, "sample", to=2)


def test_rollback_refuses_dirty_tree_and_force_stashes_it(sample_ws: Workspace) -> None:
    _promote(sample_ws, "1")
    path = sample_ws.src / "sample"
    (path / "inventory" / "stock.py").write_text("# my edit\n")
    (path / "notes.txt").write_text("untracked")
    with pytest.raises(UsageError, match=r"uncommitted changes \(.*inventory/stock.py"):
        generations.rollback(sample_ws, "sample")
    assert generations.current(sample_ws, "sample").number == 1
    gen, stash = generations.rollback(sample_ws, "sample", force=True)
    assert gen.number == 0 and stash is not None
    assert git(path, "show", f"{stash}:inventory/stock.py") == "# my edit"
    assert git(path, "show", f"{stash}:notes.txt") == "untracked"


def test_promote_is_compare_and_swap(sample_ws: Workspace) -> None:
    path = sample_ws.src / "sample"
    base = generations.current(sample_ws, "sample").commit
    a = commit_on(path, base, {"A": "a"})
    b = commit_on(path, base, {"B": "b"})
    generations.promote(sample_ws, "sample", a, base)
    with pytest.raises(ConflictError, match="moved to generation 1"):
        generations.promote(sample_ws, "sample", b, base)
    assert generations.current(sample_ws, "sample").commit == a


def test_a_held_lock_refuses_a_second_process(sample_ws: Workspace) -> None:
    _promote(sample_ws, "1")
    with sample_ws.lock("repo-sample", "repo 'sample'"):
        proc = converge("-w", str(sample_ws.root), "rollback", "sample")
    assert proc.returncode == 1
    assert "repo 'sample' is busy: locked by pid" in proc.stderr
    assert generations.current(sample_ws, "sample").number == 1


def test_cli_rollback_json(sample_ws: Workspace) -> None:
    _promote(sample_ws, "1")
    proc = converge("-w", str(sample_ws.root), "rollback", "sample", "--to", "0", "--json", check=True)
    out = json.loads(proc.stdout)
    assert (out["number"], out["status"], out["stash"]) == (0, "current", None)
    gens = json.loads(converge("-w", str(sample_ws.root), "generation", "list", "sample", "--json", check=True).stdout)
    assert {g["number"]: g["status"] for g in gens} == {0: "current", 1: "rolled-back"}
    assert set(gens[0]) >= {"number", "commit", "parent", "status", "changesets"}


def test_dirty_rollback_from_cli_names_files(sample_ws: Workspace, tmp_path: Path) -> None:
    _promote(sample_ws, "1")
    (sample_ws.src / "sample" / "VERSION").write_text("edited")
    proc = converge("-w", str(sample_ws.root), "rollback", "sample")
    assert proc.returncode == 2
    assert "VERSION" in proc.stderr and "--force" in proc.stderr


def test_untracked_files_survive_and_only_a_collision_refuses(sample_ws: Workspace) -> None:
    _promote(sample_ws, "1")
    path = sample_ws.src / "sample"
    (path / "scratch.txt").write_text("mine")
    back, _ = generations.rollback(sample_ws, "sample")
    assert back.number == 0
    assert (path / "scratch.txt").read_text() == "mine", "untracked files are never touched"
    (path / "VERSION").write_text("my own untracked VERSION")
    base = generations.current(sample_ws, "sample").commit
    commit = commit_on(path, base, {"VERSION": "from the change"})
    with pytest.raises(UsageError, match="VERSION"):
        generations.promote(sample_ws, "sample", commit, base)
    assert (path / "VERSION").read_text() == "my own untracked VERSION"
