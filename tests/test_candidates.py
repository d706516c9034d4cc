"""Candidate worktrees: isolated, idempotent, committed with a fixed identity, kept as refs, removed after."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.agents.edits import EditBlock, EditProposal, apply_edits
from orchestrator.errors import ConflictError, EditError, GitError, UsageError
from orchestrator.gate.candidates import Candidate, candidate_ref, kept_commit
from orchestrator.store import gitops, worktrees
from orchestrator.store.gitops import changed_paths, diff
from tests.conftest import MakeRepo, git


@pytest.fixture
def repo(make_repo: MakeRepo) -> Path:
    return make_repo({"app.py": "def answer():\n    return 41\n", "README.md": "app\n"})


def edit(path: Path) -> None:
    apply_edits(
        path,
        EditProposal(summary="fix", edits=[EditBlock(path="app.py", search="return 41", replace="return 42")]),
    )


def test_candidate_commit_is_kept_and_worktree_removed(repo: Path, tmp_path: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    worktrees = tmp_path / "ws" / "cache" / "worktrees"
    with Candidate(repo, worktrees, run="run1", step=1, attempt=1, base="HEAD") as cand:
        assert cand.path == worktrees / "run1" / "1-1"
        assert git(cand.path, "rev-parse", "HEAD") == base
        edit(cand.path)
        sha = cand.commit("converge: answer 42", date="2024-01-02T03:04:05Z")
        assert cand.changed_paths() == ["app.py"]
        assert "-    return 41\n+    return 42\n" in cand.diff()
        assert cand.keep("candidates") == "refs/converge/candidates/run1/1-1"
    assert not cand.path.exists()
    assert not (worktrees / "run1").exists()
    assert "run1" not in git(repo, "worktree", "list")
    assert git(repo, "rev-parse", "refs/converge/candidates/run1/1-1") == sha
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn|%s|%P", sha) == (
        f"Converge <converge@localhost>|Converge|converge: answer 42|{base}"
    )
    # the user's repo itself is untouched
    assert git(repo, "rev-parse", "HEAD") == base
    assert git(repo, "status", "--porcelain") == ""
    assert changed_paths(repo, base, sha) == ["app.py"]
    assert diff(repo, base, sha).startswith("diff --git a/app.py b/app.py")
    assert kept_commit(repo, "run1", 1, 1) == ("candidates", sha)


def test_same_edits_same_date_same_commit(repo: Path, tmp_path: Path) -> None:
    shas = []
    for attempt in (1, 2):
        with Candidate(repo, tmp_path / "wt", run="run", step=1, attempt=attempt, base="HEAD") as cand:
            edit(cand.path)
            shas.append(cand.commit("same", date="2024-01-02T03:04:05Z"))
            cand.keep("candidates")
    assert shas[0] == shas[1]


def test_reentering_resets_a_leftover_worktree(repo: Path, tmp_path: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    first = Candidate(repo, tmp_path / "wt", run="run", step="2", attempt=1, base=base)
    first.create()
    edit(first.path)
    first.commit("left behind by a killed process")
    (first.path / "junk.txt").write_text("junk\n")
    # a new process, same key: the worktree is reused, reset to base, clean
    with Candidate(repo, tmp_path / "wt", run="run", step="2", attempt=1, base=base) as again:
        assert again.path == first.path
        assert git(again.path, "rev-parse", "HEAD") == base
        assert git(again.path, "status", "--porcelain") == ""
        assert (again.path / "app.py").read_text() == "def answer():\n    return 41\n"
    assert not first.path.exists()


def test_stale_directory_is_replaced(repo: Path, tmp_path: Path) -> None:
    stale = tmp_path / "wt" / "run" / "1-1"
    stale.mkdir(parents=True)
    (stale / "leftover").write_text("x")
    with Candidate(repo, tmp_path / "wt", run="run", step=1, attempt=1, base="HEAD") as cand:
        assert not (cand.path / "leftover").exists()
        assert (cand.path / "app.py").is_file()


def test_unkept_commit_goes_to_failed_on_error(repo: Path, tmp_path: Path) -> None:
    cand = Candidate(repo, tmp_path / "wt", run="run", step=3, attempt=2, base="HEAD")
    with pytest.raises(RuntimeError), cand:
        edit(cand.path)
        cand.commit("broken")
        raise RuntimeError("verification crashed")
    assert git(repo, "rev-parse", candidate_ref("failed", "run", 3, 2)) == cand.commit_sha
    assert not cand.path.exists()


def test_keep_is_idempotent_moves_between_outcomes_and_refuses_a_different_commit(repo: Path, tmp_path: Path) -> None:
    with Candidate(repo, tmp_path / "wt", run="run", step=1, attempt=1, base="HEAD") as cand:
        edit(cand.path)
        sha = cand.commit("one")
        cand.keep("candidates")
        cand.keep("candidates")
        cand.keep("failed")  # verification failed later: moved, not copied
    assert git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/converge/") == (
        f"refs/converge/failed/run/1-1 {sha}"
    )
    with Candidate(repo, tmp_path / "wt", run="run", step=1, attempt=1, base="HEAD") as other:
        apply_edits(
            other.path,
            EditProposal(summary="x", edits=[EditBlock(path="README.md", search="app", replace="other")]),
        )
        other.commit("two")
        with pytest.raises(ConflictError, match="already keeps"):
            other.keep("failed")
        other.keep("candidates")


def test_nothing_to_commit_is_an_edit_error(repo: Path, tmp_path: Path) -> None:
    with (
        Candidate(repo, tmp_path / "wt", run="run", step=1, attempt=1, base="HEAD") as cand,
        pytest.raises(EditError, match="nothing"),
    ):
        cand.commit("empty")


def test_repo_hooks_never_run_and_the_signature_lands_where_git_puts_it(repo: Path, tmp_path: Path) -> None:
    hook = repo / ".git" / "hooks" / "pre-commit"
    marker = tmp_path / "hook-ran"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    hook.chmod(0o755)
    signed: list[bytes] = []

    def sign(text: bytes) -> str:
        signed.append(text)
        return "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n"

    with Candidate(repo, tmp_path / "wt", run="run", step=1, attempt=1, base="HEAD") as cand:
        edit(cand.path)
        sha = cand.commit("  hooked  \n\n\n\nbody line   \n\n", sign=sign, date="2024-01-02T04:04:05+01:00")
        cand.keep("candidates")
    assert not marker.exists()
    raw = git(repo, "cat-file", "commit", sha)
    header, _, message = raw.partition("\n\n")
    assert message == "  hooked\n\nbody line"  # git's own cleanup (the helper strips the last newline)
    lines = header.splitlines()
    assert lines[2] == "author Converge <converge@localhost> 1704164645 +0100"
    assert lines[4:] == ["gpgsig -----BEGIN SSH SIGNATURE-----", " AAAA", " -----END SSH SIGNATURE-----"]
    assert signed and signed[0].decode() == raw.replace("\n".join(lines[4:]) + "\n", "") + "\n"
    with (
        pytest.raises(UsageError, match="ISO 8601"),
        Candidate(repo, tmp_path / "wt", run="run", step=1, attempt=2, base="HEAD") as cand,
    ):
        edit(cand.path)
        cand.commit("x", date="yesterday")


def test_bad_keys_are_refused(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="run"):
        Candidate(repo, tmp_path / "wt", run="../escape", step=1, attempt=1, base="HEAD")


def test_a_worktree_made_without_git_worktree_add_is_one_git_knows(repo: Path, tmp_path: Path) -> None:

    base = git(repo, "rev-parse", "HEAD")
    first, second = tmp_path / "a" / "same", tmp_path / "b" / "same"  # same name: git's records need two ids
    worktrees.add_worktree(repo, first, "HEAD")
    worktrees.add_worktree(repo, second, base)
    git(repo, "worktree", "prune")  # a concurrent prune keeps both
    listed = git(repo, "worktree", "list", "--porcelain")
    for path in (first, second):
        assert f"worktree {path}\nHEAD {base}\ndetached" in listed
        assert git(path, "status", "--porcelain") == ""
        assert (path / "app.py").read_text() == "def answer():\n    return 41\n"
    with pytest.raises(GitError, match="not empty"):
        worktrees.add_worktree(repo, first, base)
    with pytest.raises(GitError, match="not a commit"):
        worktrees.add_worktree(repo, tmp_path / "c", "no-such-ref")
    worktrees.remove_worktree(repo, first)
    git(repo, "worktree", "remove", "--force", str(second))  # git itself removes ours
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert not first.exists() and not second.exists()
    assert not (repo / ".git" / "worktrees").exists() or not any((repo / ".git" / "worktrees").iterdir())


def test_refs_read_from_files_are_what_git_lists(repo: Path) -> None:
    """Loose, packed, packed then updated loose, deleted after packing, a lock file, a symbolic ref."""
    head = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "commit", "-q", "--allow-empty", "-m", "second")
    second = git(repo, "rev-parse", "HEAD").strip()

    def same(*patterns: str) -> dict[str, str]:
        out = git(repo, "for-each-ref", "--format=%(objectname) %(refname)", "--", *patterns)
        listed = dict(reversed(line.split(" ", 1)) for line in out.splitlines())
        assert gitops.list_refs(repo, *patterns) == listed
        return listed

    for name in ("gen/0", "gen/1", "candidates/r1/1-1", "candidates/r1/1-2", "failed/r1/2-1"):
        git(repo, "update-ref", f"refs/converge/{name}", head)
    assert len(same("refs/converge/")) == 5
    git(repo, "pack-refs", "--all")
    assert not (repo / ".git" / "refs" / "converge" / "gen" / "0").exists()
    assert same("refs/converge/")["refs/converge/gen/0"] == head
    git(repo, "update-ref", "refs/converge/gen/0", second)  # a loose file now overrides the packed line
    git(repo, "update-ref", "-d", "refs/converge/gen/1")
    git(repo, "update-ref", "refs/converge/gen/2", second)
    listed = same("refs/converge")
    assert listed["refs/converge/gen/0"] == second and "refs/converge/gen/1" not in listed
    assert same("refs/converge/candidates/r1/1-2", "refs/converge/failed/r1/2-1", "refs/converge/nothing") == {
        "refs/converge/candidates/r1/1-2": head,
        "refs/converge/failed/r1/2-1": head,
    }
    assert same("refs/converge/gen/") == same("refs/converge/gen")
    assert same("refs/converge/ge") == {}  # a pattern matches whole path components only
    (repo / ".git" / "refs" / "converge" / "gen" / "3.lock").write_text(f"{head}\n")  # a write in progress
    same("refs/converge/")
    git(repo, "symbolic-ref", "refs/converge/link", "refs/converge/gen/0")  # git resolves it: asked of git
    assert same("refs/converge/")["refs/converge/link"] == second
    assert len(same("refs/converge/gen/*")) == 2  # a glob: asked of git
