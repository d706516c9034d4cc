"""Ref transactions in a long-lived update-ref session: compare-and-swap as with one git per transaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import ConflictError
from orchestrator.store import gitops, refsession
from orchestrator.store.gitops import ZERO, RefUpdate
from tests.conftest import MakeRepo, git


def commits(repo: Path) -> tuple[str, str]:
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "commit", "-q", "--allow-empty", "-m", "second")
    return first, git(repo, "rev-parse", "HEAD")


def test_transactions_in_one_session_compare_and_swap(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.txt": "a\n"})
    first, second = commits(repo)
    gitops.update_refs(repo, [RefUpdate("refs/converge/x", first, ZERO)], "converge: keep test")
    gitops.update_refs(repo, [RefUpdate("refs/converge/y", second, ZERO)], "converge: keep test")
    assert gitops.list_refs(repo, "refs/converge/") == {"refs/converge/x": first, "refs/converge/y": second}
    git(repo, "update-ref", "refs/converge/x", second)  # another process moves it
    with pytest.raises(ConflictError, match="refs/converge/x"):
        gitops.update_refs(
            repo,
            [RefUpdate("refs/converge/z", first, ZERO), RefUpdate("refs/converge/x", ZERO, first)],
            "converge: keep test",
        )
    assert git(repo, "for-each-ref", "--format=%(refname)", "refs/converge/") == "refs/converge/x\nrefs/converge/y"
    gitops.update_refs(repo, [RefUpdate("refs/converge/x", ZERO, second)], "converge: keep test")  # a new session
    assert git(repo, "for-each-ref", "--format=%(refname)", "refs/converge/") == "refs/converge/y"


def test_sessions_are_bounded_and_closed(make_repo: MakeRepo) -> None:
    repos = [make_repo({"a.txt": f"{n}\n"}) for n in range(refsession.MAX_SESSIONS + 2)]
    for repo in repos:
        head = git(repo, "rev-parse", "HEAD")
        gitops.update_refs(repo, [RefUpdate("refs/converge/k", head, ZERO)], "converge: keep test")
        assert git(repo, "rev-parse", "refs/converge/k") == head
    sessions = list(refsession._SESSIONS.open.values())
    assert len(sessions) <= refsession.MAX_SESSIONS
    refsession.close_all()
    assert all(s.proc.poll() is not None for s in sessions)
    assert not refsession._SESSIONS.open
