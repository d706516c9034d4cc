"""Generations: promote, rollback, lineage, dirty trees, and the CAS under contention."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.errors import ConflictError, UsageError
from orchestrator.store import checkout, generations
from orchestrator.store.workspace import Workspace
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
    assert git(path, "rev-parse", "converge") == gen.commit, "the checkout's branch follows the generation"
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
    with pytest.raises(UsageError, match="--to 7: generation 7 of 'sample' does not exist"):
        generations.rollback(sample_ws, "sample", to=7)


def test_roll_forward_undoes_a_rollback_and_abandons_what_came_after(sample_ws: Workspace) -> None:
    for n in "123":
        _promote(sample_ws, n)
    path = sample_ws.src / "sample"
    generations.rollback(sample_ws, "sample", to=1)
    g4 = _promote(sample_ws, "4")  # a new line of work on top of generation 1
    assert (g4.number, g4.parent) == (4, 1)
    forward, stash = generations.rollback(sample_ws, "sample", to=3)
    assert (forward.number, stash) == (3, None)
    assert (path / "VERSION").read_text() == "3"
    assert git(path, "rev-parse", "refs/converge/head") == forward.commit
    assert _statuses(sample_ws) == [
        (0, "superseded", None),
        (1, "superseded", 0),
        (2, "superseded", 1),
        (3, "current", 2),
        (4, "rolled-back", 1),
    ]
    assert git(path, "rev-parse", "refs/converge/failed/4") == g4.commit  # nothing is lost
    back, _ = generations.rollback(sample_ws, "sample", to=4)  # and undo can be undone again
    assert back.number == 4 and (path / "VERSION").read_text() == "4"
    assert [s for _, s, _ in _statuses(sample_ws)] == [
        "superseded",
        "superseded",
        "rolled-back",
        "rolled-back",
        "current",
    ]


def test_roll_forward_through_the_cli(sample_ws: Workspace) -> None:
    _promote(sample_ws, "1")
    converge("-w", str(sample_ws.root), "rollback", "sample", check=True)
    proc = converge("-w", str(sample_ws.root), "rollback", "sample", "--to", "1", "--json", check=True)
    assert json.loads(proc.stdout)["number"] == 1
    assert generations.current(sample_ws, "sample").number == 1


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


def _commit_in_worktree(path: Path, base: str, change: Callable[[Path], None], tmp: Path) -> str:
    tree = tmp / "wt"
    git(path, "worktree", "add", "-q", "--detach", str(tree), base)
    try:
        change(tree)
        git(tree, "add", "-A")
        git(tree, "commit", "-q", "-m", "shape change")
        return git(tree, "rev-parse", "HEAD")
    finally:
        git(path, "worktree", "remove", "--force", str(tree))


def _snapshot(root: Path) -> dict[str, str]:
    seen = {}
    for item in sorted(root.rglob("*")):
        rel = item.relative_to(root).as_posix()
        if rel == ".git" or rel.startswith(".git/"):
            continue
        if item.is_symlink():
            seen[rel] = f"link:{item.readlink()}"
        elif item.is_file():
            seen[rel] = f"{oct(item.stat().st_mode & 0o111)}:{item.read_text()}"
    return seen


@pytest.mark.parametrize("many", [False, True], ids=["by-path", "read-tree"])
def test_moves_follow_every_kind_of_change_exactly(sample_ws: Workspace, tmp_path: Path, many: bool) -> None:
    """Adds, deletes, a file becoming a directory, modes, symlinks, glob and magic characters in names."""
    path = sample_ws.src / "sample"
    base = generations.current(sample_ws, "sample").commit
    before = _snapshot(path)

    def change(tree: Path) -> None:
        (tree / "VERSION").write_text("v")
        git(tree, "add", "VERSION")
        git(tree, "commit", "-q", "-m", "file first")
        (tree / "VERSION").unlink()
        (tree / "VERSION").mkdir()
        (tree / "VERSION" / "number").write_text("2\n")
        (tree / "README.md").unlink()
        (tree / "star*name[1].txt").write_text("glob\n")
        (tree / ":(top)odd").write_text("magic\n")
        (tree / "run.sh").write_text("#!/bin/sh\n")
        (tree / "run.sh").chmod(0o755)
        (tree / "link").symlink_to("run.sh")
        if many:
            (tree / "bulk").mkdir()
            for i in range(checkout.RESTORE_MAX_PATHS + 10):
                (tree / "bulk" / f"f{i}.txt").write_text(f"{i}\n")

    target = _commit_in_worktree(path, base, change, tmp_path)
    generations.promote(sample_ws, "sample", target, base)
    assert git(path, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(path, "rev-parse", "HEAD") == target
    after = _snapshot(path)
    assert after["VERSION/number"].endswith(":2\n") and "README.md" not in after
    assert after["star*name[1].txt"].endswith("glob\n") and after[":(top)odd"].endswith("magic\n")
    assert after["run.sh"].startswith("0o111") and after["link"] == "link:run.sh"
    assert len([p for p in after if p.startswith("bulk/")]) == (checkout.RESTORE_MAX_PATHS + 10 if many else 0)
    generations.rollback(sample_ws, "sample")
    assert git(path, "status", "--porcelain", "--untracked-files=all") == ""
    assert _snapshot(path) == before
