"""Setting a workspace up: laying it out from the template with its signing key, and registering repos.

``init_workspace`` is idempotent on an existing workspace; ``add_repo`` clones a repo under
``src/<name>`` and records generation 0 at its HEAD.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import git

from orchestrator.config import CONFIG_FILE, dump_toml
from orchestrator.errors import RepoError, UsageError, WorkspaceError, translate
from orchestrator.store import generations, gitops, keyfiles
from orchestrator.store.storage import atomic_write
from orchestrator.store.workspace import (
    LAYOUT,
    NAME_RE,
    SELF_NAME,
    STATE_DIR,
    RepoRecord,
    Workspace,
    source_root,
    template_dir,
)

CHECKOUT_BRANCH = "converge"  # the branch of src/<repo>: it follows the current generation


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
    except OSError as exc:  # a full disk is DiskFull, not bad input
        raise translate(exc, "os", f"{path}: cannot create the workspace") from exc


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
    keyfiles.ensure_workspace_key(ws)
    return ws


def _default_config_text() -> str:
    header = "# Converge workspace configuration. Keys and defaults: see the README.\n"
    return header + dump_toml({"run": {"max_steps": 5, "attempts_per_step": 3}, "policy": {"files": ["default"]}})


def add_repo(
    ws: Workspace, source: str, name: str | None = None, is_self: bool = False, self_source: Path | None = None
) -> RepoRecord:
    """Clone ``source`` into ``src/<name>`` and record generation 0 at its HEAD.

    ``self_source`` (tests only) registers that checkout as Converge's own source instead of this one.
    """
    if is_self:
        source = str(self_source or source_root())
        name = name or SELF_NAME
    src_path = Path(source).expanduser()
    local = src_path.exists()
    if local:
        src_path = src_path.absolute()
        _check_repo(src_path)
        if gitops.resolve(src_path, "HEAD") is None:
            raise RepoError(f"{src_path}: git repository has no commits yet")
    elif "://" not in source and ":" not in source:
        raise UsageError(f"{source}: no such path")
    if name is not None and not name.strip():
        raise UsageError("--name: give a name (letters, digits, . _ -), or leave the option out")
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
            raise translate(exc, "git", f"{source}: cannot clone") from exc
        gitops.run(dest, "config", "user.name", "Converge")
        gitops.run(dest, "config", "user.email", "converge@localhost")
        head = gitops.resolve(dest, "HEAD")
        assert head is not None
        # on a branch that follows the current generation (promotion and rollback move it with the refs)
        gitops.run(dest, "checkout", "--quiet", "-B", CHECKOUT_BRANCH, head)
        generations.record_initial(ws, name, dest, head)
        record = RepoRecord(
            name=name,
            source=str(src_path) if local else source,
            added=datetime.now(UTC).isoformat(timespec="seconds"),
            is_self=is_self,
        )
        ws.save_repos([*records, record])
    return record


def _check_repo(path: Path) -> None:
    """A git repository's top directory (not a subdirectory of one), or a RepoError saying so."""
    try:
        git.Repo(path).close()
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise translate(exc, "git", str(path)) from exc


def _default_name(source: str) -> str:
    stem = source.rstrip("/").rsplit("/", 1)[-1]
    return stem.removesuffix(".git") or "repo"


def remove_repo(ws: Workspace, name: str) -> Path:
    """Unregister ``name``; its clone (with every ref), changesets and proofs stay readable in an archive.

    The clone moves to ``cache/archive/<name>-<time>/`` (the changeset records and proofs keep their
    places); the name is free to register again. Returns the archive's path.
    """
    with ws.lock("registry", "the repo registry"):
        records = ws.repos()
        record = ws.repo(name)
        archive = ws.cache / "archive" / f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
        archive.mkdir(parents=True)
        source = ws.repo_path(name)
        if source.exists():
            source.replace(archive / "src")
        atomic_write(archive / "record.json", record.model_dump_json(indent=2) + "\n")
        ws.save_repos([r for r in records if r.name != name])
    return archive
