"""Commits that travel: git bundles, and the replica of a workspace a remote node verifies in.

A node of a cluster does not see the driver's workspace. The driver sends what a verification
needs as values: a :class:`WorkspaceSeed` (the configuration and the sandbox image recipe) and a
bundle of the candidate commit. The node keeps a replica workspace per seed, under its own temp
directory, fetches each bundle into the replica's repo, and verifies there; nothing it does
writes to the driver's workspace. Keys, runs and changesets never leave the driver.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from orchestrator.config import CONFIG_FILE
from orchestrator.errors import GitError
from orchestrator.store import gitops
from orchestrator.store.storage import atomic_write, file_lock
from orchestrator.store.workspace import STATE_DIR, RepoRecord, Workspace

RECIPE = Path("tools") / "sandbox" / "recipe.toml"
INCOMING = "refs/converge/incoming/"


class WorkspaceSeed(BaseModel):
    """What a node needs to verify a repo's candidates as the driver would: its settings and image recipe."""

    model_config = ConfigDict(frozen=True)

    id: str  # names the replica on a node: the workspace, the repo and these settings
    repo: str
    config: str  # converge.toml's text
    recipe: str | None  # the workspace's image recipe, None: the template's


def seed_of(ws: Workspace, repo: str) -> WorkspaceSeed:
    """The seed of ``repo``'s replica: the same settings give the same replica on every node."""
    config_file = ws.state / CONFIG_FILE
    config = config_file.read_text(encoding="utf-8") if config_file.is_file() else ""
    recipe_file = ws.root / RECIPE
    recipe = recipe_file.read_text(encoding="utf-8") if recipe_file.is_file() else None
    digest = hashlib.sha256("\0".join([str(ws.root), repo, config, recipe or ""]).encode()).hexdigest()
    return WorkspaceSeed(id=f"{repo}-{digest[:16]}", repo=repo, config=config, recipe=recipe)


def make_bundle(repo: Path, ref: str) -> bytes:
    """A git bundle of ``ref`` and its whole history (the node may have none of it)."""
    with tempfile.TemporaryDirectory(prefix="converge-bundle-") as tmp:
        out = Path(tmp) / "candidate.bundle"
        gitops.run(repo, "bundle", "create", "--quiet", str(out), ref)
        return out.read_bytes()


def fetch_bundle(repo: Path, data: bytes, name: str) -> str:
    """Fetch the one ref of bundle ``data`` into ``repo`` as ``refs/converge/incoming/<name>``; its commit."""
    with tempfile.TemporaryDirectory(prefix="converge-bundle-") as tmp:
        bundle = Path(tmp) / "candidate.bundle"
        bundle.write_bytes(data)
        heads = gitops.run(repo, "bundle", "list-heads", str(bundle)).split()
        if len(heads) != 2:
            raise GitError(f"bundle for {name}: expected one ref, found {len(heads) // 2}")
        gitops.run(repo, "fetch", "--quiet", "--no-tags", str(bundle), f"+{heads[1]}:{INCOMING}{name}")
        return heads[0]


def replica(seed: WorkspaceSeed, under: Path | None = None) -> Workspace:
    """The replica workspace of ``seed`` on this node (made once; later calls find it)."""
    home = under or Path(tempfile.gettempdir()) / f"converge-replicas-{os.getuid()}"
    root = home / seed.id
    with file_lock(home / f"{seed.id}.lock", f"replica {seed.id}", wait=True):
        if not (root / STATE_DIR / "repos.json").is_file():
            shutil.rmtree(root, ignore_errors=True)  # a half-made one a killed worker left
            _make(seed, root)
    return Workspace(root)


def _make(seed: WorkspaceSeed, root: Path) -> None:
    for part in ("src", "cache", "tools/sandbox", f"{STATE_DIR}/locks"):
        (root / part).mkdir(parents=True, exist_ok=True)
    atomic_write(root / STATE_DIR / CONFIG_FILE, seed.config)
    if seed.recipe is not None:
        atomic_write(root / RECIPE, seed.recipe)
    gitops.run(root / "src", "init", "--quiet", seed.repo)
    ws = Workspace(root)
    added = datetime.now(UTC).isoformat(timespec="seconds")
    ws.save_repos([RepoRecord(name=seed.repo, source=f"replica of {seed.id}", added=added)])  # the mark it is done
