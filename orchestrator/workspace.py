"""The workspace: its layout, finding it, and the repositories registered in it.

A workspace is a directory laid out from ``workspace_template/`` with a ``.converge/``
state directory. It is found like git finds a repository: an explicit path, else
``$CONVERGE_WORKSPACE``, else the nearest parent holding ``.converge/``.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import git
from pydantic import BaseModel

from orchestrator import gitops
from orchestrator.config import CONFIG_FILE, ConvergeConfig, dump_toml, load_config
from orchestrator.errors import RepoError, UsageError, WorkspaceError
from orchestrator.storage import atomic_write, atomic_write_json, file_lock, file_stamp, read_model

STATE_DIR = ".converge"
LAYOUT = ("spec", "src", "test", "tools", "cache", "proofs", "sbom")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SELF_NAME = "self"


def template_dir() -> Path:
    """The `workspace_template/` shipped beside the package (source checkout or install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "workspace_template", here / "_data" / "workspace_template"):
        if candidate.is_dir():
            return candidate
    raise WorkspaceError("workspace_template/ not found beside the orchestrator package; reinstall Converge")


def source_root() -> Path:
    """The checkout Converge runs from (holds orchestrator/, agents/, policies/)."""
    return Path(__file__).resolve().parent.parent


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

    def _save_repos(self, records: list[RepoRecord]) -> None:
        atomic_write_json(self._registry, {"repos": [r.model_dump() for r in records]})


def init_workspace(path: Path) -> Workspace:
    """Create a workspace at ``path`` from the template; idempotent on an existing workspace."""
    path = path.expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise WorkspaceError(f"{path}: exists and is not a directory")
    if path.is_dir() and not (path / STATE_DIR).is_dir():
        foreign = [p.name for p in path.iterdir()]
        if foreign:
            raise WorkspaceError(
                f"{path}: not empty and not a Converge workspace (holds {', '.join(sorted(foreign)[:3])}); "
                "choose an empty or new directory"
            )
    try:
        return _lay_out(path)
    except OSError as exc:
        raise WorkspaceError(f"{path}: cannot create the workspace: {exc.strerror}") from exc


def _lay_out(path: Path) -> Workspace:
    template = template_dir()
    for part in LAYOUT:
        src = template / part
        if src.is_dir():
            shutil.copytree(src, path / part, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".keep"))
        (path / part).mkdir(parents=True, exist_ok=True)
    state = path / STATE_DIR
    for sub in ("locks", "logs", "keys"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    if not (state / CONFIG_FILE).exists():
        atomic_write(state / CONFIG_FILE, _default_config_text())
    ws = Workspace(path)
    ws.config()  # fail now, not later, on a damaged converge.toml
    from orchestrator import signing

    signing.ensure_workspace_key(ws)
    return ws


def _default_config_text() -> str:
    header = "# Converge workspace configuration. Keys and defaults: see the README.\n"
    return header + dump_toml({"run": {"max_steps": 5, "attempts_per_step": 3}, "policy": {"files": ["default"]}})


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


def add_repo(
    ws: Workspace, source: str, name: str | None = None, is_self: bool = False, self_source: Path | None = None
) -> RepoRecord:
    """Clone ``source`` into ``src/<name>`` and record generation 0 at its HEAD.

    ``self_source`` (tests only) registers that checkout as Converge's own source instead of this one.
    """
    from orchestrator import generations

    if is_self:
        source = str(self_source or source_root())
        name = name or SELF_NAME
    src_path = Path(source).expanduser()
    local = src_path.exists()
    if local:
        src_path = src_path.absolute()
        gitops.open_repo(src_path)
        if gitops.resolve(src_path, "HEAD") is None:
            raise RepoError(f"{src_path}: git repository has no commits yet")
    elif "://" not in source and ":" not in source:
        raise UsageError(f"{source}: no such path")
    name = name or _default_name(source)
    if not NAME_RE.match(name):
        raise UsageError(f"{name!r}: not a valid repo name (letters, digits, . _ -, at most 64)")
    with ws.lock("registry", "the repo registry"):
        records = ws.repos()
        if is_self and any(r.is_self for r in records):
            existing = next(r.name for r in records if r.is_self)
            raise RepoError(f"Converge's own source is already registered as {existing!r}")
        if any(r.name == name for r in records):
            raise RepoError(f"repo {name!r} is already registered; choose another --name")
        dest = ws.src / name
        if dest.exists():
            raise RepoError(f"{dest}: already exists but is not registered; move it away or choose another --name")
        try:
            # --no-local: objects travel as one pack (no file shared with the user's repo, and no
            # copying of every loose object, which fails on very large repos)
            git.Repo.clone_from(str(src_path) if local else source, dest, no_local=True)
        except git.GitCommandError as exc:
            shutil.rmtree(dest, ignore_errors=True)
            detail = [line.strip(" '") for line in str(exc.stderr or "").splitlines() if line.strip(" '")]
            raise RepoError(f"{source}: cannot clone: {detail[-1] if detail else exc}") from exc
        gitops.run(dest, "config", "user.name", "Converge")
        gitops.run(dest, "config", "user.email", "converge@localhost")
        head = gitops.resolve(dest, "HEAD")
        assert head is not None
        gitops.run(dest, "checkout", "--quiet", "--detach", head)
        generations.record_initial(ws, name, dest, head)
        record = RepoRecord(
            name=name,
            source=str(src_path) if local else source,
            added=datetime.now(UTC).isoformat(timespec="seconds"),
            is_self=is_self,
        )
        ws._save_repos([*records, record])
    return record


def _default_name(source: str) -> str:
    stem = source.rstrip("/").rsplit("/", 1)[-1]
    return stem.removesuffix(".git") or "repo"


def iter_repo_dirs(ws: Workspace) -> Iterator[tuple[RepoRecord, Path]]:
    """Each registered repo with its working tree."""
    for record in ws.repos():
        yield record, ws.src / record.name


@functools.lru_cache(maxsize=16)
def _read_registry(path: Path, _stamp: tuple[int, int, int]) -> tuple[RepoRecord, ...]:
    """The registry's records, remembered until the file changes (it is replaced whole when it does)."""
    return tuple(read_model(path, _Registry).repos)
