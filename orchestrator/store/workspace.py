"""The workspace value: its layout, finding it, and the repositories registered in it.

A workspace is a directory laid out from ``workspace_template/`` with a ``.converge/``
state directory. It is found like git finds a repository: an explicit path, else
``$CONVERGE_WORKSPACE``, else the nearest parent holding ``.converge/``.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from orchestrator.config import ConvergeConfig, load_config
from orchestrator.errors import RepoError, WorkspaceError
from orchestrator.store.storage import atomic_write_json, file_lock, file_stamp, read_model

STATE_DIR = ".converge"
LAYOUT = ("spec", "src", "test", "tools", "cache", "proofs", "sbom")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SELF_NAME = "self"


def template_dir() -> Path:
    """The `workspace_template/` shipped beside the package (source checkout or install)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "workspace_template", here / "_data" / "workspace_template"):
        if candidate.is_dir():
            return candidate
    raise WorkspaceError("workspace_template/ not found beside the orchestrator package; reinstall Converge")


def source_root() -> Path:
    """The checkout Converge runs from (holds orchestrator/, agents/, policies/)."""
    return Path(__file__).resolve().parents[2]


class RepoRecord(BaseModel):
    """One registered repository."""

    name: str
    source: str
    added: str
    is_self: bool = False


class _Registry(BaseModel):
    """`.converge/repos.json`."""

    repos: list[RepoRecord] = []


@dataclass(frozen=True)
class Workspace:
    """A resident workspace on disk."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / STATE_DIR

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def proofs(self) -> Path:
        return self.root / "proofs"

    @property
    def sbom(self) -> Path:
        return self.root / "sbom"

    @property
    def spec(self) -> Path:
        return self.root / "spec"

    def config(self, overrides: Mapping[str, object] | None = None) -> ConvergeConfig:
        """The effective configuration: defaults < converge.toml < env < overrides."""
        return load_config(self.state, overrides)

    def lock(self, name: str, what: str) -> AbstractContextManager[None]:
        """An exclusive lock named ``name`` (e.g. a repo), refused at once if held."""
        return file_lock(self.state / "locks" / f"{name}.lock", what)

    # --- registered repositories -------------------------------------------------------

    @property
    def _registry(self) -> Path:
        return self.state / "repos.json"

    def repos(self) -> list[RepoRecord]:
        """Registered repositories, in registration order."""
        stamp = file_stamp(self._registry)
        if stamp is None:
            return []
        return [r.model_copy() for r in _read_registry(self._registry, stamp)]

    def repo(self, name: str) -> RepoRecord:
        """One registered repository by name, or a RepoError listing the known ones."""
        for record in self.repos():
            if record.name == name:
                return record
        known = ", ".join(r.name for r in self.repos()) or "none registered"
        raise RepoError(f"unknown repo {name!r} (known: {known}); register it with `converge add`")

    def repo_path(self, name: str) -> Path:
        """The working tree of a registered repository."""
        self.repo(name)
        return self.src / name

    def save_repos(self, records: list[RepoRecord]) -> None:
        atomic_write_json(self._registry, {"repos": [r.model_dump() for r in records]})


def find_workspace(
    explicit: Path | None, environ: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Workspace:
    """Locate the workspace: ``-w`` path, else $CONVERGE_WORKSPACE, else a parent with `.converge/`."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return _existing(explicit, "--workspace")
    if env.get("CONVERGE_WORKSPACE"):
        return _existing(Path(env["CONVERGE_WORKSPACE"]), "$CONVERGE_WORKSPACE")
    here = (cwd or Path.cwd()).absolute()
    for candidate in (here, *here.parents):
        if (candidate / STATE_DIR).is_dir():
            return Workspace(candidate)
    raise WorkspaceError(f"no workspace found in {here} or its parents; run `converge init PATH` or pass --workspace")


def _existing(path: Path, origin: str) -> Workspace:
    path = path.expanduser().absolute()
    if not (path / STATE_DIR).is_dir():
        raise WorkspaceError(f"{path} (from {origin}): not a Converge workspace; run `converge init {path}`")
    return Workspace(path)


def iter_repo_dirs(ws: Workspace) -> Iterator[tuple[RepoRecord, Path]]:
    """Each registered repo with its working tree."""
    for record in ws.repos():
        yield record, ws.src / record.name


@functools.lru_cache(maxsize=16)
def _read_registry(path: Path, _stamp: tuple[int, int, int]) -> tuple[RepoRecord, ...]:
    """The registry's records, remembered until the file changes (it is replaced whole when it does)."""
    return tuple(read_model(path, _Registry).repos)
