"""Search/replace edits: applied all-or-nothing, hostile paths refused, failures explained to the model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.agents.edits import EditBlock, EditProposal, apply_edits, proposal_from_files
from orchestrator.errors import EditError
from tests.conftest import MakeRepo, git


def proposal(*blocks: tuple[str, str, str]) -> EditProposal:
    return EditProposal(summary="test", edits=[EditBlock(path=p, search=s, replace=r) for p, s, r in blocks])


@pytest.fixture
def repo(make_repo: MakeRepo) -> Path:
    return make_repo(
        {
            "pkg/mod.py": "def f():\n    return 1\n\n\ndef g():\n    return 2\n",
            "pkg/dup.py": "x = 1\ny = 2\nx = 1\n",
            "README.md": "hello\n",
        }
    )


def test_schema_is_usable_for_constrained_decoding() -> None:
    schema = EditProposal.model_json_schema()
    assert schema["required"] == ["summary", "edits"]
    block = schema["$defs"]["EditBlock"]
    assert set(block["required"]) == {"path", "search", "replace"}
    assert block["additionalProperties"] is False


def test_apply_changes_and_creates_files(repo: Path) -> None:
    result = apply_edits(
        repo,
        proposal(
            ("pkg/mod.py", "    return 1\n", "    return 10\n"),
            ("pkg/new.py", "", "VALUE = 3\n"),
            ("pkg/new.py", "VALUE = 3\n", "VALUE = 4\n"),  # later blocks see earlier ones
        ),
    )
    assert result.changed == ("pkg/mod.py",)
    assert result.created == ("pkg/new.py",)
    assert (repo / "pkg/mod.py").read_text() == "def f():\n    return 10\n\n\ndef g():\n    return 2\n"
    assert (repo / "pkg/new.py").read_text() == "VALUE = 4\n"
    assert {line.strip() for line in git(repo, "status", "--porcelain").splitlines()} == {
        "M pkg/mod.py",
        "?? pkg/new.py",
    }


def test_failure_writes_nothing_and_says_what_matched(repo: Path) -> None:
    before = (repo / "pkg/mod.py").read_text()
    with pytest.raises(EditError) as err:
        apply_edits(
            repo,
            proposal(
                ("pkg/mod.py", "    return 1\n", "    return 10\n"),
                ("pkg/other.py", "", "x = 1\n"),
                ("pkg/mod.py", "return 99", "return 100"),
            ),
        )
    text = str(err.value)
    assert text.startswith("Edit block 3 of 3 (pkg/mod.py) failed: the search text was not found")
    assert "Blocks 1-2 matched, but nothing was written" in text
    assert "send all blocks again" in text
    assert (repo / "pkg/mod.py").read_text() == before
    assert not (repo / "pkg/other.py").exists()
    assert git(repo, "status", "--porcelain") == ""


def test_not_found_shows_nearest_lines_with_numbers(repo: Path) -> None:
    with pytest.raises(EditError) as err:
        apply_edits(repo, proposal(("pkg/mod.py", "def g():\n    return 3\n", "def g():\n    return 4\n")))
    text = str(err.value)
    assert "The most similar lines are 5-6" in text
    assert "    5 | def g():" in text
    assert "    6 |     return 2" in text
    assert "Nothing was written" in text


def test_ambiguous_search_says_how_many_and_where(repo: Path) -> None:
    with pytest.raises(EditError) as err:
        apply_edits(repo, proposal(("pkg/dup.py", "x = 1\n", "x = 5\n")))
    text = str(err.value)
    assert "found 2 times (starting at lines 1, 3)" in text
    assert "add surrounding lines" in text


def test_trailing_whitespace_fallback_is_reported(repo: Path) -> None:
    (repo / "pkg/ws.py").write_text("a = 1   \nb = 2\t\nc = 3\n")
    result = apply_edits(repo, proposal(("pkg/ws.py", "a = 1\nb = 2", "a = 10\nb = 20")))
    assert (repo / "pkg/ws.py").read_text() == "a = 10\nb = 20\nc = 3\n"
    assert len(result.notes) == 1
    assert "ignoring trailing whitespace" in result.notes[0]


def test_leading_whitespace_is_not_forgiven(repo: Path) -> None:
    with pytest.raises(EditError, match="not found"):
        apply_edits(repo, proposal(("pkg/mod.py", "return 1\n  ", "return 2\n")))
    with pytest.raises(EditError, match="not found"):
        apply_edits(repo, proposal(("pkg/mod.py", "     return 1\n", "     return 2\n")))


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/etc/passwd", "is absolute"),
        ("../outside.py", "uses '..'"),
        ("pkg/../../outside.py", "uses '..'"),
        (".git/config", "inside .git/"),
        ("pkg/.GIT/hooks/pre-commit", "inside .git/"),
        ("", "the path is empty"),
        ("pkg\\mod.py", "backslash"),
        (".", "names the repository root"),
        ("pkg", "is a directory"),
    ],
)
def test_hostile_paths_are_refused(repo: Path, path: str, reason: str) -> None:
    with pytest.raises(EditError) as err:
        apply_edits(repo, proposal(("README.md", "hello", "bye"), (path, "", "pwned\n")))
    assert reason in str(err.value)
    assert "Edit block 2 of 2" in str(err.value)
    assert (repo / "README.md").read_text() == "hello\n"
    assert not (repo.parent / "outside.py").exists()


def test_symlink_escapes_are_refused(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    os.symlink(outside, repo / "escape")
    os.symlink(outside / "secret.txt", repo / "secret-link.txt")
    os.symlink(repo / ".git", repo / "gitlink")
    for path, reason in [
        ("escape/secret.txt", "leads outside the repository"),
        ("escape/new.txt", "leads outside the repository"),
        ("secret-link.txt", "leads outside the repository"),
        ("gitlink/config", "leads into .git/"),
    ]:
        with pytest.raises(EditError, match=reason):
            apply_edits(repo, proposal((path, "", "pwned\n")))
    assert (outside / "secret.txt").read_text() == "secret\n"
    assert not (outside / "new.txt").exists()


def test_symlink_inside_repo_points_to_its_target(repo: Path) -> None:
    os.symlink("pkg/mod.py", repo / "alias.py")
    with pytest.raises(EditError, match=r"is a symbolic link to 'pkg/mod\.py'; edit 'pkg/mod\.py' instead"):
        apply_edits(repo, proposal(("alias.py", "return 1", "return 2")))


def test_binary_and_non_utf8_targets_are_refused(repo: Path) -> None:
    (repo / "blob.bin").write_bytes(b"\x00\x01abc")
    (repo / "latin.txt").write_bytes("café\n".encode("latin-1"))
    with pytest.raises(EditError, match="binary file"):
        apply_edits(repo, proposal(("blob.bin", "abc", "def")))
    with pytest.raises(EditError, match="not UTF-8"):
        apply_edits(repo, proposal(("latin.txt", "caf", "cafe")))


def test_create_only_new_files_and_edit_only_existing(repo: Path) -> None:
    with pytest.raises(EditError, match="already exists"):
        apply_edits(repo, proposal(("README.md", "", "replaced\n")))
    with pytest.raises(EditError, match="does not exist; to create it, leave the search text empty"):
        apply_edits(repo, proposal(("missing.py", "x", "y")))
    (repo / "empty.py").write_text("")
    apply_edits(repo, proposal(("empty.py", "", "X = 1\n")))
    assert (repo / "empty.py").read_text() == "X = 1\n"


def test_no_op_and_empty_proposals_are_refused(repo: Path) -> None:
    with pytest.raises(EditError, match="no edits"):
        apply_edits(repo, EditProposal(summary="nothing", edits=[]))
    with pytest.raises(EditError, match="change nothing"):
        apply_edits(repo, proposal(("README.md", "hello", "hello")))


def test_file_mode_is_kept(repo: Path) -> None:
    script = repo / "run.sh"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    apply_edits(repo, proposal(("run.sh", "hi", "hello")))
    assert script.stat().st_mode & 0o777 == 0o755


def test_whole_file_proposal_round_trips(repo: Path) -> None:
    before: dict[str, str | None] = {"README.md": "hello\n", "new.txt": None}
    after = {"README.md": "hello world\n", "new.txt": "fresh\n"}
    apply_edits(repo, proposal_from_files("tool", before, after))
    assert (repo / "README.md").read_text() == "hello world\n"
    assert (repo / "new.txt").read_text() == "fresh\n"
