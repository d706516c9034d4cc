"""`converge export`: the current generation goes to the origin as a branch, signatures intact."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from orchestrator.gate import apply, provenance
from orchestrator.store import generations, keyfiles
from orchestrator.store.setup import add_repo
from orchestrator.store.workspace import Workspace
from tests.conftest import MakeRepo, converge, git


def _signed_generation(ws: Workspace, repo: str) -> str:
    """Promote one SSH-signed commit (made by the gate's own stages) as generation 1."""
    base = generations.current(ws, repo).commit
    with apply.candidate(
        ws, repo, provenance.AttemptKey("export-test", 1, 1), generations.current(ws, repo).commit
    ) as cand:
        (cand.path / "NOTES.md").write_text("exported by converge\n")
        commit = apply.commit_signed(ws, cand, "add notes")
        cand.keep("candidates")
    generations.promote(ws, repo, commit, base)
    return commit


def _verify_in(origin: Path, ws: Workspace, ref: str) -> subprocess.CompletedProcess[str]:
    allowed = keyfiles.allowed_signers_path(ws)
    return subprocess.run(
        ["git", "-c", f"gpg.ssh.allowedSignersFile={allowed}", "verify-commit", ref],
        cwd=origin,
        capture_output=True,
        text=True,
    )


def test_export_to_a_bare_origin_keeps_the_signature(ws: Workspace, make_repo: MakeRepo, tmp_path: Path) -> None:
    bare = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(make_repo(name="src")), str(bare))
    add_repo(ws, str(bare), "sample")
    commit = _signed_generation(ws, "sample")

    proc = converge("-w", str(ws.root), "export", "sample", "--json", check=True)
    result = json.loads(proc.stdout)
    assert (result["branch"], result["commit"], result["generation"]) == ("converge/gen-1", commit, 1)
    assert git(bare, "rev-parse", "refs/heads/converge/gen-1") == commit
    verified = _verify_in(bare, ws, "converge/gen-1")
    assert verified.returncode == 0 and "converge@workspace" in verified.stderr
    assert git(bare, "rev-parse", "refs/heads/main") != commit  # nothing else moved
    told = subprocess.run(result["verify"], shell=True, cwd=bare, capture_output=True, text=True, check=False)
    assert told.returncode == 0, told.stderr  # the command export gives verifies the signature in the origin

    # exporting again is a no-op; a branch that moved on is not overwritten
    converge("-w", str(ws.root), "export", "sample", check=True)
    generations.rollback(ws, "sample")
    stale = converge("-w", str(ws.root), "export", "sample", "--branch", "converge/gen-1")
    assert stale.returncode == 1 and "refused" in stale.stderr
    assert git(bare, "rev-parse", "refs/heads/converge/gen-1") == commit


def test_export_never_pushes_to_a_checked_out_branch(ws: Workspace, make_repo: MakeRepo, tmp_path: Path) -> None:
    origin = make_repo(name="origin")
    git(origin, "worktree", "add", "-q", "-b", "side", str(tmp_path / "side-wt"))
    add_repo(ws, str(origin), "sample")
    main_before = git(origin, "rev-parse", "main")
    commit = _signed_generation(ws, "sample")

    for branch in ("main", "side"):
        refused = converge("-w", str(ws.root), "export", "sample", "--branch", branch)
        assert refused.returncode == 2, refused.stderr
        assert f"--branch {branch}: checked out in the origin" in refused.stderr
    assert git(origin, "rev-parse", "main") == main_before

    proc = converge("-w", str(ws.root), "export", "sample", "--branch", "review/notes", "--json", check=True)
    assert json.loads(proc.stdout)["branch"] == "review/notes"
    assert git(origin, "rev-parse", "refs/heads/review/notes") == commit
    assert _verify_in(origin, ws, "review/notes").returncode == 0
    assert git(origin, "status", "--porcelain") == ""  # the origin's working tree is untouched


def test_export_rejects_a_bad_branch_name(ws: Workspace, make_repo: MakeRepo) -> None:
    add_repo(ws, str(make_repo(name="origin")), "sample")
    proc = converge("-w", str(ws.root), "export", "sample", "--branch", "bad..name")
    assert proc.returncode == 2 and "bad..name" in proc.stderr
    assert converge("-w", str(ws.root), "export", "nope").returncode == 2


def test_export_to_a_deleted_origin_says_why_and_json_gets_one_document(
    ws: Workspace, make_repo: MakeRepo, tmp_path: Path
) -> None:
    bare = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(make_repo(name="src")), str(bare))
    add_repo(ws, str(bare), "sample")
    _signed_generation(ws, "sample")
    shutil.rmtree(bare)
    proc = converge("-w", str(ws.root), "export", "sample", "--json")
    assert proc.returncode == 1
    error = json.loads(proc.stdout)["error"]
    assert error["exit"] == 1 and "does not appear to be a git repository" in error["message"], error
    assert "refused: and the repository exists" not in proc.stderr
