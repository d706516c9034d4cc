"""Edits committed in git's objects give the tree (or the error) a worktree checkout, edit and add give."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.agents.edits import EditBlock, EditProposal, apply_edits
from orchestrator.errors import EditError
from orchestrator.gate import objects
from orchestrator.gate.candidates import Candidate
from tests.conftest import MakeRepo, git

DATE = "2024-01-02T03:04:05Z"
FILES = {
    "pkg/mod.py": "def f():\n    return 1\n\n\ndef g():\n    return 2\n",
    "pkg/dup.py": "x = 1\ny = 2\nx = 1\n",
    "pkg/sub/deep.py": "DEPTH = 3\n",
    "a.py": "A = 1\n",
    "a/inner.py": "INNER = 1\n",
    "a-b.py": "AB = 1\n",
    "docs/café.md": "crème\n",
    "README.md": "hello\n",
}


def proposal(*blocks: tuple[str, str, str]) -> EditProposal:
    return EditProposal(summary="test", edits=[EditBlock(path=p, search=s, replace=r) for p, s, r in blocks])


@pytest.fixture
def repo(make_repo: MakeRepo) -> Path:
    path = make_repo(FILES)
    (path / "bin").mkdir()
    (path / "bin/run.sh").write_text("echo hi\n")
    (path / "bin/run.sh").chmod(0o755)
    (path / "blob.bin").write_bytes(b"\x00\x01abc")
    (path / "latin.txt").write_bytes("café\n".encode("latin-1"))
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "more")
    return path


def both(repo: Path, tmp_path: Path, edits: EditProposal) -> tuple[str, str]:
    """The tree (or the error) of ``edits`` committed in the objects, and the same through a worktree."""
    results = []
    for n, direct in enumerate((True, False)):
        cand = Candidate(repo, tmp_path / "worktrees", run="r", step=1, attempt=n, base="HEAD")
        try:
            if direct:
                done = cand.commit_edits(edits, "m", date=DATE)
                assert done is not None, "the edits took the worktree"
                commit = done[0]
            else:
                with cand:
                    applied = apply_edits(cand.path, edits)
                    commit = cand.commit("m", date=DATE, paths=applied.paths)
        except EditError as exc:
            results.append(f"error: {exc}")
            continue
        results.append(git(repo, "rev-parse", f"{commit}^{{tree}}"))
    return results[0], results[1]


@pytest.mark.parametrize(
    "blocks",
    [
        [("pkg/mod.py", "    return 1\n", "    return 10\n")],
        [("pkg/new/deeper/n.py", "", "N = 1\n"), ("pkg/new/deeper/n.py", "N = 1\n", "N = 2\n")],
        [("a/inner.py", "1", "2"), ("a.py", "1", "2"), ("a-b.py", "1", "2"), ("a/b.py", "", "B = 1\n")],
        [("docs/café.md", "crème", "brûlée"), ("./pkg//sub/deep.py", "3", "4")],
        [("bin/run.sh", "hi", "hello")],
        [("pkg/mod.py", "def g():\n    return 3\n", "x")],
        [("pkg/dup.py", "x = 1\n", "x = 5\n")],
        [("blob.bin", "abc", "def")],
        [("latin.txt", "caf", "cafe")],
        [("pkg", "", "x")],
        [("README.md", "", "replaced\n")],
        [("missing.py", "x", "y")],
        [("README.md", "hello", "hello")],
        [("README.md", "hello", "bye"), ("../outside.py", "", "x")],
        [("README.md", "hello", "bye"), (".git/config", "", "x")],
        [("README.md", "hello", "bye"), ("/etc/passwd", "", "x")],
    ],
)
def test_objects_and_worktree_agree(repo: Path, tmp_path: Path, blocks: list[tuple[str, str, str]]) -> None:
    direct, checked_out = both(repo, tmp_path, proposal(*blocks))
    assert direct == checked_out
    git(repo, "fsck", "--strict", "--no-dangling")


def test_an_executable_stays_executable_and_untouched_entries_stay(repo: Path, tmp_path: Path) -> None:
    cand = Candidate(repo, tmp_path / "worktrees", run="r", step=1, attempt=1, base="HEAD")
    done = cand.commit_edits(proposal(("bin/run.sh", "hi", "hello")), "converge: louder", date=DATE)
    assert done is not None
    commit, applied = done
    assert applied.changed == ("bin/run.sh",)
    assert git(repo, "diff", "--name-status", "HEAD", commit) == "M\tbin/run.sh"
    assert git(repo, "ls-tree", commit, "bin/run.sh").startswith("100755 blob ")
    assert git(repo, "show", f"{commit}:bin/run.sh") == "echo hello"
    assert git(repo, "log", "-1", "--format=%an <%ae> %s", commit) == "Converge <converge@localhost> converge: louder"
    assert not (tmp_path / "worktrees").exists()  # nothing was checked out


def test_paths_git_would_check_out_differently_take_the_worktree(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"src/x.py": "X = 1\n", "plain/y.py": "Y = 1\n", "attr/.gitattributes": "*.py eol=crlf\n"})
    os.symlink("src", repo / "link")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "link")
    cand = Candidate(repo, tmp_path / "worktrees", run="r", step=1, attempt=1, base="HEAD")
    for path in ("link/x.py", "link", "attr/z.py", ".gitattributes", "plain/y.py/z"):
        assert cand.commit_edits(proposal((path, "", "Z = 1\n")), "m") is None, path
    assert cand.commit_edits(proposal(("plain/y.py", "1", "2")), "m") is not None
    git(repo, "config", "core.autocrlf", "input")
    assert not objects.supported(repo)
    assert cand.commit_edits(proposal(("plain/y.py", "1", "2")), "m") is None
    git(repo, "config", "--unset", "core.autocrlf")
    assert objects.supported(repo)
    (repo / ".git/info/attributes").write_text("*.py text\n")
    assert not objects.supported(repo)


def test_a_written_object_is_what_git_would_write(repo: Path, tmp_path: Path) -> None:
    oid = objects.write_object(repo, "blob", b"some text\n")
    (tmp_path / "text").write_text("some text\n")
    assert oid == git(repo, "hash-object", str(tmp_path / "text"))
    assert git(repo, "cat-file", "-p", oid) == "some text"
    assert objects.write_object(repo, "blob", b"some text\n") == oid  # already there: left as it is
    assert not list((repo / ".git/objects" / oid[:2]).glob("tmp_obj_*"))
