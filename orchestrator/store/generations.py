"""Generations of a registered repo: lineage, promotion and rollback, all as CAS ref moves.

The refs under ``refs/converge/`` (``gen/<n>``, ``head``, ``failed/<n>``, ``stash/<ts>``) are the truth;
each generation also has a record under ``.converge/generations/<repo>/<n>.json``. Every change is one
``update-ref --stdin`` transaction under the repo's lock, then the working tree follows; a journal lets
the next command finish or undo a killed operation (:func:`recover`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from orchestrator.errors import ConflictError, GitError, UsageError
from orchestrator.store import gitops
from orchestrator.store.checkout import Move, checkout, guard_tree
from orchestrator.store.gitops import ZERO, RefUpdate
from orchestrator.store.storage import atomic_write_json, read_model
from orchestrator.store.workspace import Workspace

GEN = "refs/converge/gen/"
FAILED = "refs/converge/failed/"
HEAD = "refs/converge/head"

Status = Literal["current", "superseded", "failed", "rolled-back"]


class GenerationRecord(BaseModel):
    """What is kept about a generation beside its ref.

    Written before its ref exists, so a record without a ref is simply ignored.
    """

    number: int
    commit: str
    parent: int | None
    changesets: list[str] = Field(default_factory=list)
    created: str
    abandoned: str | None = None
    reason: str | None = None
    revived: list[str] = Field(default_factory=list)  # when a roll forward made it live again


@dataclass(frozen=True)
class Generation:
    """A generation as the lineage shows it."""

    number: int
    commit: str
    parent: int | None
    status: Status
    changesets: tuple[str, ...]
    created: str

    def to_json(self) -> dict[str, object]:
        return {
            "number": self.number,
            "commit": self.commit,
            "parent": self.parent,
            "status": self.status,
            "changesets": list(self.changesets),
            "created": self.created,
        }


class _Journal(BaseModel):
    op: str
    old: str
    new: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _records_dir(ws: Workspace, repo: str) -> Path:
    return ws.state / "generations" / repo


def _journal_path(ws: Workspace, repo: str) -> Path:
    return ws.state / "journal" / f"{repo}.json"


def _record(ws: Workspace, repo: str, number: int, commit: str) -> GenerationRecord:
    path = _records_dir(ws, repo) / f"{number}.json"
    if path.exists():
        rec = read_model(path, GenerationRecord)
        if rec.commit == commit:
            return rec
    return GenerationRecord(number=number, commit=commit, parent=None, created="")


def _numbers(refs: dict[str, str], prefix: str) -> dict[int, str]:
    found: dict[int, str] = {}
    for name, sha in refs.items():
        tail = name.removeprefix(prefix)
        if tail.isdigit():
            found[int(tail)] = sha
    return found


def problem(ws: Workspace, name: str) -> str | None:
    """What is wrong with the clone of registered repo ``name`` (None: nothing), with the fix."""
    path = ws.repo_path(name)
    fix = f"fix: `converge remove {name}` then `converge add SOURCE --name {name}`"
    if not path.is_dir():
        return f"{path} is missing; {fix}"
    if gitops.resolve(path, HEAD) is None:
        return f"{path} is damaged (no refs/converge/head); {fix}"
    return None


def lineage(ws: Workspace, repo: str) -> list[Generation]:
    """Every generation of ``repo``, oldest first, with its status.

    Refs, inside the registered repo (``src/<repo>``)::

        refs/converge/gen/<n>      the commit of generation n (never deleted)
        refs/converge/head         the commit of the current generation
        refs/converge/failed/<n>   generation n was abandoned (rolled back or failed)
        refs/converge/stash/<ts>   uncommitted work saved by ``rollback --force``

    Live generations (``gen`` minus ``failed``) form one chain and the current generation is the
    newest live one.
    """
    return [_generation(ws, repo, n, commit, status) for n, commit, status in _statuses(_refs(ws, repo))]


def current(ws: Workspace, repo: str) -> Generation:
    """The current generation of ``repo`` (one ref listing and one record read, however long the lineage)."""
    return _current(ws, repo, _statuses(_refs(ws, repo)))


def _current(ws: Workspace, repo: str, statuses: list[tuple[int, str, Status]]) -> Generation:
    for n, commit, status in statuses:
        if status == "current":
            return _generation(ws, repo, n, commit, status)
    raise GitError(f"repo {repo!r} has no live generation; its refs/converge/ refs are damaged")


def _refs(ws: Workspace, repo: str) -> dict[str, str]:
    """The refs under refs/converge/ (after repairing an abandoned move)."""
    if _journal_path(ws, repo).exists():
        _repair_if_abandoned(ws, repo)
    return gitops.list_refs(ws.repo_path(repo), "refs/converge/")


def _statuses(refs: dict[str, str]) -> list[tuple[int, str, Status]]:
    """(number, commit, status) of every generation, oldest first: the refs alone say it."""
    gens = _numbers(refs, GEN)
    failed = _numbers(refs, FAILED)
    live = [n for n in gens if n not in failed]
    newest = max(live) if live else None
    found: list[tuple[int, str, Status]] = []
    for n in sorted(gens):
        status: Status = "failed" if n in failed else "current" if n == newest else "superseded"
        found.append((n, gens[n], status))
    return found


def _generation(ws: Workspace, repo: str, number: int, commit: str, status: Status) -> Generation:
    rec = _record(ws, repo, number, commit)
    if status == "failed" and rec.reason != "failed":
        status = "rolled-back"
    return Generation(number, commit, rec.parent, status, tuple(rec.changesets), rec.created)


def record_initial(ws: Workspace, repo: str, path: Path, commit: str) -> None:
    """Record generation 0 of a newly registered repo."""
    _write_record(ws, repo, GenerationRecord(number=0, commit=commit, parent=None, created=_now()))
    gitops.update_refs(
        path,
        [RefUpdate(f"{GEN}0", commit, ZERO), RefUpdate(HEAD, commit, ZERO)],
        "converge: generation 0",
    )


def _write_record(ws: Workspace, repo: str, rec: GenerationRecord) -> None:
    atomic_write_json(_records_dir(ws, repo) / f"{rec.number}.json", rec.model_dump())


@contextlib.contextmanager
def repo_transaction(ws: Workspace, repo: str) -> Iterator[Path]:
    """Hold the repo's lock and repair what a killed predecessor left half done."""
    path = ws.repo_path(repo)
    with ws.lock(f"repo-{repo}", f"repo {repo!r}"):
        recover(ws, repo)
        yield path


