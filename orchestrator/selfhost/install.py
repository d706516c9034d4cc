"""Installations of Converge's own source: upgrade to the newest approved generation, roll back.

:func:`upgrade` and :func:`rollback` switch ``cache/self/current`` by one atomic symlink replace; the
launcher ``<workspace>/cache/self/bin/converge`` always runs the current installation (put it on
``PATH``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator.errors import ConflictError, UsageError
from orchestrator.selfhost.env import build_env
from orchestrator.selfhost.host import require_host_stage
from orchestrator.store import changesets, generations
from orchestrator.store.storage import atomic_write, file_lock, read_json
from orchestrator.store.workspace import Workspace


class Install(BaseModel):
    """One installed generation of `self` under ``cache/self/installs/<commit12>/``."""

    commit: str
    generation: int | None
    path: str
    created: str


def self_dir(ws: Workspace) -> Path:
    """Where installations, the ``current``/``previous`` links and the launcher live."""
    return ws.cache / "self"


def _self_repo(ws: Workspace) -> str:
    selfs = [r.name for r in ws.repos() if r.is_self]
    if not selfs:
        raise UsageError("no repo is registered as Converge's own source; run `converge add --self` first")
    return selfs[0]


def build_install(ws: Workspace, repo: str, gen: generations.Generation) -> Path:
    """``installs/<commit12>/``: a venv over this Python whose path holds the commit's source, then the deps.

    Its ``.pth`` files name the commit's exported source first and this environment's site-packages
    second: no network, no build step, and the dependencies are shared read-only.
    """
    target = self_dir(ws) / "installs" / gen.commit[:12]
    if (target / "install.json").is_file():
        return target
    return build_env(ws, repo, gen.commit, target, generation=gen.number)


def _link_target(link: Path) -> Path | None:
    return (link.parent / link.readlink()) if link.is_symlink() else None


def _switch(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` atomically: a new link beside it, then rename over it."""
    new = link.with_name(link.name + ".new")
    new.unlink(missing_ok=True)
    new.symlink_to(os.path.relpath(target, link.parent))
    new.replace(link)


def write_launcher(ws: Workspace) -> Path:
    """``cache/self/bin/converge``: runs the current installation's Python on ``-m orchestrator``.

    ``-I``: neither the working directory nor ``$PYTHONPATH`` can shadow the installed source.
    """
    path = self_dir(ws) / "bin" / "converge"
    text = (
        "#!/bin/sh\n"
        "# Converge as installed by `converge self upgrade`; `converge self rollback` switches back.\n"
        'here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)\n'
        f': "${{CONVERGE_WORKSPACE:={ws.root}}}"\n'
        "export CONVERGE_WORKSPACE\n"
        "# -I: neither the working directory nor $PYTHONPATH may shadow the installed source\n"
        'exec "$here/../current/bin/python" -I -m orchestrator "$@"\n'
    )
    atomic_write(path, text, mode=0o755)
    return path


def _install_of(path: Path | None) -> Install | None:
    if path is None or not (path / "install.json").is_file():
        return None
    return Install.model_validate(read_json(path / "install.json"))


def status(ws: Workspace) -> dict[str, Any]:
    """The current and previous installations and the launcher."""
    root = self_dir(ws)
    cur, prev = _install_of(_link_target(root / "current")), _install_of(_link_target(root / "previous"))
    return {
        "current": cur.model_dump() if cur else None,
        "previous": prev.model_dump() if prev else None,
        "launcher": str(root / "bin" / "converge"),
    }


def upgrade(ws: Workspace) -> dict[str, Any]:
    """Install the newest approved generation of `self` and make it current; the old one becomes previous.

    Only a generation whose every changeset is approved is installed, and a `self` changeset is
    approved only after ``selfhost.check`` passed.
    """
    repo = _self_repo(ws)
    root = self_dir(ws)
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(ws.state / "locks" / "self-install.lock", "the self installation", wait=True):
        gen = generations.current(ws, repo)
        for cs_id in gen.changesets:
            cs = changesets.load(ws, cs_id)
            if cs.status != "approved":
                raise ConflictError(f"generation {gen.number} of {repo} holds changeset {cs_id}, not approved")
            require_host_stage(ws, cs)
        target = build_install(ws, repo, gen)
        launcher = write_launcher(ws)
        old = _link_target(root / "current")
        changed = old is None or old.resolve() != target.resolve()
        if changed:
            if old is not None:
                _switch(root / "previous", old)
            _switch(root / "current", target)
    return {**status(ws), "changed": changed, "launcher": str(launcher)}


def rollback(ws: Workspace) -> dict[str, Any]:
    """Swap ``current`` and ``previous`` (constant time: two link renames, nothing rebuilt)."""
    root = self_dir(ws)
    with file_lock(ws.state / "locks" / "self-install.lock", "the self installation", wait=True):
        cur, prev = _link_target(root / "current"), _link_target(root / "previous")
        if cur is None or prev is None or not prev.is_dir():
            raise UsageError("no previous installation of Converge to roll back to; see `converge self upgrade`")
        _switch(root / "current", prev)
        _switch(root / "previous", cur)
    return {**status(ws), "changed": True}