def _repair_if_abandoned(ws: Workspace, repo: str) -> None:
    """A journal with no live holder means its process died mid-operation: finish the tree part."""
    try:
        with ws.lock(f"repo-{repo}", f"repo {repo!r}"):
            recover(ws, repo)
    except ConflictError:
        pass  # the operation is still running in another process; its refs are already consistent


def recover(ws: Workspace, repo: str) -> bool:
    """Finish or undo the working-tree part of an interrupted operation; True if there was one.

    The journal is written before the transaction with expected old values, so refs and tree are
    always the old state or the new one.
    """
    journal = _journal_path(ws, repo)
    if not journal.exists():
        return False
    entry = read_model(journal, _Journal)
    path = ws.src / repo
    _remove_stale_git_locks(path)
    head = gitops.resolve(path, HEAD)
    target = entry.new if head == entry.new else entry.old
    gitops.run(path, "reset", "--quiet", "--hard", target)
    journal.unlink()
    return True


def _remove_stale_git_locks(path: Path) -> None:
    """Drop lock files a killed git left behind; safe because we hold the repo lock and the journal says who died."""
    gitdir = path / ".git"
    # index, HEAD, ORIG_HEAD (reset writes it), packed-refs, and any ref (the checkout's branch follows HEAD)
    stale = [*gitdir.glob("*.lock"), *(gitdir / "refs").rglob("*.lock")]
    for lock in stale:
        lock.unlink(missing_ok=True)


def _apply_move(
    ws: Workspace, repo: str, path: Path, op: str, move: Move, updates: list[RefUpdate], clean: bool
) -> None:
    journal = _journal_path(ws, repo)
    atomic_write_json(journal, _Journal(op=op, old=move.old, new=move.new).model_dump())
    if clean:  # HEAD is checked to be at `old`: it moves in the same transaction as the refs
        updates = [*updates, RefUpdate("HEAD", move.new, move.old)]
    try:
        gitops.update_refs(path, updates, f"converge: {op}")
    except BaseException:
        journal.unlink()
        raise
    checkout(path, move, clean)
    journal.unlink()


def promote(
    ws: Workspace,
    repo: str,
    commit: str,
    base: str,
    changesets: list[str] | None = None,
    force: bool = False,
) -> Generation:
    """Make ``commit`` (built on generation commit ``base``) the next generation.

    Idempotent: when ``commit`` is already current with these changesets (a killed earlier
    promotion got that far), the current generation is returned as it is.
    """
    with repo_transaction(ws, repo) as path:
        refs = _refs(ws, repo)
        statuses = _statuses(refs)
        cur = _current(ws, repo, statuses)
        if cur.commit == commit and set(changesets or []) <= set(cur.changesets):
            return cur
        if cur.commit != base:
            raise ConflictError(
                f"repo {repo!r} moved to generation {cur.number} ({cur.commit[:12]}) "
                f"since this change was based on {base[:12]}; rebase it"
            )
        if gitops.resolve(path, commit) is None:
            raise GitError(f"{commit}: no such commit in {path}")
        move = Move.between(path, cur.commit, commit)
        stash = guard_tree(path, move, force)
        number = max(n for n, _, _ in statuses) + 1
        failed_numbers = _numbers(refs, FAILED)
        number = max([number, *(n + 1 for n in failed_numbers)])
        rec = GenerationRecord(
            number=number, commit=commit, parent=cur.number, changesets=changesets or [], created=_now()
        )
        _write_record(ws, repo, rec)
        _apply_move(
            ws,
            repo,
            path,
            "promote",
            move,
            [
                RefUpdate(f"{GEN}{number}", commit, ZERO),
                RefUpdate(HEAD, commit, cur.commit),
            ],
            clean=stash is None,
        )
        return Generation(number, commit, cur.number, "current", tuple(rec.changesets), rec.created)


def rollback(ws: Workspace, repo: str, to: int | None = None, force: bool = False) -> tuple[Generation, str | None]:
    """Make generation ``to`` (default: the current one's parent) current; returns it and any stash ref.

    ``to`` may be a rolled-back generation (roll forward): it and its rolled-back ancestors become live
    again, and the live generations after their common ancestor are rolled back in the same transaction.
    """
    with repo_transaction(ws, repo) as path:
        gens = {g.number: g for g in lineage(ws, repo)}
        live = [g for g in gens.values() if g.status in ("current", "superseded")]
        cur = live[-1]
        target = _rollback_target(repo, gens, live, cur, to)
        revive = _dead_ancestors(gens, target)
        keep_upto = gens[revive[-1].parent].number if revive and revive[-1].parent is not None else target.number
        abandoned = [g for g in live if g.number > keep_upto]
        move = Move.between(path, cur.commit, target.commit)
        stash = guard_tree(path, move, force)
        updates = [RefUpdate(HEAD, target.commit, cur.commit)]
        updates += [RefUpdate(f"{FAILED}{g.number}", g.commit, ZERO) for g in abandoned]
        updates += [RefUpdate(f"{FAILED}{g.number}", ZERO, g.commit) for g in revive]
        _apply_move(ws, repo, path, "rollback", move, updates, clean=stash is None)
        for g in abandoned:
            rec = _record(ws, repo, g.number, g.commit)
            _write_record(ws, repo, rec.model_copy(update={"abandoned": _now(), "reason": "rolled back"}))
        for g in revive:
            rec = _record(ws, repo, g.number, g.commit)
            update = {"abandoned": None, "reason": None, "revived": [*rec.revived, _now()]}
            _write_record(ws, repo, rec.model_copy(update=update))
        return (
            Generation(target.number, target.commit, target.parent, "current", target.changesets, target.created),
            stash,
        )


def _rollback_target(
    repo: str, gens: dict[int, Generation], live: list[Generation], cur: Generation, to: int | None
) -> Generation:
    if to is None:
        if cur.parent is None or len(live) < 2:
            raise UsageError(f"repo {repo!r} is at generation {cur.number}, which has no parent to roll back to")
        return live[-2]
    if to < 0:
        raise UsageError(f"--to {to}: generations start at 0")
    target = gens.get(to)
    if target is None or target.status == "failed":
        valid = ", ".join(str(g.number) for g in gens.values() if g.status != "failed" and g.number != cur.number)
        why = "failed and was never promoted" if target is not None else "does not exist"
        raise UsageError(f"--to {to}: generation {to} of {repo!r} {why} (choices: {valid or 'none'})")
    if target.number == cur.number:
        raise UsageError(f"--to {to}: generation {to} is already current")
    return target


def _dead_ancestors(gens: dict[int, Generation], target: Generation) -> list[Generation]:
    """``target`` and its ancestors up to the first live one, when ``target`` was rolled back (newest first)."""
    chain: list[Generation] = []
    node: Generation | None = target
    while node is not None and node.status == "rolled-back":
        chain.append(node)
        node = gens.get(node.parent) if node.parent is not None else None
    if node is None and chain:
        raise GitError(f"generation {target.number}: no live ancestor to roll forward from; its records are damaged")
    return chain
